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

    .venv/bin/python benchmarks/pretrain.py --learns [--learn-tracks 120] [--learn-steps 300]

"It learns": a probe on SimCLR-pretrained tiny embeddings vs a random tiny model.
1. `musicrep synth-catalog` writes a labelled synthetic catalog (6 instruments, 24 keys);
2. `musicrep features` (Beam, DirectRunner) turns it into log-mel shards;
3. `musicrep pretrain simclr --config tiny` trains for `--learn-steps` (≤ 10 CPU minutes);
4. the pre-trained export and a randomly initialised tiny model (the run's seed, so the
   same initial weights) embed every track: mean over 300-frame windows centred every 200
   frames (SPEC §4's placement), computed directly on the shards;
5. a logistic-regression probe (scikit-learn, standardised inputs) per label (instrument,
   key) is fit on the catalog's train split and scored on valid + test.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_catalog(directory: str, *, tracks: int, seconds: float, shards: int, seed: int = 0) -> str:
    import tensorflow as tf

    from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG as front_end
    from musicrep.contracts.shards import FeatureRecord, serialize_record

    rng = np.random.default_rng(seed)
    frames = int(seconds * front_end.frames_per_second)
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, f"features-{i:05d}-of-{shards:05d}.tfrecord.gz"), options="GZIP")
        for i in range(shards)
    ]
    for index in range(tracks):
        log_mel = (rng.random((frames, front_end.n_mels), dtype=np.float32) * 4).astype(np.float32)
        record = FeatureRecord(
            f"bench{index}", f"bench://{index}", "0" * 64, front_end.sample_rate_hz, seconds, log_mel,
            front_end.to_json(), front_end.version,
        )
        writers[index % shards].write(serialize_record(record, dtype="float16"))
    for writer in writers:
        writer.close()
    return os.path.join(directory, "features-*.tfrecord.gz")


def bench_pipeline(pattern: str, *, batch_size: int, batches: int, draws_per_track: float = 1.0) -> dict:
    from musicrep.model.data import SamplerConfig, sample_snippets
    from musicrep.model.sampling import SamplingConfig

    sampling = SamplingConfig(mixup=True, draws_per_track=draws_per_track,
                              shuffle_buffer=max(256, int(2 * batch_size * draws_per_track)))
    config = SamplerConfig(batch_size=batch_size, pairs=True, seed=1, sampling=sampling)
    iterator = iter(sample_snippets(pattern, config))
    for _ in range(3):  # fill the shuffle buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    pairs_per_s = batches * batch_size / elapsed
    return {
        "batch_size": batch_size, "batches": batches, "draws_per_track": draws_per_track,
        "shuffle_buffer": config.shuffle_buffer_size, "pairs_per_s": pairs_per_s, "snippets_per_s": 2 * pairs_per_s,
    }


def bench_training(pattern: str, *, model_config: str, batch_size: int, steps: int, bf16: bool = False, xla: bool = False) -> dict:
    from musicrep.model.training import train
    from musicrep.model.training_config import TrainConfig

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


def musicrep(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "musicrep.cli", *args], check=True)


def embed_tracks(model, pattern: str, *, window: int = 300, hop: int = 200) -> dict[str, np.ndarray]:
    from musicrep.contracts.shard_dataset import read_shards

    out = {}
    for record in read_shards(pattern):
        log_mel = record["log_mel"].numpy()  # [frames, n_mels]
        frames = log_mel.shape[0]
        if frames < window:
            continue
        centres = sorted({min(max(c, window // 2), frames - window // 2) for c in range(hop, frames + 1, hop)})
        windows = np.stack([log_mel[c - window // 2 : c + window // 2].T for c in centres])
        z = model(windows[..., None], training=False).numpy()
        out[record["track_id"].numpy().decode()] = z.mean(axis=0)
    return out


def probe(embeddings: dict[str, np.ndarray], labels, column: str) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = labels[labels.track_id.isin(embeddings)]
    train = rows[rows.split == "train"]
    test = rows[rows.split != "train"]
    x = lambda frame: np.stack([embeddings[t] for t in frame.track_id])  # noqa: E731
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(x(train), train[column])
    return float((model.predict(x(test)) == test[column]).mean())


def learns(args: argparse.Namespace) -> dict:
    """Steps 1–5 of the "it learns" mode (see the module docstring)."""
    import pandas as pd

    work = args.workdir or tempfile.mkdtemp(prefix="musicrep-learns-")
    catalog, features, run = (os.path.join(work, name) for name in ("catalog", "features", "pretrain"))
    if not os.path.exists(os.path.join(catalog, "labels.csv")):
        musicrep("synth-catalog", catalog, "--tracks", str(args.learn_tracks), "--duration-s", str(args.learn_duration_s))
    pattern = os.path.join(features, "features-*.tfrecord.gz")
    if not glob.glob(pattern):
        musicrep("features", "--input", os.path.join(catalog, "track_*"), "--output", features, "--shards", "4")
    start = time.perf_counter()
    musicrep(
        "pretrain", "simclr", "--features", pattern, "--config", "tiny", "--batch-size", str(args.learn_batch),
        "--steps", str(args.learn_steps), "--warmup-steps", str(max(1, args.learn_steps // 10)), "--peak-lr", "1e-3",
        "--log-every", "10", "--checkpoint-every", str(args.learn_steps), "--no-progress", "--output", run,
    )
    pretrain_s = time.perf_counter() - start

    import keras

    from musicrep.model.export import load
    from musicrep.model.sf_nfnet import build_sf_nfnet

    labels = pd.read_csv(os.path.join(catalog, "labels.csv"))
    keras.utils.set_random_seed(0)  # the pre-training run's seed: the same initial weights
    models = {"random_tiny": build_sf_nfnet("tiny"), "simclr_tiny": load(os.path.join(run, "export"))}
    result = {"tracks": args.learn_tracks, "duration_s": args.learn_duration_s, "steps": args.learn_steps,
              "batch_size": args.learn_batch, "pretrain_wall_s": pretrain_s, "probe": "logistic regression",
              "workdir": work}
    for name, model in models.items():
        embeddings = embed_tracks(model, pattern)
        result[name] = {column: probe(embeddings, labels, column) for column in ("instrument", "key")}
    with open(os.path.join(run, "metrics.jsonl")) as handle:
        losses = [json.loads(line)["loss"] for line in handle]
    result["simclr_loss_first_last"] = [losses[0], losses[-1]]
    return result


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
    parser.add_argument("--learns", action="store_true", help='the "it learns" probe comparison instead')
    parser.add_argument("--learn-tracks", type=int, default=120)
    parser.add_argument("--learn-duration-s", type=float, default=8.0)
    parser.add_argument("--learn-steps", type=int, default=300, help="SimCLR steps (keep them ≤ 10 CPU minutes)")
    parser.add_argument("--learn-batch", type=int, default=32)
    parser.add_argument("--workdir", help="--learns: keep the catalog, shards and run here")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = learns(args) if args.learns else throughput(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


def throughput(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]},
        "catalog": {"tracks": args.tracks, "track_seconds": args.track_seconds, "shards": args.shards},
    }
    with tempfile.TemporaryDirectory(prefix="musicrep-bench-shards-") as directory:
        pattern = write_catalog(directory, tracks=args.tracks, seconds=args.track_seconds, shards=args.shards)
        result["input_pipeline"] = bench_pipeline(pattern, batch_size=args.pipeline_batch, batches=args.pipeline_batches)
        result["input_pipeline_8_draws_per_track"] = bench_pipeline(
            pattern, batch_size=args.pipeline_batch, batches=args.pipeline_batches, draws_per_track=8.0
        )
        if args.gpu:
            if not result["machine"]["gpus"]:
                raise SystemExit("--gpu: no GPU visible")
            result["training_gpu_f0_bf16"] = bench_training(pattern, model_config="F0", batch_size=64, steps=20, bf16=True, xla=args.xla)
            f0 = result["training_gpu_f0_bf16"]
        else:
            result["training_tiny"] = bench_training(pattern, model_config="tiny", batch_size=args.tiny_batch, steps=args.tiny_steps)
            result["training_f0"] = bench_training(pattern, model_config="F0", batch_size=args.f0_batch, steps=args.f0_steps)
            f0 = result["training_f0"]
    result["input_to_f0_ratio"] = result["input_pipeline"]["snippets_per_s"] / f0["snippets_per_s"]
    result["input_to_f0_target"] = 5.0
    return result


if __name__ == "__main__":
    sys.exit(main())
