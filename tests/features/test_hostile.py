"""The hostile-file battery (issue 17), run through the features job's DoFn: every input
ends in exactly one output (a final record or a one-line dead letter), never a raised
exception, in CPU time an input within a fixed multiple of a clean run's. A seeded fuzz
set mutates real encodings."""
from __future__ import annotations

import collections
import io
import os
import pathlib
import resource
import shutil
import subprocess

import numpy as np
import pytest
import soundfile

from job_outputs import read_dead_letters
from musicrep.cli import main
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep.contracts.shard_dataset import read_shards
from musicrep.contracts.shards import FeatureRecord
from musicrep.manifest import read_manifest
from musicrep.pipelines.features import ComputeLogMel

SEED = 17
CLEAN_NAMES = ("s16_44k.wav", "s24_48k.flac", "tone.mp3", "tone.ogg", "tone.opus", "tone.m4a")
CLEAN_COPIES = 5
# The battery's CPU time an input against the clean run's. Its inputs are the same ~1 s
# sources (most damaged ones fail early, so cheaper); what costs more is a handful
# (the 20 MB cover hashed, 384 kHz and 16-channel resampling, 8 s chained Ogg): 1.2x the
# clean rate in all, measured (21 vs 18 ms). 5x leaves room for noise between the two
# measurements and still fails when one input spins until the 30 s budget (+113 ms an
# input over 265: ~7x the clean rate).
MAX_SLOWDOWN = 5.0


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 55 * c) * t) for c in range(channels)], axis=1).astype(np.float32)


def _sf(audio: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def base_encodings(signals) -> dict[str, bytes]:
    """Real encodings of the battery: rates 8 kHz … 384 kHz, 8/16/24/32-bit int and float
    PCM, 1 … 16 channels, the lossy codecs."""
    mono = _tone(44100, 1.0)
    files = {
        "u8_8k.wav": _sf(_tone(8000, 1.0), 8000, "WAV", "PCM_U8"),
        "s16_44k.wav": _sf(mono, 44100, "WAV", "PCM_16"),
        "s24_48k.flac": _sf(_tone(48000, 1.0, 2), 48000, "FLAC", "PCM_24"),
        "s32_384k.wav": _sf(_tone(384000, 0.5), 384000, "WAV", "PCM_32"),
        "f32_96k.wav": _sf(_tone(96000, 0.5, 2), 96000, "WAV", "FLOAT"),
        "f64_22k.wav": _sf(_tone(22050, 0.5), 22050, "WAV", "DOUBLE"),
        "5.1.wav": _sf(_tone(48000, 0.5, 6), 48000, "WAV", "PCM_16"),
        "7.1.flac": _sf(_tone(48000, 0.5, 8), 48000, "FLAC", "PCM_16"),
        "16ch.wav": _sf(_tone(16000, 0.5, 16), 16000, "WAV", "PCM_16"),
        "one_frame.wav": _sf(_tone(44100, 1 / 44100), 44100, "WAV", "PCM_16"),
        "zero_length.wav": _sf(np.zeros((0, 1), np.float32), 44100, "WAV", "PCM_16"),
        "nan.wav": _sf(np.array([[0.1], [np.nan], [np.inf], [-0.1]] * 2000, np.float32), 16000, "WAV", "FLOAT"),
    }
    for fmt in ("mp3", "ogg", "opus", "m4a"):
        rate = 48000 if fmt == "opus" else 44100
        files[f"tone.{fmt}"] = signals.encode(_tone(rate, 1.0, 2).T, sample_rate_hz=rate, audio_format=fmt)
    # A 20 MB ID3v2 tag (a cover) in front of the mp3: size as four 7-bit bytes.
    tag_size = 20 << 20
    size = bytes([(tag_size >> shift) & 0x7F for shift in (21, 14, 7, 0)])
    files["big_cover.mp3"] = b"ID3\x04\x00\x00" + size + b"\x00" * tag_size + files["tone.mp3"]
    return files


def ffmpeg_made(tmp_path) -> dict[str, bytes]:
    """Files only the ffmpeg program writes here: libvorbis mono, H.264 video, PNG."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg program is not installed")

    def run(*args: str) -> bytes:
        out = tmp_path / f"made{len(os.listdir(tmp_path))}.{args[-1]}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", *args[:-1], str(out)], check=True)
        return out.read_bytes()

    sine = lambda f, rate, d: ["-f", "lavfi", "-i", f"sine=f={f}:r={rate}:d={d}"]  # noqa: E731
    video = ["-f", "lavfi", "-i", "testsrc=d=2:s=64x48:r=10"]
    return {
        # 4 s mono 22.05 kHz Vorbis, then 4 s stereo 44.1 kHz: `cat a.ogg b.ogg`.
        "chained.ogg": run(*sine(220, 22050, 4), "-ac", "1", "-c:a", "libvorbis", "ogg")
        + run(*sine(330, 44100, 4), "-ac", "2", "-c:a", "libvorbis", "ogg"),
        # 3 s stereo 44.1 kHz, then 3 s mono 22.05 kHz in one mp3 stream.
        "rate_change.mp3": run(*sine(220, 44100, 3), "-ac", "2", "-c:a", "libmp3lame", "mp3")
        + run(*sine(330, 22050, 3), "-ac", "1", "-c:a", "libmp3lame", "mp3"),
        "music_video.mp4": run(*video, *sine(330, 44100, 2), "-c:v", "libx264", "-c:a", "aac", "-shortest", "mp4"),
        "video_only.mp4": run(*video, "-c:v", "libx264", "mp4"),
        "image_only.png": run("-f", "lavfi", "-i", "testsrc=d=0.1:s=64x48:r=10", "-frames:v", "1", "png"),
    }


def mutations(files: dict[str, bytes], n: int, seed: int = SEED) -> dict[str, bytes]:
    """n seeded mutations of the real encodings (the 20 MB one left out): bit flips,
    truncations, inserted garbage, another format's header swapped in."""
    rng = np.random.default_rng(seed)
    names = sorted(name for name in files if name != "big_cover.mp3" and len(files[name]) > 64)
    out = {}
    for i in range(n):
        name = names[i % len(names)]
        data = bytearray(files[name])
        kind = ("flip", "truncate", "insert", "swap")[(i // len(names)) % 4]
        if kind == "flip":
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 64))):
                data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == "truncate":
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == "insert":
            at = int(rng.integers(0, len(data)))
            data[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
        else:
            other = files[names[int(rng.integers(0, len(names)))]]
            cut = int(rng.integers(4, 256))
            data[:cut] = other[:cut]
        out[f"fuzz-{i:03d}-{kind}-{name}"] = bytes(data)
    return out


def recorded_uris(output_dir: str) -> list[str]:
    return [element["uri"].numpy().decode() for element in read_shards(output_dir)]


def run_one(dofn: ComputeLogMel, track_id: str, uri: str) -> list:
    return list(dofn.process((track_id, uri)))


def timed(dofn: ComputeLogMel, inputs: dict[str, str]) -> tuple[dict[str, list], float]:
    """Each input's outputs, and the CPU seconds they took: this process's (the DoFn) and
    its children's (the front-end process, waited for by the teardown; CPU, not wall
    time, so other load does not count)."""
    started = _cpu_s()
    dofn.setup()
    results = {name: run_one(dofn, name, uri) for name, uri in sorted(inputs.items())}
    dofn.teardown()
    return results, _cpu_s() - started


def _cpu_s() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def outcome(outputs: list) -> str:
    """'record' or 'dead:<stage>'; asserts exactly one output, and a one-line reason."""
    assert len(outputs) == 1, outputs
    (output,) = outputs
    if isinstance(output, FeatureRecord):
        assert output.final and output.n_frames >= 1 and np.isfinite(output.log_mel).all()
        return "record"
    assert output.tag == "errors"
    message = output.value["message"]
    assert message and "\n" not in message and "Traceback" not in message, message
    return f"dead:{output.value['stage']}"


def write_battery(signals, tmp_path) -> tuple[pathlib.Path, dict[str, bytes], dict[str, bytes]]:
    """DIR/battery holding the real encodings and their mutations: (DIR, files, fuzz)."""
    (tmp_path / "made").mkdir()
    files = {**base_encodings(signals), **ffmpeg_made(tmp_path / "made")}
    fuzz = mutations(files, 240)
    root = tmp_path / "battery"
    root.mkdir()
    for name, data in {**files, **fuzz}.items():
        (root / name).write_bytes(data)
    return root, files, fuzz


def test_the_battery_as_a_features_job_exits_0_with_one_output_an_input(signals, tmp_path, capsys):
    root, files, fuzz = write_battery(signals, tmp_path)
    (root / "loop-a.mp3").symlink_to(root / "loop-b.mp3")
    (root / "loop-b.mp3").symlink_to(root / "loop-a.mp3")
    out = tmp_path / "out"
    argv = ["features", "--input", f"{root}/*", "--output", str(out), "--time-budget-s", "30", "--dtype", "float32"]
    assert main([*argv, "--direct_running_mode=in_memory", "--direct_num_workers=1"]) == 0
    counts = read_manifest(str(out))["counts"]
    errors = read_dead_letters(str(out))
    records = recorded_uris(str(out))  # one record a track: none is long enough for segments
    # Every entry of the directory once, by path: a record or a one-line dead letter (the
    # tone.* files share a track id: one is a record, the others dead letters).
    assert counts == {"features": len(records), "errors": len(errors)}
    assert sorted(records + [e["uri"] for e in errors]) == sorted(str(root / name) for name in os.listdir(root))
    assert len(records) + len(errors) == len(files) + len(fuzz) + 2
    assert all(e["message"] and "\n" not in e["message"] and "Traceback" not in e["message"] for e in errors)
    assert "Traceback" not in capsys.readouterr().err
    stages = collections.Counter(e["stage"] for e in errors)
    with capsys.disabled():
        print(f"\nbattery job: {len(os.listdir(root))} inputs, {len(records)} records, dead letters {dict(sorted(stages.items()))}")


def test_the_battery_and_a_fuzz_set_each_end_in_one_output(signals, tmp_path):
    root, files, fuzz = write_battery(signals, tmp_path)
    # Inputs that change or vanish between listing and reading, and ones no one may read.
    (root / "deleted.wav").write_bytes(files["s16_44k.wav"])
    listed = {name: str(root / name) for name in os.listdir(root)}
    os.remove(root / "deleted.wav")
    # Cut to about half after the listing, as an upload overwritten mid-run leaves it: the
    # WAV header still promises the whole length, the mp3 stops mid-frame.
    for name, source in (("truncated.wav", "s16_44k.wav"), ("truncated.mp3", "tone.mp3")):
        (root / name).write_bytes(files[source])
        listed[name] = str(root / name)
        os.truncate(root / name, len(files[source]) // 2)
    (root / "loop-a.mp3").symlink_to(root / "loop-b.mp3")
    (root / "loop-b.mp3").symlink_to(root / "loop-a.mp3")
    listed |= {"loop-a.mp3": str(root / "loop-a.mp3")}
    unreadable = root / "no-permission.flac"
    unreadable.write_bytes(files["s24_48k.flac"])
    unreadable.chmod(0)
    listed["no-permission.flac"] = str(unreadable)

    # The clean run: plain 1 s encodings in the common formats (as long as, or longer than,
    # the battery's ~0.5-1 s sources), several copies each.
    clean = root.parent / "clean"
    clean.mkdir()
    for copy in range(CLEAN_COPIES):
        for name in CLEAN_NAMES:
            (clean / f"{copy}-{name}").write_bytes(files[name])
    dofn = ComputeLogMel(DEFAULT_FEATURE_CONFIG, time_budget_s=30.0)
    clean_outcomes, clean_cpu_s = timed(dofn, {path.name: str(path) for path in clean.iterdir()})
    results, cpu_s = timed(dofn, listed)
    outcomes = {name: outcome(outputs) for name, outputs in results.items()}
    assert {outcome(outputs) for outputs in clean_outcomes.values()} == {"record"}
    ratio = (cpu_s / len(outcomes)) / (clean_cpu_s / len(clean_outcomes))
    counts = collections.Counter(outcomes.values())
    print(
        f"battery: {len(outcomes)} inputs, {dict(sorted(counts.items()))}, {cpu_s:.1f} CPU s "
        f"({1000 * cpu_s / len(outcomes):.0f} ms an input; clean {1000 * clean_cpu_s / len(clean_outcomes):.0f} ms: "
        f"{ratio:.2f}x)"
    )

    assert len(fuzz) >= 200 and len(outcomes) == len(files) + len(fuzz) + 5
    for name in ("u8_8k.wav", "s16_44k.wav", "s24_48k.flac", "s32_384k.wav", "f32_96k.wav", "f64_22k.wav",
                 "5.1.wav", "7.1.flac", "16ch.wav", "one_frame.wav", "tone.mp3", "tone.ogg", "tone.opus",
                 "tone.m4a", "big_cover.mp3", "chained.ogg", "rate_change.mp3", "music_video.mp4"):
        assert outcomes[name] == "record", (name, outcomes[name])
    # Decoded whole, as the ffmpeg program does: both chains, both halves.
    assert results["chained.ogg"][0].duration_s == pytest.approx(8.0, abs=0.01)
    assert results["rate_change.mp3"][0].duration_s == pytest.approx(6.05, abs=0.06)
    for name in ("video_only.mp4", "image_only.png"):
        assert outcomes[name] == "dead:decode" and "no audio stream" in results[name][0].value["message"]
    assert outcomes["zero_length.wav"] == "dead:decode"
    assert outcomes["nan.wav"] == "dead:decode"
    assert outcomes["deleted.wav"] == outcomes["loop-a.mp3"] == "dead:read"
    # What was there when read is decoded: about half of the whole track's length.
    for name, source in (("truncated.wav", "s16_44k.wav"), ("truncated.mp3", "tone.mp3")):
        assert outcomes[name] == outcomes[source] == "record", (name, outcomes[name])
        whole, cut = results[source][0].duration_s, results[name][0].duration_s
        assert 0.3 * whole < cut < 0.7 * whole, (name, cut, whole)
    if os.geteuid() != 0:  # root reads anything
        assert outcomes["no-permission.flac"] == "dead:read"
    assert set(counts) <= {"record", "dead:read", "dead:decode", "dead:log_mel"}
    # CPU time an input, a fixed multiple of the clean run's (see MAX_SLOWDOWN).
    assert ratio <= MAX_SLOWDOWN, ratio
