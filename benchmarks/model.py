"""SF-NFNet throughput per engine and precision, side by side: FLOPs per window and windows/s, as JSON.

    python benchmarks/model.py                                   # F0, batch 32: openvino and tf, fp32 and bf16
    python benchmarks/model.py --engines tf,tf-xla --precisions bf16   # on a GPU

Every (engine, precision) runs the same random export on the same batch through
`musicrep.model.engines.load_embedder` (what the embed job runs); the timed batches are
interleaved round by round, so a busy machine slows all of them alike, and the best round
counts. `tf-xla` is engine tf with `jit_compile`. Combinations the hardware refuses (bf16
without bf16 units) are listed with the reason. `vs_tf_fp32` is the speed-up over engine tf
at fp32; `min_cosine_vs_tf_fp32` the smallest per-window cosine against it.

FLOPs are layer arithmetic (2 × multiply-adds of every convolution and dense layer for one
window; elementwise work is < 1 % and left out). "peak_fraction" compares the achieved
FLOP/s with the card's dense peak for the precision, when the card is in PEAK_TFLOPS.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import musicrep.model
from musicrep.errors import ConfigError
from musicrep.model.engines import cpu_flags, load_embedder
from musicrep.model import build_sf_nfnet
from musicrep.model.layers import SqueezeExcite, WSConv2D

logger = logging.getLogger(__name__)

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {
    "H100": {"fp32": 66.9, "bf16": 989.4},
    "H200": {"fp32": 66.9, "bf16": 989.4},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}


def count_flops(model: keras.Model) -> int:
    """2 × multiply-adds per window of a model built with a fixed number of frames."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, WSConv2D):
            _, height, width, channels = layer.output.shape
            kh, kw, cin_per_group, _ = layer.kernel.shape
            flops += 2 * height * width * channels * kh * kw * cin_per_group
        elif isinstance(layer, SqueezeExcite):
            flops += 2 * sum(math.prod(w.shape) for w in (layer.squeeze_kernel, layer.excite_kernel))
    return flops


def load(uri: str, engine: str, precision: str):
    """(embedder, seconds to load) or (None, reason) where the hardware refuses the combination."""
    started = time.perf_counter()
    try:
        embedder = load_embedder(
            uri, engine=engine.removesuffix("-xla"), precision=precision, jit_compile=engine.endswith("-xla")
        )
    except ConfigError as error:
        return None, str(error)
    return embedder, time.perf_counter() - started


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="F0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=300, help="window length (300 = 3 s)")
    parser.add_argument("--engines", default="openvino,tf", help="comma list of openvino, tf, tf-xla")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per combination")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    flops = count_flops(build_sf_nfnet(args.config, frames=args.frames))
    batch = np.random.default_rng(0).standard_normal((args.batch, 96, args.frames)).astype("float32")
    device = device_name()
    flags = cpu_flags()
    result = {
        "benchmark": "model",
        "config": args.config,
        "frames": args.frames,
        "gflops_per_window": round(flops / 1e9, 3),
        "device": device,
        "cpu_count": os.cpu_count(),
        "cpu_bf16_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "batch": args.batch,
        "rounds": args.rounds,
    }
    combos = [(e, p) for e in args.engines.split(",") for p in args.precisions.split(",")]
    with tempfile.TemporaryDirectory(prefix="musicrep-bench-") as tmp:
        uri = os.path.join(tmp, "model")
        config = musicrep.model.SF_NFNET_VARIANTS[args.config]
        musicrep.model.save(build_sf_nfnet(config), uri, config=config, source="benchmark")
        embedders, outputs, best = {}, {}, {}
        for combo in combos:
            embedder, load_s = load(uri, *combo)
            if embedder is None:
                result[f"{combo[0]}_{combo[1]}"] = {"refused": load_s}
                continue
            outputs[combo] = embedder(batch)  # traces / compiles outside the timing
            embedders[combo] = embedder
            result[f"{combo[0]}_{combo[1]}"] = {"load_s": round(load_s, 1)}
        for _ in range(args.rounds):
            for combo, embedder in embedders.items():
                started = time.perf_counter()
                embedder(batch)
                best[combo] = max(best.get(combo, 0.0), args.batch / (time.perf_counter() - started))
    reference = outputs.get(("tf", "fp32"))
    peak_by_precision = next((p for name, p in PEAK_TFLOPS.items() if name in device), {})
    for combo, rate in best.items():
        entry = result[f"{combo[0]}_{combo[1]}"]
        entry["windows_per_s"] = round(rate, 2)
        entry["tflops"] = round(rate * flops / 1e12, 4)
        if ("tf", "fp32") in best:
            entry["vs_tf_fp32"] = round(rate / best[("tf", "fp32")], 2)
        if reference is not None:
            entry["min_cosine_vs_tf_fp32"] = float(min_cosine(outputs[combo], reference))
            entry["max_abs_diff_vs_tf_fp32"] = float(np.abs(outputs[combo] - reference).max())
        if combo[1] in peak_by_precision:
            entry["peak_fraction"] = round(rate * flops / 1e12 / peak_by_precision[combo[1]], 4)
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return result


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine similarity of two [n, d] arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(), indent=2))
