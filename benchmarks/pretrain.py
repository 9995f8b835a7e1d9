"""Pre-training throughput (issue 5): training examples/s (tiny, F0) and the input pipeline alone.

    .venv/bin/python benchmarks/pretrain.py [--tracks 32] [--track-seconds 240] [--output out.json]
    .venv/bin/python benchmarks/pretrain.py --gpu        # F0 steps/s at batch 64 in bf16 on a GPU

Writes synthetic float16 shards of full-length tracks (what the features job writes), then
measures with the public pieces:
- `input_pipeline`: `musicrep.model.data.sample_snippets` for SimCLR pairs (5 s positives,
  mixup on), batches taken as fast as it delivers them;
- `training`: `musicrep.model.training.train` SimCLR runs, examples/s from its metrics.jsonl
  (median over the steps after the first two, which include tracing);
- `input_to_f0_ratio`: pipeline snippets/s ÷ F0 training snippets/s on the same machine
  (target ≥ 5, so the pipeline can keep a faster accelerator busy).
One example = one pair (two 300-frame snippets). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def write_catalog(directory: str, *, tracks: int, seconds: float, shards: int, seed: int = 0) -> str:
    import tensorflow as tf

    from musicrep.features.shards import FeatureRecord, serialize_record

    rng = np.random.default_rng(seed)
    frames = int(seconds * 100)
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, f"features-{i:05d}-of-{shards:05d}.tfrecord.gz"), options="GZIP")
        for i in range(shards)
    ]
    for index in range(tracks):
        log_mel = (rng.random((frames, 96), dtype=np.float32) * 4).astype(np.float32)
        record = FeatureRecord(f"bench{index}", f"bench://{index}", "0" * 64, 16000, seconds, log_mel, "{}", "bench")
        writers[index % shards].write(serialize_record(record, dtype="float16"))
    for writer in writers:
        writer.close()
    return os.path.join(directory, "features-*.tfrecord.gz")


def bench_pipeline(pattern: str, *, batch_size: int, batches: int) -> dict:
    from musicrep.model.data import SamplerConfig, sample_snippets

    config = SamplerConfig(batch_size=batch_size, pairs=True, mixup=True, seed=1)
    iterator = iter(sample_snippets(pattern, config))
    for _ in range(3):  # fill the shuffle buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    pairs_per_s = batches * batch_size / elapsed
    return {"batch_size": batch_size, "batches": batches, "pairs_per_s": pairs_per_s, "snippets_per_s": 2 * pairs_per_s}


def bench_training(pattern: str, *, model_config: str, batch_size: int, steps: int, bf16: bool = False, xla: bool = False) -> dict:
    from musicrep.model.training import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="musicrep-bench-run-") as output:
        config = TrainConfig(
            objective="simclr",
            features=pattern,
            output_dir=output,
            model_config=model_config,
            batch_size=batch_size,
            steps=steps + 10,
            warmup_steps=1,
            peak_lr=1e-4,
            log_every=1,
            checkpoint_every=10**6,
            mixed_precision=bf16,
            xla=xla,
        )
        start = time.perf_counter()
        train(config, progress=False, stop_at_step=steps)
        wall = time.perf_counter() - start
        with open(os.path.join(output, "metrics.jsonl")) as handle:
            rates = [json.loads(line)["examples_per_s"] for line in handle][2:]
    pairs_per_s = statistics.median(rates)
    return {
        "model_config": model_config,
        "batch_size": batch_size,
        "timed_steps": len(rates),
        "pairs_per_s": pairs_per_s,
        "snippets_per_s": 2 * pairs_per_s,
        "steps_per_s": pairs_per_s / batch_size,
        "bf16": bf16,
        "xla": xla,
        "wall_s_including_build_and_trace": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=32)
    parser.add_argument("--track-seconds", type=float, default=240.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--pipeline-batch", type=int, default=64)
    parser.add_argument("--pipeline-batches", type=int, default=30)
    parser.add_argument("--tiny-batch", type=int, default=16)
    parser.add_argument("--tiny-steps", type=int, default=12)
    parser.add_argument("--f0-batch", type=int, default=4)
    parser.add_argument("--f0-steps", type=int, default=6)
    parser.add_argument("--gpu", action="store_true", help="F0 at batch 64 in bf16 (needs a GPU)")
    parser.add_argument("--xla", action="store_true", help="with --gpu: also XLA")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]},
        "catalog": {"tracks": args.tracks, "track_seconds": args.track_seconds, "shards": args.shards},
    }
    with tempfile.TemporaryDirectory(prefix="musicrep-bench-shards-") as directory:
        pattern = write_catalog(directory, tracks=args.tracks, seconds=args.track_seconds, shards=args.shards)
        result["input_pipeline"] = bench_pipeline(pattern, batch_size=args.pipeline_batch, batches=args.pipeline_batches)
        if args.gpu:
            if not result["machine"]["gpus"]:
                print("--gpu: no GPU visible", file=sys.stderr)
                return 2
            result["training_gpu_f0_bf16"] = bench_training(pattern, model_config="F0", batch_size=64, steps=20, bf16=True, xla=args.xla)
            f0 = result["training_gpu_f0_bf16"]
        else:
            result["training_tiny"] = bench_training(pattern, model_config="tiny", batch_size=args.tiny_batch, steps=args.tiny_steps)
            result["training_f0"] = bench_training(pattern, model_config="F0", batch_size=args.f0_batch, steps=args.f0_steps)
            f0 = result["training_f0"]
    result["input_to_f0_ratio"] = result["input_pipeline"]["snippets_per_s"] / f0["snippets_per_s"]
    result["input_to_f0_target"] = 5.0
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
