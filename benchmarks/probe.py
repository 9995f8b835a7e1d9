"""Benchmark: fit time of the MTT probe preset at catalog scale; prints JSON.

The MTT preset (1×512, dropout 0.5, batch 256) for 20,000 steps on 50,000 × 1728 float32
embeddings — the size of a real tagging dataset embedded by SF-NFNet-F0. Target: under
5 minutes on this machine (the paper allows one hour on 32 cores).

    python benchmarks/probe.py [--tracks 50000] [--dim 1728] [--steps 20000]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from musicrep.probes.model import build_probe, fit_probe
from musicrep.probes.presets import HyperParameters, get_preset

TARGET_SECONDS = 300.0
N_TAGS = 50


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1728)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--preset", default="MTT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # progress on stderr
    preset = get_preset(args.preset)
    rng = np.random.default_rng(0)
    # Tags carry a planted signal so the loss moves as it would on real data.
    tags = (rng.random((args.tracks, N_TAGS)) < 0.1).astype(np.float32)
    vectors = tags @ rng.standard_normal((N_TAGS, args.dim)).astype(np.float32)
    vectors += rng.standard_normal((args.tracks, args.dim)).astype(np.float32)
    x, y = tf.constant(vectors), tf.constant(tags)
    keras.utils.set_random_seed(0)
    model = build_probe(input_dim=args.dim, n_outputs=N_TAGS, hidden_units=preset.hidden_units,
                        dropout=preset.dropout, l2=1e-6)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = fit_probe(model, x, y, task=preset.task,
                        hyper=HyperParameters(learning_rate=1e-4, steps=args.steps, l2=1e-6),
                        batch_size=preset.batch_size,
                        warmup_steps=min(preset.warmup_steps, args.steps // 2), seed=0)
    seconds = time.perf_counter() - started
    # CPU seconds of all threads: with other jobs on the machine, wall time alone misleads.
    cpu_seconds = time.process_time() - cpu_started
    devices = [device.device_type for device in tf.config.list_logical_devices()]
    print(json.dumps({
        "benchmark": "probe_fit", "preset": preset.name, "layers": preset.layers_label,
        "dropout": preset.dropout, "batch_size": summary.batch_size, "steps": summary.steps,
        "tracks": args.tracks, "dim": args.dim, "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "ms_per_step": round(1000 * seconds / summary.steps, 2),
        "examples_per_s": round(summary.steps * summary.batch_size / seconds),
        "final_loss": round(summary.final_loss, 4), "target_seconds": TARGET_SECONDS,
        "within_target": seconds < TARGET_SECONDS, "devices": devices,
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "tensorflow": tf.__version__, "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(run())
