"""The device front end (`--log-mel-on device`) against the CPU front end, as one JSON object.

    python benchmarks/device_frontend.py                    # on a GPU worker: F0, bf16
    python benchmarks/device_frontend.py --cpu --config tiny --precision fp32   # a check anywhere

On a synthetic catalog (mixed codecs and rates, `--tracks` × `--duration-s`), per front end:
- `cpu_s_per_audio_s`: CPU seconds of this process (user + sys, every thread) per second
  of audio for what a worker's CPU does before the model: decode → 16 kHz → log-mel →
  windows (cpu), or decode → audio windows (device);
- `model_windows_per_s`: the forward alone on ready inputs (log-mel windows; audio windows,
  whose graph also resamples and takes the log-mel), batch `--batch-size`;
- `end_to_end_windows_per_s` and `end_to_end_cpu_s_per_audio_s`: both in one loop per
  track, as one worker process runs them (no overlap of the CPU and device work).
A GPU worker with C cores feeds about C / cpu_s_per_audio_s audio-s/s (0.5 windows per
audio-s at the spec's hop): the figure that decides whether the device front end pays.

Without a GPU the script refuses to run unless --cpu is given (then TensorFlow is kept off
any GPU, and the figures are a CPU check, not the GPU measurement).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run without a GPU (a check of the script, not the measurement)")
    parser.add_argument("--config", default="F0", choices=("F0", "tiny"))
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    args = parser.parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before TensorFlow starts
    import keras
    import tensorflow as tf
    import threadpoolctl

    import musicrep.model
    from musicrep.features.audio_windows import AudioTrackWindower, TrackInput, cut_audio_windows, geometry
    from musicrep.features.stream import TrackLogMel
    from musicrep.contracts.window_spec import WindowSpec
    from musicrep.features.windows import WindowStream, cut_windows
    from musicrep.model.device_frontend import load_audio_embedder
    from musicrep.model.engines import load_embedder
    from musicrep.testing import write_synth_catalog

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.cpu:
        sys.exit("benchmarks/device_frontend.py: no GPU visible to TensorFlow; pass --cpu for a CPU check")
    workdir = tempfile.TemporaryDirectory(prefix="musicrep-devfe-")
    tmp = workdir.name
    write_synth_catalog(tmp, n_tracks=args.tracks, duration_s=args.duration_s)
    blobs = []
    for path in sorted(glob.glob(f"{tmp}/track_*")):
        with open(path, "rb") as handle:
            blobs.append(handle.read())
    uri = os.path.join(tmp, "model")
    keras.utils.set_random_seed(0)
    config = musicrep.model.SF_NFNET_VARIANTS[args.config]
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), uri, config=config, source="benchmark")
    metadata = musicrep.model.read_metadata(uri)
    features = metadata.features
    window_frames, hop_frames = WindowSpec().frames(features)
    g = geometry(features)

    def cpu_inputs(blob: bytes) -> tuple[list[np.ndarray], float]:
        """Log-mel windows of one track as the CPU front end makes them."""
        blocks = TrackLogMel(blob, config=features)
        stream = WindowStream(window_frames=window_frames, hop_frames=hop_frames, min_frames=metadata.min_frames)
        chunks = [c for block in blocks for c in stream.push(block)]
        chunks += stream.finish()
        return [cut_windows(c.log_mel, c.starts, c.window_frames) for c in chunks], blocks.duration_s

    def device_inputs(blob: bytes) -> tuple[list[tuple], float]:
        """Audio windows of one track as the device front end's CPU side makes them."""
        source = TrackInput(blob, config=features)
        windower = AudioTrackWindower(config=features, window_frames=window_frames, hop_frames=hop_frames, min_frames=metadata.min_frames)
        chunks = [c for x in source for c in windower.push(x)]
        chunks += windower.finish()
        out = [(cut_audio_windows(c.audio, c.offsets, g.input_samples(c.window_frames)), c.positions, c.window_frames) for c in chunks]
        return out, source.duration_s

    def front_end_cost(make) -> tuple[float, list, float]:
        started = cpu_seconds()
        inputs, audio_s = [], 0.0
        # One BLAS thread, as the jobs' workers run the front end (StreamTrack.setup).
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            for blob in blobs:
                track_inputs, duration_s = make(blob)
                inputs += track_inputs
                audio_s += duration_s
        return cpu_seconds() - started, inputs, audio_s

    cpu_inputs(blobs[0]), device_inputs(blobs[0])  # imports and filter tables outside the timing
    cpu_front_s, cpu_windows, audio_s = front_end_cost(cpu_inputs)
    device_front_s, device_windows, _ = front_end_cost(device_inputs)

    # Batches of full windows only (the last partial batch of each track is dropped, alike).
    log_mel = np.concatenate([w for w in cpu_windows if w.shape[2] == window_frames])
    audio = np.concatenate([a for a, _, w in device_windows if w == window_frames])
    positions = np.concatenate([p for _, p, w in device_windows if w == window_frames])
    n = (min(log_mel.shape[0], audio.shape[0]) // args.batch_size) * args.batch_size
    if n == 0:
        sys.exit(f"benchmarks/device_frontend.py: fewer than --batch-size {args.batch_size} windows; add tracks")
    plain = load_embedder(uri, engine="tf", precision=args.precision)
    graph = load_audio_embedder(uri, precision=args.precision)

    def model_rate(call) -> float:
        call(0)  # trace outside the timing
        started = time.perf_counter()
        for begin in range(0, n, args.batch_size):
            call(begin)
        return n / (time.perf_counter() - started)

    b = args.batch_size
    plain_rate = model_rate(lambda i: plain(log_mel[i : i + b]))
    graph_rate = model_rate(lambda i: graph(audio[i : i + b], positions[i : i + b], window_frames))

    def end_to_end(make, embed_inputs) -> tuple[float, float, int]:
        started_wall, started_cpu, windows = time.perf_counter(), cpu_seconds(), 0
        for blob in blobs:
            for item in make(blob)[0]:
                windows += embed_inputs(item)
        return windows / (time.perf_counter() - started_wall), (cpu_seconds() - started_cpu) / audio_s, windows

    def full(batch: np.ndarray) -> np.ndarray:
        # Filled to the batch size with copies of its first row, as the jobs' handlers do:
        # one compiled shape, no retracing.
        return np.concatenate([batch, batch[np.zeros(b - batch.shape[0], np.int64)]])

    def embed_log_mel(windows: np.ndarray) -> int:
        for begin in range(0, windows.shape[0], b):
            plain(full(windows[begin : begin + b]))
        return windows.shape[0]

    def embed_audio(item) -> int:
        windows, pos, frames = item
        for begin in range(0, windows.shape[0], b):
            graph(full(windows[begin : begin + b]), full(pos[begin : begin + b]), frames)
        return windows.shape[0]

    cpu_e2e = end_to_end(cpu_inputs, embed_log_mel)
    device_e2e = end_to_end(device_inputs, embed_audio)
    result = {
        "benchmark": "device_frontend",
        "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu") if gpus else "cpu (--cpu: a check, not the GPU figure)",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": args.config,
        "precision": args.precision,
        "batch_size": b,
        "tracks": args.tracks,
        "audio_s": round(audio_s, 1),
        "windows_timed": n,
        "cpu": {
            "cpu_s_per_audio_s": round(cpu_front_s / audio_s, 5),
            "audio_s_per_cpu_s": round(audio_s / cpu_front_s, 1),
            "model_windows_per_s": round(plain_rate, 1),
            "end_to_end_windows_per_s": round(cpu_e2e[0], 1),
            "end_to_end_cpu_s_per_audio_s": round(cpu_e2e[1], 5),
        },
        "device_front_end": {
            "cpu_s_per_audio_s": round(device_front_s / audio_s, 5),
            "audio_s_per_cpu_s": round(audio_s / device_front_s, 1),
            "model_windows_per_s": round(graph_rate, 1),
            "end_to_end_windows_per_s": round(device_e2e[0], 1),
            "end_to_end_cpu_s_per_audio_s": round(device_e2e[1], 5),
            "input_floats_per_window": int(g.input_samples(window_frames)),
        },
        "cpu_side_speedup": round(cpu_front_s / device_front_s, 2),
    }
    workdir.cleanup()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
