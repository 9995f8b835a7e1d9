"""Parity with the reference front end: sxmp-mule 1.1.2 run as an oracle (slow).

The oracle runs in its own virtual environment (tests/oracle_env.py; GPL-3.0 code is only
executed, never imported here). It is driven through its own classes with a SCOOCH
configuration written below: Analysis(AudioWaveform(AudioFile at 44.1 kHz → 16 kHz),
[MelSpectrogram(n_fft 2048, hop 160, win 400, hann, 96 HTK bands 0-8 kHz, norm 2,
log10_nonneg, mag_range null)]) — the values of its released `mule_embedding_timeline.yml`.
We compare its 16 kHz waveform with `decode(...)` and its log-mel with `log_mel(decode(...))`
on the same encoded files (3 s of synthetic piano + noise: stereo 44.1 kHz wav, the same as
mp3, mono 22.05 kHz wav).

What the reference does, and how we differ:
- Layout: its MelSpectrogram data is [96, frames] (frequency first); ours is [frames, 96].
  Same frame count (1 + n // 160) and no frame offset: frame t is centred on sample 160·t
  in both (checked below: shifting by one frame makes the difference ~100x larger).
- Decoding: the ffmpeg program (`-f mp3|wav -i pipe:0 -acodec pcm_s16le -ar 44100`), /65536,
  channel sum; then librosa 0.9.2's resample (resampy kaiser_best) per 15-minute chunk, and
  the mel per 15-minute chunk of the 16 kHz waveform. Our files are seconds long, so no
  chunk boundary falls inside them: "excluding chunk boundaries" equals the whole file here;
  the first and last 3 frames are reported apart as edges.
- mp3 read from a pipe: the ffmpeg program keeps the encoder's end padding (83 samples at
  16 kHz more for our file); FFmpeg's libraries, reading the whole file, trim it (gapless).
  Those samples change the reference's last 50 resampled samples (the filter's half-width),
  so its last two frames differ from ours (by up to ~1.7); they are left out of the mp3
  comparison.
- It reads only .mp3/.wav/.wave and cuts at 30 minutes; we read everything FFmpeg reads,
  uncut.

Measured (2 CPU cores, FFmpeg 5.1 program vs PyAV 18's FFmpeg libraries):
  waveform max |diff| 2.5e-5 (wav, mp3 without its last 64 samples), 2.1e-5 (22.05 kHz mono);
  log-mel max |diff| 3.4e-3 (wav), 3.5e-3 (mp3), 3.6e-3 (22.05 kHz mono), mean 1e-4, the
  max in the top band (95) where the resampler's stopband leaves little energy; bands
  0-87 agree to 1.3e-4 (wav), 2.7e-4 (mp3), 1.1e-3 (22.05 kHz mono: FFmpeg 5.1's and
  PyAV's swresample differ slightly when upsampling).
  With resampler="soxr_hq" instead: waveform 1.3e-2, log-mel max 2.1 (bands 91-95).
Tolerance asserted: waveform 2e-4, log-mel max 1e-2 and mean 1e-3 (interior frames).
The network sees each 96×300 slice standardised by its own std (typically 0.5-1, floor
0.01), so a 1e-2 worst-case, 1e-4 mean change is ≤ 2 % on isolated bins and ~1e-4 overall:
far inside what keeps embeddings at cosine ≥ 0.999.
"""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from mule_reference import FRONT_END_CONFIG
from musicrep.features import FeatureConfig, decode, log_mel

pytestmark = pytest.mark.slow

WAVE_TOLERANCE = 2e-4
MEL_MAX_TOLERANCE = 1e-2
MEL_MEAN_TOLERANCE = 1e-3
EDGE_FRAMES = 3

ORACLE_CONFIG = FRONT_END_CONFIG

ORACLE_SCRIPT = """\
import json, os, sys
import numpy as np
from scooch import Config
from mule.analysis import Analysis

config_path, out_dir, *inputs = sys.argv[1:]
analysis = Analysis(Config(config_path))
for index, path in enumerate(inputs):
    mel = analysis.analyze(path)
    np.save(os.path.join(out_dir, f"{index}_mel.npy"), np.array(mel.data))
    np.save(os.path.join(out_dir, f"{index}_wave.npy"), np.array(analysis._source_feature.data))
print(json.dumps({"n": len(inputs)}))
"""

FILES = {
    "stereo_44k.wav": ("wav", 44100, 2),
    "stereo_44k.mp3": ("mp3", 44100, 2),
    "mono_22k.wav": ("wav", 22050, 1),
}


def _load_oracle_env():
    # tests/oracle_env.py is a plain file beside the test folders (tests is no package).
    path = pathlib.Path(__file__).resolve().parents[1] / "oracle_env.py"
    spec = importlib.util.spec_from_file_location("musicrep_tests_oracle_env", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, music_44k_stereo, signals):
    """{file name: (encoded bytes, oracle waveform [n], oracle log-mel [96, T])}."""
    run_oracle = _load_oracle_env().run_oracle
    directory = tmp_path_factory.mktemp("oracle")
    rng = np.random.default_rng(11)
    music = music_44k_stereo + 0.05 * rng.standard_normal(music_44k_stereo.shape).astype(np.float32)
    paths = []
    for name, (audio_format, rate, channels) in FILES.items():
        audio = music[:channels] if rate == 44100 else music[:channels, ::2]
        path = directory / name
        path.write_bytes(signals.encode(audio, sample_rate_hz=rate, audio_format=audio_format))
        paths.append(path)
    (directory / "config.yml").write_text(ORACLE_CONFIG)
    result = run_oracle(ORACLE_SCRIPT, str(directory / "config.yml"), str(directory), *map(str, paths))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"n": len(paths)}
    return {
        path.name: (path.read_bytes(), np.load(directory / f"{i}_wave.npy")[0], np.load(directory / f"{i}_mel.npy"))
        for i, path in enumerate(paths)
    }


def mel_differences(ours: np.ndarray, reference_freq_first: np.ndarray, n_frames: int):
    reference = reference_freq_first.T[:n_frames]
    diff = np.abs(ours[:n_frames] - reference)
    interior = diff[EDGE_FRAMES:-EDGE_FRAMES]
    return diff, interior


@pytest.mark.parametrize("name", list(FILES))
def test_waveform_matches_the_reference(name, oracle):
    data, reference, _ = oracle[name]
    ours = decode(data)
    if name.endswith(".mp3"):
        # The reference keeps the encoder's end padding (pipe input); the rest aligns.
        assert 0 <= reference.size - ours.size <= 160
    else:
        assert ours.size == reference.size
    n = ours.size - 64 if name.endswith(".mp3") else ours.size  # the tail, as above
    diff = np.abs(ours[:n] - reference[:n])
    print(f"{name}: waveform max |diff| {diff.max():.2e} (signal rms {np.sqrt(np.mean(reference**2)):.3f})")
    assert diff.max() <= WAVE_TOLERANCE


@pytest.mark.parametrize("name", list(FILES))
def test_log_mel_matches_the_reference(name, oracle):
    data, _, reference = oracle[name]
    ours = log_mel(decode(data))
    assert reference.shape[0] == 96  # frequency first
    if name.endswith(".mp3"):
        assert 0 <= reference.shape[1] - ours.shape[0] <= 1
        # The reference's extra tail samples change its last 50 resampled samples (the
        # filter's half-width), which the last two frames read.
        n_frames = ours.shape[0] - 2
    else:
        assert reference.shape[1] == ours.shape[0]
        n_frames = ours.shape[0]
    diff, interior = mel_differences(ours, reference, n_frames)
    print(f"{name}: log-mel max {diff.max():.2e} mean {diff.mean():.2e}; interior max "
          f"{interior.max():.2e} mean {interior.mean():.2e}; bands 0-87 max {diff[:, :88].max():.2e}")
    assert diff.max() <= MEL_MAX_TOLERANCE
    assert interior.mean() <= MEL_MEAN_TOLERANCE


def test_frames_are_aligned_without_offset(oracle):
    data, _, reference = oracle["stereo_44k.wav"]
    ours = log_mel(decode(data))
    aligned = np.abs(ours - reference.T).mean()
    shifted = np.abs(ours[1:] - reference.T[:-1]).mean()
    assert shifted > 100 * aligned


def test_soxr_resampler_is_measurably_further_from_the_reference(oracle):
    """Why kaiser_best is the default: soxr HQ keeps more of 7.3-8 kHz than resampy."""
    data, _, reference = oracle["stereo_44k.wav"]
    soxr_diff = np.abs(log_mel(decode(data, config=FeatureConfig(resampler="soxr_hq"))) - reference.T)
    default_diff = np.abs(log_mel(decode(data)) - reference.T)
    print(f"soxr_hq: log-mel max {soxr_diff.max():.2e} (bands {np.flatnonzero(soxr_diff.max(0) > 0.05)}), "
          f"kaiser_best: {default_diff.max():.2e}")
    assert soxr_diff[:, :88].max() < 0.05  # close below 7 kHz either way
    assert soxr_diff.max() > 100 * default_diff.max()
