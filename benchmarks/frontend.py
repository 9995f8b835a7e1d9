"""The CPU front end before and after, in one run, printed as one JSON object.

    python benchmarks/frontend.py [--before c6e3bfc] [--tracks 10] [--duration-s 120] [--copies 3] [--catalog DIR]
                                  [--repeats 3]

"Before" is the package at git revision --before (extracted with `git archive` into a
temporary directory and put first on PYTHONPATH of the child processes); "after" is the
installed package. Both run on the same generated catalog of mp3, flac and opus files
(musicrep.testing's synthetic music; the wav and ogg tracks it also writes are dropped),
each file hard-linked --copies times so the job's catalog reaches >= 30 minutes.

1. stages: CPU-seconds per 720 s of audio of each stage, one process, one BLAS thread (as
   a job worker): decode (demux + codec), s16_44k (PyAV's AudioResampler to 44.1 kHz s16),
   channel_sum, resample_16k (kaiser_best), stft_power, mel, log, shard (serialize +
   TFRecord framing + gzip at the version's level), and start_up (a worker's imports and
   DoFn setup; the launcher's imports).
2. job: the features job end to end (`musicrep features`, embedded runner, one worker per
   core) in audio-s per CPU-s (user + sys of the whole process tree), and the same job on
   a 2-second catalog (its fixed cost), from which the steady rate follows. Each job runs
   --repeats times; the run of median CPU is reported with every run's CPU-s. "after" also
   runs with `--direct_running_mode=multi_processing` (`_in_processes`: worker processes,
   as before the job's workers became threads).
3. parity: max |log-mel after − log-mel before| over the distinct files (decode → log-mel).
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

AUDIO_EXTENSIONS = (".mp3", ".flac", ".opus")
PER_AUDIO_S = 720.0
# gzip level of a version without contracts.shards.DEFAULT_GZIP_LEVEL (Beam's WriteToTFRecord: zlib's default).
BEFORE_GZIP_LEVEL = 6


def _first_module(*names: str):
    """The first of `names` this version of the package has."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names}")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stages(files: list[str], parity_path: str) -> dict:
    """Per-stage CPU-seconds of the importable musicrep (this process's), per 720 s."""
    import importlib

    import av
    import numpy as np
    import threadpoolctl

    threadpoolctl.threadpool_limits(1, user_api="blas")
    audio = importlib.import_module("musicrep.features.audio")
    log_mel_module = importlib.import_module("musicrep.features.log_mel")
    # Issue 19 moved the shard and feature-config modules into musicrep.contracts. The old
    # names first: an editable install resolves musicrep.contracts to the working tree's
    # even for a version that has none.
    shards = _first_module("musicrep.features.shards", "musicrep.contracts.shards")
    config = _first_module("musicrep.features.config", "musicrep.contracts.feature_config").DEFAULT_FEATURE_CONFIG

    gzip_level = getattr(shards, "DEFAULT_GZIP_LEVEL", BEFORE_GZIP_LEVEL)
    log_mel_module.mel_filterbank(config)
    spent = dict.fromkeys(("decode", "s16_44k", "channel_sum", "resample_16k", "stft_power", "mel", "log", "shard"), 0.0)
    audio_s, outputs = 0.0, {}
    scale = np.float32(config.pcm_scale)
    for path in files:
        with av.open(path) as container:
            stream = container.streams.audio[0]
            started = _cpu_s()
            frames = [frame for packet in container.demux(stream) for frame in packet.decode()]
            spent["decode"] += _cpu_s() - started
        to_pcm16 = av.AudioResampler(format="s16", layout=None, rate=config.decode_rate_hz, frame_size=16384)
        started = _cpu_s()
        pcm = [block for frame in frames for block in to_pcm16.resample(frame)] + list(to_pcm16.resample(None))
        spent["s16_44k"] += _cpu_s() - started
        started = _cpu_s()
        mono = [audio._sum_channels(block, scale) for block in pcm]
        spent["channel_sum"] += _cpu_s() - started
        resampler = audio.KaiserBestResampler(config.decode_rate_hz, config.sample_rate_hz)
        started = _cpu_s()
        pieces = [resampler.resample_chunk(block) for block in mono]
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        spent["resample_16k"] += _cpu_s() - started
        waveform = np.concatenate(pieces)
        audio_s += waveform.size / config.sample_rate_hz
        n_frames = config.n_frames(waveform.size)
        padded = log_mel_module._reflect_pad(waveform, *log_mel_module._pads(waveform.size, config))
        started = _cpu_s()
        for _ in log_mel_module._power_blocks(padded, n_frames, config):
            pass
        power_s = _cpu_s() - started
        started = _cpu_s()
        features = log_mel_module._log_mel_of_padded(padded, n_frames, config)
        mel_and_log_s = _cpu_s() - started - power_s
        # The compression is the same numpy calls in both versions: timed on its own, and
        # the rest of _log_mel_of_padded beyond the power spectrum is the mel product.
        mel = np.full_like(features, 0.01)
        started = _cpu_s()
        mel *= np.float32(config.log_gain)
        np.log1p(mel, out=mel)
        mel *= np.float32(1.0 / np.log(10.0))
        log_s = _cpu_s() - started
        spent["stft_power"] += power_s
        spent["log"] += log_s
        spent["mel"] += max(mel_and_log_s - log_s, 0.0)
        record = shards.FeatureRecord(
            track_id=os.path.basename(path), uri=path, content_sha256="0" * 64, sample_rate=config.sample_rate_hz,
            duration_s=waveform.size / config.sample_rate_hz, log_mel=features, feature_config=config.to_json(),
            feature_version=config.version,
        )
        started = _cpu_s()
        _write_shard([shards.serialize_record(record)], gzip_level, shards)
        spent["shard"] += _cpu_s() - started
        outputs[os.path.basename(path)] = features
    np.savez(parity_path, **outputs)
    per = PER_AUDIO_S / audio_s
    table = {name: round(seconds * per, 3) for name, seconds in spent.items()}
    table["total"] = round(sum(spent.values()) * per, 3)
    return {"audio_s": round(audio_s, 1), "cpu_s_per_720_audio_s": table,
            "audio_s_per_cpu_s": round(audio_s / sum(spent.values()), 1), "gzip_level": gzip_level}


def _write_shard(records: list[bytes], level: int, shards) -> int:
    """Bytes of a gzip TFRecord shard of `records`, compressed as the version's job does
    (its `gzip_writer`; before it, zlib through gzip.GzipFile) with the framing both write."""
    import gzip
    import struct

    buffer = io.BytesIO()
    writer = getattr(shards, "gzip_writer", None)
    out = writer(buffer, level) if writer else gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=level, mtime=0)
    with out:
        for data in records:
            length = struct.pack("<Q", len(data))
            out.write(length + struct.pack("<I", shards._masked_crc32c(length)))
            out.write(data)
            out.write(struct.pack("<I", shards._masked_crc32c(data)))
    return buffer.tell()


def start_up() -> dict:
    """CPU-seconds of a features worker's start (Beam's worker module, the job's module,
    the DoFn's setup with the start of its front-end process) and of the launcher's
    imports, each in a fresh process."""
    worker = (
        "import apache_beam.runners.worker.sdk_worker_main\n"
        "from musicrep.pipelines import features\n"
        "try:\n    from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG\n"
        "except ImportError:\n    from musicrep.features.config import DEFAULT_FEATURE_CONFIG\n"
        "dofn = features.ComputeLogMel(DEFAULT_FEATURE_CONFIG)\n"
        "dofn.setup()\n"
        # Its front-end process (where the version has one), waited for so that its CPU counts.
        "getattr(dofn, 'teardown', lambda: None)()\n"
    )
    launcher = "import musicrep.cli\nfrom musicrep.pipelines import features\n"
    return {"worker_s": round(_child_cpu_s([sys.executable, "-c", worker]), 2),
            "launcher_imports_s": round(_child_cpu_s([sys.executable, "-c", launcher]), 2)}


def _child_cpu_s(command: list[str]) -> float:
    before = _children_cpu_s()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _children_cpu_s() - before


def job(pattern: str, output: str, *beam_args: str) -> dict:
    """`musicrep features` on `pattern`: CPU-s of the process tree, wall s, audio s."""
    before, started = _children_cpu_s(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from musicrep.cli import main; sys.exit(main())",
         "features", "--input", pattern, "--output", output, *beam_args],
        check=True, capture_output=True, text=True,
    )
    wall_s, cpu_s = time.perf_counter() - started, _children_cpu_s() - before
    line = next(line for line in done.stdout.splitlines() if line.startswith("features:"))
    audio_s = float(line.split(" s of audio")[0].rsplit(" ", 1)[1])
    size = sum(os.path.getsize(path) for path in glob.glob(os.path.join(output, "features-*")))
    return {"audio_s": audio_s, "cpu_s": round(cpu_s, 2), "wall_s": round(wall_s, 1),
            "audio_s_per_cpu_s": round(audio_s / cpu_s, 1), "shard_bytes": size}


def _version(name: str, env: dict, files: list[str], catalogs: dict, tmp: str, repeats: int,
             job_variants: dict[str, list[str]]) -> dict:
    """Every measurement of one version, its children run with `env`; each job variant
    (suffix → extra Beam arguments) on each catalog `repeats` times."""
    parity_path = os.path.join(tmp, f"log_mel_{name}.npz")
    child = subprocess.run([sys.executable, __file__, "--child-stages", parity_path, *files],
                           env=env, check=True, capture_output=True, text=True)
    result = {"stages": json.loads(child.stdout.strip().splitlines()[-1])}
    start = subprocess.run([sys.executable, __file__, "--child-start-up"], env=env, check=True,
                           capture_output=True, text=True)
    result["stages"]["start_up"] = json.loads(start.stdout.strip().splitlines()[-1])
    for suffix, beam_args in job_variants.items():
        for label, pattern in catalogs.items():
            output = os.path.join(tmp, f"out-{name}-{label}{suffix}")
            result[f"job_{label}{suffix}"] = _median_run(env, pattern, output, beam_args, repeats)
        big, fixed = result[f"job_catalog{suffix}"], result[f"job_fixed{suffix}"]
        result[f"job_steady{suffix}_audio_s_per_cpu_s"] = round(big["audio_s"] / (big["cpu_s"] - fixed["cpu_s"]), 1)
    return result


def _median_run(env: dict, pattern: str, output: str, beam_args: list[str], repeats: int) -> dict:
    """The run of median CPU among `repeats`, with every run's CPU-s: on a shared VM the
    same job's CPU moves by ~10 % from run to run."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(output, ignore_errors=True)
        child = subprocess.run([sys.executable, __file__, "--child-job", pattern, output, *beam_args], env=env,
                               check=True, capture_output=True, text=True)
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda run: run["cpu_s"])
    return {**runs[len(runs) // 2], "cpu_s_of_each_run": [run["cpu_s"] for run in runs]}


def _before_tree(revision: str, tmp: str) -> str:
    """The package at `revision` laid out for import as `musicrep` (setup.py's mapping:
    core/ is the root package, the other folders its subpackages); returns the path."""
    source = os.path.join(tmp, "before-src")
    os.makedirs(source)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", repo, "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
    for name in ("contracts", "features", "model", "pipelines", "probes", "store"):
        if os.path.isdir(os.path.join(source, name)):  # contracts/ since issue 19
            os.symlink(os.path.join(source, name), os.path.join(source, "core", name))
    root = os.path.join(tmp, "before-pkg")
    os.makedirs(root)
    os.symlink(os.path.join(source, "core"), os.path.join(root, "musicrep"))
    return root


def _catalog(tmp: str, tracks: int, duration_s: float, copies: int, source: str | None) -> tuple[list[str], dict]:
    from musicrep.testing import write_synth_catalog

    if source is None:
        source = os.path.join(tmp, "source")
        write_synth_catalog(source, n_tracks=tracks, duration_s=duration_s)
    files = sorted(p for p in glob.glob(os.path.join(source, "track_*")) if p.endswith(AUDIO_EXTENSIONS))
    catalog, fixed = os.path.join(tmp, "catalog"), os.path.join(tmp, "fixed")
    os.makedirs(catalog)
    os.makedirs(fixed)
    for path in files:
        stem, extension = os.path.splitext(os.path.basename(path))
        for copy in range(copies):
            os.link(path, os.path.join(catalog, f"{stem}_copy{copy}{extension}"))
    # The fixed cost: the same job on one 2 s track (start-up, listing, commit).
    write_synth_catalog(fixed, n_tracks=1, duration_s=2.0)
    return files, {"catalog": os.path.join(catalog, "track_*"), "fixed": os.path.join(fixed, "track_*")}


def _parity(tmp: str) -> dict:
    import numpy as np

    before = np.load(os.path.join(tmp, "log_mel_before.npz"))
    after = np.load(os.path.join(tmp, "log_mel_after.npz"))
    per_file = {name: float(np.abs(after[name] - before[name]).max()) for name in before.files}
    assert all(after[name].shape == before[name].shape for name in before.files)
    return {"max_abs_log_mel_difference": max(per_file.values()), "per_file": per_file, "tolerance": 1e-5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="c6e3bfc", help="git revision of the 'before' front end")
    parser.add_argument("--tracks", type=int, default=10, help="synthetic tracks (of which mp3/flac/opus are kept)")
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--copies", type=int, default=3, help="each kept file appears this many times in the job")
    parser.add_argument("--catalog", help="a directory of track_* files to use instead of generating them "
                        "(e.g. one `musicrep synth-catalog DIR --tracks 10 --duration-s 120` wrote)")
    parser.add_argument("--child-stages", help=argparse.SUPPRESS)
    parser.add_argument("--child-start-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each job, of which the median is reported")
    parser.add_argument("--child-job", nargs=2, help=argparse.SUPPRESS)
    args, files = parser.parse_known_args()
    if args.child_stages:
        print(json.dumps(stages(files, args.child_stages)))
        return
    if args.child_start_up:
        print(json.dumps(start_up()))
        return
    if args.child_job:
        print(json.dumps(job(*args.child_job, *files)))
        return
    with tempfile.TemporaryDirectory(prefix="musicrep-frontend-") as tmp:
        files, catalogs = _catalog(tmp, args.tracks, args.duration_s, args.copies, args.catalog)
        before_env = {**os.environ, "PYTHONPATH": _before_tree(args.before, tmp)}
        result = {
            "benchmark": "frontend",
            "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "files": [os.path.basename(path) for path in files],
            "copies": args.copies,
            "before_revision": args.before,
            "before": _version("before", before_env, files, catalogs, tmp, args.repeats, {"": []}),
            # The job in its own running mode, and with worker processes as before it.
            "after": _version("after", dict(os.environ), files, catalogs, tmp, args.repeats,
                              {"": [], "_in_processes": ["--direct_running_mode=multi_processing"]}),
        }
        result["parity"] = _parity(tmp)
        result["load_average_at_end"] = os.getloadavg()
        for key in ("job_catalog", "job_fixed"):
            before_rate = result["before"][key]["audio_s_per_cpu_s"]
            # None where the before job reported no audio (its counter rounds a short track to 0 s).
            result[f"{key}_speedup"] = round(result["after"][key]["audio_s_per_cpu_s"] / before_rate, 2) if before_rate else None
        result["target_job_audio_s_per_cpu_s"] = 200
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
