"""Data for the tests and the demo (not used by the jobs): a small labelled catalog of
music-like audio, synthesised.

`musicrep synth-catalog DIR --tracks N [--seed S] [--duration-s D]` writes N tracks and a
`labels.csv` into DIR. Each track is a short piece in one of the 24 keys: block chords of a
diatonic progression (one chord per bar, root in the bass) under a melody of one note per
beat that starts, ends and lands on every downbeat on the tonic. One instrument plays both
voices. Instruments are additive synthesis with their own partials and envelopes, so they
differ in timbre the way the log-mel sees it (harmonic series, odd harmonics only,
inharmonic bars; percussive or bowed envelopes; vibrato):

| instrument | partials | envelope |
|---|---|---|
| piano | all harmonics ~ n^-1.2, slightly stretched, upper ones die faster | percussive, decay 0.7 s |
| organ | drawbars 1, 2, 3, 4, 6, 8 | 10 ms attack, full sustain |
| flute | fundamental, weak 2nd-4th, breath noise | 80 ms attack, vibrato 5 Hz |
| clarinet | odd harmonics 1, 3, 5, ... ~ 1/n | 40 ms attack, sustain |
| strings | all harmonics ~ 1/n (sawtooth) | 150 ms attack, vibrato 6 Hz |
| marimba | bar modes 1, 3.93, 9.2 | percussive, decay 0.25 s |

Labels (`labels.csv`, one row per track, in track order):
  track_id     the file's path relative to DIR without extension (the features job's
               default id when its input glob is `DIR/track_*`)
  split        train / valid / test: about 80 / 10 / 10 %, a seeded shuffle
  pitch        MIDI number of the tonic as the melody plays it (its most frequent note)
  key          `C major`, `Eb minor`, ... (probes.keys spelling, 24 classes)
  instrument   one of INSTRUMENTS
  tags         `instrument|mode|tempo bucket` (tempo bucket: slow < 90 ≤ medium < 120 ≤ fast)
  duration_s   the synthesised duration (lossy codecs add or drop a few milliseconds)
  file, sample_rate_hz, channels, tempo_bpm   how the track was written

Files cycle through wav (16-bit), flac, mp3, ogg (Vorbis) and opus, at 22,050, 44,100 or
48,000 Hz (opus is always 48 kHz, the only rate it takes at full band) in mono or stereo
(ogg always stereo: FFmpeg's own Vorbis encoder, the one PyAV ships, takes only two
channels). Stereo tracks pan the melody slightly left and the chords slightly right.
Everything, the encoded bytes included, is a function of (n_tracks, seed, duration_s).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import io
import logging
import os
import time
import zlib

import av
import numpy as np

from musicrep.labels import TAG_SEPARATOR
from musicrep.labels import read_labels as read_label_table
from musicrep.probes.keys import TONIC_NAMES, key_name

logger = logging.getLogger(__name__)

MODES = ("major", "minor")  # in the order of musicrep.probes.keys' classes
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Progressions as 0-based scale degrees; every one starts on the tonic chord. In minor
# the dominant (degree 4) is played major (raised leading tone), as in common practice.
_PROGRESSIONS = {
    "major": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 1, 4, 0)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
}
TEMPO_BUCKETS = (("slow", 60, 90), ("medium", 90, 120), ("fast", 120, 160))
LABEL_COLUMNS = (
    "track_id", "split", "pitch", "key", "instrument", "tags", "duration_s",
    "file", "sample_rate_hz", "channels", "tempo_bpm",
)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """An additive-synthesis instrument.

    Attributes:
      ratios: partial frequencies as multiples of the fundamental.
      amplitudes: relative amplitude of each partial.
      attack_s, release_s: linear attack and release ramps.
      decay_s: exponential decay time constant (None: sustained).
      partial_decay: extra decay rate per partial index (higher partials die faster), 1/s.
      vibrato_hz, vibrato_depth: sinusoidal frequency modulation (depth as a ratio).
      stretch: inharmonicity B of f_n = n·f0·sqrt(1 + B·n²) (piano strings).
      noise: level of breath noise that follows the envelope.
    """

    ratios: tuple[float, ...]
    amplitudes: tuple[float, ...]
    attack_s: float
    release_s: float
    decay_s: float | None = None
    partial_decay: float = 0.0
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0
    stretch: float = 0.0
    noise: float = 0.0


INSTRUMENTS: dict[str, Instrument] = {
    "piano": Instrument(
        ratios=tuple(float(n) for n in range(1, 11)),
        amplitudes=tuple(n**-1.2 for n in range(1, 11)),
        attack_s=0.004, release_s=0.08, decay_s=0.7, partial_decay=0.6, stretch=4e-4,
    ),
    "organ": Instrument(
        ratios=(1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
        amplitudes=(1.0, 0.8, 0.6, 0.5, 0.3, 0.25),
        attack_s=0.01, release_s=0.03,
    ),
    "flute": Instrument(
        ratios=(1.0, 2.0, 3.0, 4.0),
        amplitudes=(1.0, 0.25, 0.1, 0.04),
        attack_s=0.08, release_s=0.1, vibrato_hz=5.0, vibrato_depth=0.005, noise=0.02,
    ),
    "clarinet": Instrument(
        ratios=tuple(float(n) for n in range(1, 13, 2)),
        amplitudes=tuple(1.0 / n for n in range(1, 13, 2)),
        attack_s=0.04, release_s=0.06,
    ),
    "strings": Instrument(
        ratios=tuple(float(n) for n in range(1, 15)),
        amplitudes=tuple(1.0 / n for n in range(1, 15)),
        attack_s=0.15, release_s=0.2, vibrato_hz=6.0, vibrato_depth=0.006,
    ),
    "marimba": Instrument(
        ratios=(1.0, 3.93, 9.2),
        amplitudes=(1.0, 0.35, 0.12),
        attack_s=0.002, release_s=0.05, decay_s=0.25, partial_decay=3.0,
    ),
}


@dataclasses.dataclass(frozen=True)
class AudioFormat:
    """How a track is written: file extension, container and codec for PyAV; the rates
    and channel counts the catalog draws from; encoder options."""

    extension: str
    container: str
    codec: str
    rates_hz: tuple[int, ...]
    channels: tuple[int, ...]
    options: tuple[tuple[str, str], ...] = ()


AUDIO_FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "wav", "pcm_s16le", (22050, 44100, 48000), (1, 2)),
    "flac": AudioFormat("flac", "flac", "flac", (22050, 44100, 48000), (1, 2)),
    # LAME's quality 7 (of 0 best .. 9 fastest) encodes ~3x faster than its default.
    "mp3": AudioFormat("mp3", "mp3", "libmp3lame", (22050, 44100, 48000), (1, 2), (("compression_level", "7"),)),
    # FFmpeg's native Vorbis encoder is marked experimental and is stereo only.
    "ogg": AudioFormat("ogg", "ogg", "vorbis", (22050, 44100, 48000), (2,), (("strict", "experimental"),)),
    "opus": AudioFormat("opus", "ogg", "libopus", (48000,), (1, 2)),
    # Not in the catalog (CATALOG_FORMATS); the tests decode it.
    "m4a": AudioFormat("m4a", "ipod", "aac", (22050, 44100, 48000), (1, 2)),
}
CATALOG_FORMATS = ("wav", "flac", "mp3", "ogg", "opus")
_VORBIS_NOISE = 1e-5  # amplitude of the noise under the catalog's Vorbis tracks (see _write_track)


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def synthesize_note(
    midi: float,
    *,
    instrument: str,
    duration_s: float,
    sample_rate_hz: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One note of `instrument` at MIDI pitch `midi`, band-limited to the sample rate.

    Returns [round(duration_s · sample_rate_hz)] float32 with peak about 1; partials at or
    above 0.45 · sample_rate_hz are left out. The release happens inside duration_s.
    Breath noise (flute) is drawn from `rng` and left out without one.
    """
    spec = INSTRUMENTS[instrument]
    n = max(int(round(duration_s * sample_rate_hz)), 1)
    note = _tone(float(midi), instrument, n, sample_rate_hz)
    if spec.noise and rng is not None:
        noise = spec.noise * rng.standard_normal(n, dtype=np.float32)
        note = note + noise * _envelope(spec, n, sample_rate_hz) / np.float32(sum(spec.amplitudes))
    return note


@functools.lru_cache(maxsize=256)
def _tone(midi: float, instrument: str, n: int, sample_rate_hz: int) -> np.ndarray:
    # Notes repeat within a track (the tonic on every downbeat, chords each cycle), so the
    # deterministic part is cached; callers never write into it.
    spec = INSTRUMENTS[instrument]
    t = np.arange(n) / sample_rate_hz
    f0 = float(midi_to_hz(midi))
    ratios = np.asarray(spec.ratios)
    freqs = f0 * ratios * np.sqrt(1.0 + spec.stretch * ratios**2)
    keep = freqs * (1 + spec.vibrato_depth) < 0.45 * sample_rate_hz
    cycles = np.outer(freqs[keep], t)
    if spec.vibrato_depth:
        # Integral of f0·depth·sin(2π·v·t) / f0: the vibrato's phase offset, in cycles.
        offset = -spec.vibrato_depth / (2 * np.pi * spec.vibrato_hz) * np.cos(2 * np.pi * spec.vibrato_hz * t)
        cycles += np.outer(freqs[keep], offset)
    # Whole cycles dropped in float64, so float32 sines keep their phase on long notes.
    cycles -= np.rint(cycles)
    partials = np.sin(np.float32(2 * np.pi) * cycles.astype(np.float32))
    weights = np.asarray(spec.amplitudes, dtype=np.float32)[keep]
    if spec.partial_decay:
        decay = np.exp(-spec.partial_decay * np.outer(np.flatnonzero(keep), t)).astype(np.float32)
        tone = np.einsum("p,pn,pn->n", weights, partials, decay)
    else:
        tone = weights @ partials
    tone *= _envelope(spec, n, sample_rate_hz) / np.float32(sum(spec.amplitudes))
    tone.flags.writeable = False
    return tone


def _envelope(spec: Instrument, n: int, sample_rate_hz: int) -> np.ndarray:
    t = np.arange(n) / sample_rate_hz
    duration = n / sample_rate_hz
    env = np.minimum(t / spec.attack_s, 1.0)
    if spec.decay_s is not None:
        env *= np.exp(-np.maximum(t - spec.attack_s, 0.0) / spec.decay_s)
    release_start = max(duration - spec.release_s, 0.0)
    env *= np.clip((duration - t) / max(duration - release_start, 1e-9), 0.0, 1.0)
    return env.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """Everything that decides one track's audio and labels."""

    index: int
    tonic: int  # pitch class, C = 0
    mode: str
    pitch: int  # MIDI number of the melody's tonic
    instrument: str
    tempo_bpm: float
    progression: tuple[int, ...]
    audio_format: str
    sample_rate_hz: int
    channels: int
    split: str
    seed: int

    @property
    def track_id(self) -> str:
        return f"track_{self.index:04d}"

    @property
    def key(self) -> str:
        return key_name(self.tonic + len(TONIC_NAMES) * MODES.index(self.mode))

    @property
    def tempo_bucket(self) -> str:
        return next(name for name, low, high in TEMPO_BUCKETS if low <= self.tempo_bpm < high)


def plan_catalog(*, n_tracks: int, seed: int = 0) -> list[TrackSpec]:
    """The specs of a catalog: instruments, formats and modes cycle so that every one
    appears once n_tracks reaches their count; keys, tempi and the split are seeded draws."""
    if n_tracks < 1:
        raise ValueError(f"n_tracks must be at least 1, got {n_tracks}")
    rng = np.random.default_rng(seed)
    instruments = [list(INSTRUMENTS)[i] for i in rng.permutation(len(INSTRUMENTS))]
    formats = [CATALOG_FORMATS[i] for i in rng.permutation(len(CATALOG_FORMATS))]
    order = rng.permutation(n_tracks)
    n_valid = n_test = max(1, round(0.1 * n_tracks)) if n_tracks >= 3 else 0
    split_of = {}
    for rank, index in enumerate(order):
        split_of[int(index)] = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
    specs = []
    for index in range(n_tracks):
        mode = MODES[index % 2]
        tonic = int(rng.integers(12))
        audio_format = formats[index % len(formats)]
        fmt = AUDIO_FORMATS[audio_format]
        _, low, high = TEMPO_BUCKETS[int(rng.integers(len(TEMPO_BUCKETS)))]
        progressions = _PROGRESSIONS[mode]
        specs.append(TrackSpec(
            index=index,
            tonic=tonic,
            mode=mode,
            pitch=55 + (tonic - 55) % 12 + 12 * int(rng.integers(2)),  # G3 .. F#5
            instrument=instruments[index % len(instruments)],
            tempo_bpm=float(round(rng.uniform(low, high), 1)),
            progression=progressions[int(rng.integers(len(progressions)))],
            audio_format=audio_format,
            sample_rate_hz=int(rng.choice(fmt.rates_hz)),
            channels=int(rng.choice(fmt.channels)),
            split=split_of[index],
            seed=int(rng.integers(2**31)),
        ))
    return specs


def render_track(spec: TrackSpec, *, duration_s: float) -> np.ndarray:
    """The track's audio, [channels, samples] float32 with peak 0.5 to 0.9."""
    rng = np.random.default_rng(spec.seed)
    rate = spec.sample_rate_hz
    n = int(round(duration_s * rate))
    melody = np.zeros(n)
    chords = np.zeros(n)
    beat_s = 60.0 / spec.tempo_bpm
    scale = _SCALES[spec.mode]
    n_beats = max(int(duration_s / beat_s), 1)
    note = 0  # melody position in scale steps from the tonic (spec.pitch)
    for beat in range(n_beats):
        bar, in_bar = divmod(beat, 4)
        degree = spec.progression[bar % len(spec.progression)]
        start = int(round(beat * beat_s * rate))
        if in_bar == 0:
            length_s = min(4 * beat_s, duration_s - beat * beat_s)
            for midi in _chord(spec, degree):
                _add(chords, start, synthesize_note(
                    midi, instrument=spec.instrument, duration_s=length_s, sample_rate_hz=rate, rng=rng))
        if in_bar == 0 or beat == n_beats - 1:
            note = 0  # the tonic on every downbeat and at the end
        else:
            note = int(np.clip(note + rng.choice((-2, -1, 1, 2)), -2, 6))
        octave, step = divmod(note, 7)
        midi = spec.pitch + 12 * octave + scale[step]
        _add(melody, start, synthesize_note(
            midi, instrument=spec.instrument, duration_s=min(beat_s, duration_s - beat * beat_s),
            sample_rate_hz=rate, rng=rng))
    if spec.channels == 1:
        mix = (melody + 0.6 * chords)[None]
    else:
        mix = np.stack([0.6 * melody + 0.4 * 0.6 * chords, 0.4 * melody + 0.6 * 0.6 * chords])
    peak = np.abs(mix).max()
    gain = rng.uniform(0.5, 0.9) / peak if peak > 0 else 0.0
    return (mix * gain).astype(np.float32)


def _chord(spec: TrackSpec, degree: int) -> list[int]:
    """Root-position triad on `degree` with the root an octave below the tonic register."""
    scale = _SCALES[spec.mode]
    notes = []
    for step in (degree, degree + 2, degree + 4):
        octave, index = divmod(step, 7)
        notes.append(spec.pitch - 12 + 12 * octave + scale[index])
    if spec.mode == "minor" and degree == 4:
        notes[1] += 1  # the raised leading tone: V is major
    return notes


def _add(target: np.ndarray, start: int, note: np.ndarray) -> None:
    end = min(start + note.size, target.size)
    if end > start:
        target[start:end] += note[: end - start]


def encode_audio(audio: np.ndarray, *, sample_rate_hz: int, audio_format: str) -> bytes:
    """Encodes [channels, samples] float audio in [-1, 1] with PyAV; returns the file's bytes.

    audio_format is a key of AUDIO_FORMATS; its codec must take the rate and channel
    count (opus: 8, 12, 16, 24 or 48 kHz; ogg/Vorbis: stereo only), else PyAV raises.
    Muxer and encoder run bit-exact (no random Ogg serial numbers, no version strings that
    change), so the same audio gives the same bytes.
    """
    fmt = AUDIO_FORMATS[audio_format]
    channels = audio.shape[0]
    if channels not in (1, 2):
        raise ValueError(f"encode_audio writes mono or stereo, got {channels} channels")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt.container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(
            fmt.codec, rate=sample_rate_hz, layout="mono" if channels == 1 else "stereo",
            options={"flags": "+bitexact", **dict(fmt.options)},
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout=stream.layout.name)
        frame.rate = sample_rate_hz
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def write_synth_catalog(
    directory: str, *, n_tracks: int, seed: int = 0, duration_s: float = 8.0, workers: int = 1
) -> list[dict]:
    """Writes n_tracks synthetic tracks and `labels.csv` into `directory`.

    Returns the label rows (dicts with LABEL_COLUMNS), in track order. Files already in
    the directory with the same names are replaced; others are left alone. `workers` > 1
    renders and encodes tracks in that many processes; every track is a function of its
    spec alone, so the files are the same bytes whatever the count.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    os.makedirs(directory, exist_ok=True)
    specs = plan_catalog(n_tracks=n_tracks, seed=seed)
    write = functools.partial(_write_track, directory, duration_s=duration_s)
    if workers == 1:
        rows = [write(spec) for spec in specs]
    else:
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(specs))) as pool:
            rows = list(pool.map(write, specs, chunksize=8))
    with open(os.path.join(directory, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _write_track(directory: str, spec: TrackSpec, *, duration_s: float) -> dict:
    """Renders, encodes and writes one track; returns its label row."""
    audio = render_track(spec, duration_s=duration_s)
    if AUDIO_FORMATS[spec.audio_format].codec == "vorbis":
        # FFmpeg's native Vorbis encoder aborts the whole process (an assertion in
        # vorbisenc.c's floor_encode) on some sparse spectra: 8 s of plan_catalog(136)'s
        # marimba at 22.05 kHz did. White noise at -100 dBFS, below 16-bit's step, keeps
        # every band non-empty; seeded by the track, so the bytes stay its function.
        noise = np.random.default_rng(zlib.crc32(spec.track_id.encode())).standard_normal(audio.shape)
        audio = audio + (_VORBIS_NOISE * noise).astype(np.float32)
    data = encode_audio(audio, sample_rate_hz=spec.sample_rate_hz, audio_format=spec.audio_format)
    file_name = f"{spec.track_id}.{AUDIO_FORMATS[spec.audio_format].extension}"
    with open(os.path.join(directory, file_name), "wb") as f:
        f.write(data)
    logger.debug("wrote %s", file_name)
    return {
        "track_id": spec.track_id,
        "split": spec.split,
        "pitch": spec.pitch,
        "key": spec.key,
        "instrument": spec.instrument,
        "tags": TAG_SEPARATOR.join((spec.instrument, spec.mode, spec.tempo_bucket)),
        "duration_s": round(audio.shape[1] / spec.sample_rate_hz, 6),
        "file": file_name,
        "sample_rate_hz": spec.sample_rate_hz,
        "channels": spec.channels,
        "tempo_bpm": spec.tempo_bpm,
    }


def read_catalog_labels(directory: str) -> list[dict]:
    """The rows of `directory/labels.csv` as written (numbers typed by their values)."""
    return read_label_table(os.path.join(directory, "labels.csv"), required=LABEL_COLUMNS).to_pylist()


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="musicrep synth-catalog",
        description="Write a small labelled catalog of synthetic music (keys, instruments, "
        "tempi) in wav, flac, mp3, ogg and opus, plus labels.csv.",
    )
    parser.add_argument("directory", help="output directory (created if missing)")
    parser.add_argument("--tracks", type=int, required=True, help="number of tracks")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--duration-s", type=float, default=8.0, help="seconds per track")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that render and encode (default: one per CPU core)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = write_synth_catalog(
        args.directory, n_tracks=args.tracks, seed=args.seed, duration_s=args.duration_s,
        workers=args.workers)
    seconds = time.perf_counter() - start
    by_format: dict[str, int] = {}
    for row in rows:
        extension = row["file"].rsplit(".", 1)[1]
        by_format[extension] = by_format.get(extension, 0) + 1
    splits = {name: sum(row["split"] == name for row in rows) for name in ("train", "valid", "test")}
    print(f"wrote {len(rows)} tracks ({sum(r['duration_s'] for r in rows):.0f} s of audio) "
          f"to {args.directory} in {seconds:.1f} s")
    print("  formats: " + ", ".join(f"{k} {v}" for k, v in sorted(by_format.items())))
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    print(f"  labels: {os.path.join(args.directory, 'labels.csv')} "
          f"(columns {', '.join(LABEL_COLUMNS)})")
    print(f"  features job input: --input '{os.path.join(args.directory, 'track_*')}'")
    return 0
