"""Embed job throughput against bare model forwards, printed as one JSON object.

    python benchmarks/embed.py [--config F0|tiny] [--tracks 34] [--duration-s 120] [--batch-size 32]
                               [--engine auto|tf|openvino] [--precision fp32|bf16] [--repeats 3]

Same run, same windows, same batch size, same engine and precision, `--repeats` pairs of:
(1) a bare loop of model forwards over every track's windows in this process (the model
loaded and traced beforehand); (2) the embed job over the feature shards, `musicrep
embed` in a fresh process on the embedded runner's default (one worker, in that process;
extra arguments go to it, e.g. `--direct_num_workers 1` for a worker process), its imports
and model load included. The defaults give 34 × 60 = 2,040 windows. Target: job windows/s ≥ 0.9 × bare
windows/s. The defaults are the jobs':
engine auto, and bf16 where the CPU has bf16 units (fp32 elsewhere); `engine_used` is the
engine auto picked (both runs resolve it alike). The job's time includes
start-up and model loading (OpenVINO reuses the IR that the bare run converted and
cached on this machine, as a second run would); its CPU-s and peak RSS are those of the
job's processes (descendants of this one; peak: the largest VmHWM among them), sampled.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

import musicrep.model
from musicrep.contracts.shards import parse_record
from musicrep.features.windows import cut_windows, window_starts
from musicrep.model.engines import cpu_has_bf16
from musicrep.pipelines import features as features_job
from musicrep.pipelines.inference import EmbeddingModelHandler
from musicrep.pipelines.settings import InferenceSpec
from musicrep.testing import write_synth_catalog


class ChildPeakRss:
    """Largest VmHWM of this process's descendants, sampled while the job runs (ru_maxrss of
    children is useless here: it carries the parent's peak across fork + exec), and their
    CPU seconds (the last utime + stime seen of each; getrusage misses the runner's
    workers, which are not waited for by a process of this tree)."""

    def __init__(self, interval_s: float = 0.5):
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._cpu_ticks: dict[int, int] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "ChildPeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        # Workers are grandchildren (the runner starts them through a shell): walk the tree.
        me = os.getpid()
        while not self._stop.wait(self._interval_s):
            parents, peaks = {}, {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/status") as handle:
                        fields = dict(line.split(":", 1) for line in handle if ":" in line)
                except OSError:
                    continue
                parents[int(pid)] = int(fields.get("PPid", "0").strip())
                if "VmHWM" in fields:
                    peaks[int(pid)] = int(fields["VmHWM"].split()[0]) * 1024
            for pid, peak in peaks.items():
                ancestor = parents.get(pid)
                while ancestor and ancestor != me:
                    ancestor = parents.get(ancestor)
                if ancestor == me:
                    self.peak_bytes = max(self.peak_bytes, peak)
                    try:
                        with open(f"/proc/{pid}/stat") as handle:
                            fields = handle.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    self._cpu_ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")


def bare_forwards(shards: str, model_uri: str, spec: InferenceSpec) -> tuple[int, float, float, str]:
    """Windows embedded, seconds and CPU seconds (this process, every thread) taken by
    plain batched model calls, and the engine."""
    batch_size = spec.batch_size
    loaded = EmbeddingModelHandler(model_uri, spec).load_model()
    min_frames = musicrep.model.read_metadata(model_uri).min_frames
    windows = []
    for path in sorted(glob.glob(shards)):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            record = parse_record(serialized.numpy())
            starts, length = window_starts(record.n_frames, window_frames=300, hop_frames=200, min_frames=min_frames)
            windows.append(cut_windows(record.log_mel, starts, length))
    everything = np.concatenate(windows)
    loaded.embed(everything[:batch_size])  # trace outside the timing
    started, started_cpu = time.perf_counter(), _cpu_s()
    for begin in range(0, everything.shape[0], batch_size):
        loaded.embed(everything[begin : begin + batch_size])
    return everything.shape[0], time.perf_counter() - started, _cpu_s() - started_cpu, loaded.engine


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="F0", choices=("F0", "tiny"))
    parser.add_argument("--tracks", type=int, default=34)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--precision", default="bf16" if cpu_has_bf16() else "fp32")
    parser.add_argument("--repeats", type=int, default=3, help="bare-then-job pairs (default 3; medians reported)")
    args, beam_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="musicrep-bench-") as tmp:
        catalog, shards_dir = os.path.join(tmp, "catalog"), os.path.join(tmp, "features")
        write_synth_catalog(catalog, n_tracks=args.tracks, duration_s=args.duration_s)
        # In-process, so that the only child processes (for peak RSS) are the embed workers.
        features_job.run(
            ["--input", f"{catalog}/track_*", "--output", shards_dir, "--dtype", "float32",
             "--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
        )
        model_uri = os.path.join(tmp, "model")
        keras.utils.set_random_seed(0)
        config = musicrep.model.SF_NFNET_VARIANTS[args.config]
        musicrep.model.save(musicrep.model.build_sf_nfnet(config), model_uri, config=config, source="benchmark")
        shards = f"{shards_dir}/features-*.tfrecord.gz"

        spec = InferenceSpec(batch_size=args.batch_size, engine=args.engine, precision=args.precision)
        pairs = []
        for repeat in range(args.repeats):
            n_windows, bare_s, bare_cpu_s, engine_used = bare_forwards(shards, model_uri, spec)
            started = time.perf_counter()
            with ChildPeakRss() as workers:
                subprocess.run(
                    [sys.executable, "-m", "musicrep.cli", "embed", "--features", shards, "--model", model_uri,
                     "--output", os.path.join(tmp, f"emb-{repeat}"), "--batch-size", str(args.batch_size),
                     "--engine", args.engine, "--precision", args.precision, *beam_args],
                    check=True, stdout=subprocess.DEVNULL,
                )
            job_s = time.perf_counter() - started
            pairs.append({
                "bare_windows_per_s": round(n_windows / bare_s, 2),
                "job_windows_per_s": round(n_windows / job_s, 2),
                "job_vs_bare": round(bare_s / job_s, 3),
                "job_cpu_s": round(workers.cpu_s, 1),
                "job_vs_bare_cpu": round(bare_cpu_s / max(workers.cpu_s, 1e-9), 3),
                "peak_rss_job_process_mib": round(workers.peak_bytes / 2**20, 1),
            })

    def median(key: str) -> float:
        return round(float(np.median([pair[key] for pair in pairs])), 3)

    result = {
        "benchmark": "embed",
        "config": args.config,
        "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "engine": args.engine,
        "engine_used": engine_used,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "tracks": args.tracks,
        "windows": n_windows,
        # Medians over the pairs; each pair is a bare run then the job, back to back, so a
        # drift in the VM's speed between pairs does not enter a pair's ratio.
        "bare_windows_per_s": median("bare_windows_per_s"),
        "job_windows_per_s": median("job_windows_per_s"),
        "job_vs_bare": median("job_vs_bare"),
        "job_cpu_s": median("job_cpu_s"),
        # On a shared machine the CPU-time ratio is the steadier figure (wall time follows the load).
        "job_vs_bare_cpu": median("job_vs_bare_cpu"),
        "target_job_vs_bare": 0.9,
        "peak_rss_job_process_mib": max(pair["peak_rss_job_process_mib"] for pair in pairs),
        "pairs": pairs,
        "peak_rss_launcher_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
