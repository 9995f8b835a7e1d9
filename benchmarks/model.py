"""SF-NFNet throughput: FLOPs per window and windows/s, printed as one JSON object.

    python benchmarks/model.py                       # CPU, F0, batch 32, fp32 with and without XLA
    python benchmarks/model.py --precision bf16      # on a GPU: mixed bfloat16 (also tf32, fp32)

FLOPs are layer arithmetic (2 × multiply-adds of every convolution and dense layer for one
window; elementwise work is < 1 % and left out). "peak_fraction" compares the achieved
FLOP/s with the card's dense peak for the precision, when the card is in PEAK_TFLOPS.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from musicrep.model import build_sf_nfnet
from musicrep.model.layers import SqueezeExcite, WSConv2D

logger = logging.getLogger(__name__)

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
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


def set_precision(precision: str) -> None:
    """fp32: exact float32 (TF32 off); tf32: float32 with TF32 matmuls/convs; bf16: mixed bfloat16."""
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")


def windows_per_second(model: keras.Model, batch: np.ndarray, *, jit_compile: bool, steps: int) -> float:
    forward = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)
    x = tf.constant(batch)
    forward(x).numpy()  # trace and compile outside the timing
    forward(x).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        forward(x).numpy()
    return steps * batch.shape[0] / (time.perf_counter() - start)


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
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    parser.add_argument("--steps", type=int, default=3, help="timed batches per mode")
    parser.add_argument("--modes", default="eager,xla", help="comma list of eager (tf.function) and xla")
    args = parser.parse_args(argv)

    set_precision(args.precision)
    keras.utils.set_random_seed(0)
    model = build_sf_nfnet(args.config, frames=args.frames)
    flops = count_flops(model)
    batch = np.random.default_rng(0).standard_normal((args.batch, 96, args.frames, 1)).astype("float32")
    device = device_name()
    result = {
        "config": args.config,
        "parameters": int(model.count_params()),
        "frames": args.frames,
        "gflops_per_window": round(flops / 1e9, 3),
        "device": device,
        "precision": args.precision,
        "batch": args.batch,
        "steps": args.steps,
    }
    peak = next((p[args.precision] for name, p in PEAK_TFLOPS.items() if name in device), None)
    for mode in args.modes.split(","):
        rate = windows_per_second(model, batch, jit_compile=mode == "xla", steps=args.steps)
        result[f"windows_per_s_{mode}"] = round(rate, 2)
        result[f"tflops_{mode}"] = round(rate * flops / 1e12, 4)
        if peak:
            result[f"peak_fraction_{mode}"] = round(rate * flops / 1e12 / peak, 4)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run()))
