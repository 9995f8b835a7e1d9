"""Front-end throughput, printed as one JSON object.

    python benchmarks/features.py [--tracks 24] [--duration-s 30] [--copies 8]

1. log_mel against librosa's melspectrogram (the SPEC §1 call) on the same 16 kHz audio
   (target ≥ 2×).
2. The features job (embedded runner, one worker per core) against a bare loop of
   decode + log_mel over the same files in one process (both with one BLAS thread), in audio-seconds per second
   (target ≥ 0.8×). The job's figure includes worker start-up, shard writing and gzip.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

import numpy as np
import threadpoolctl

from musicrep.features import decode, log_mel
from musicrep.pipelines import features as features_job
from musicrep.testing import write_synth_catalog


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def log_mel_vs_librosa(seconds: float = 120.0, repeats: int = 5) -> dict:
    import librosa

    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)

    def reference():
        mel = librosa.feature.melspectrogram(
            y=waveform, sr=16000, n_fft=2048, win_length=400, hop_length=160, window="hann",
            center=True, pad_mode="reflect", power=2.0, n_mels=96, fmin=0.0, fmax=8000.0, htk=True, norm=2.0,
        )
        return np.log10(1 + 10000 * mel)

    ours_s, librosa_s = _best_of(lambda: log_mel(waveform), repeats), _best_of(reference, repeats)
    return {
        "audio_s": seconds,
        "log_mel_s": round(ours_s, 4),
        "librosa_s": round(librosa_s, 4),
        "log_mel_x_realtime": round(seconds / ours_s, 1),
        "speedup_vs_librosa": round(librosa_s / ours_s, 2),
        "target_speedup": 2.0,
    }


def job_vs_bare_loop(tracks: int, duration_s: float, copies: int, repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="musicrep-bench-") as tmp:
        catalog = os.path.join(tmp, "catalog")
        write_synth_catalog(catalog, n_tracks=tracks, duration_s=duration_s)
        # Copies under other names: a catalog large enough that the job's fixed start-up
        # (worker processes, imports) does not dominate, without synthesising it all.
        for path in glob.glob(f"{catalog}/track_*"):
            stem, extension = os.path.splitext(path)
            for copy in range(1, copies):
                os.link(path, f"{stem}_copy{copy}{extension}")
        files = sorted(glob.glob(f"{catalog}/track_*"))

        def bare_loop() -> float:
            total = 0.0
            for path in files:
                with open(path, "rb") as handle:
                    waveform = decode(handle)
                log_mel(waveform)
                total += waveform.shape[0] / 16000
            return total

        def job() -> None:
            features_job.run(["--input", f"{catalog}/track_*", "--output", os.path.join(tmp, "features")])

        audio_s = bare_loop()
        # Best of `repeats` for both, so neither pays alone for cold page caches.
        bare_s = _best_of(bare_loop, repeats)
        job_s = _best_of(job, repeats)
    return {
        "tracks": len(files),
        "audio_s": round(audio_s, 1),
        "bare_loop_s": round(bare_s, 2),
        "bare_loop_audio_s_per_s": round(audio_s / bare_s, 1),
        "job_s": round(job_s, 2),
        "job_audio_s_per_s": round(audio_s / job_s, 1),
        "job_vs_bare_loop": round(bare_s / job_s, 2),
        "target_job_vs_bare_loop": 0.8,
        "job_workers": os.cpu_count(),
    }


def main() -> None:
    # One BLAS thread, as the job's workers use (one worker per core); librosa gets the same.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--copies", type=int, default=8, help="each track appears this many times")
    args = parser.parse_args()
    result = {
        "benchmark": "features",
        "cpu_count": os.cpu_count(),
        "log_mel": log_mel_vs_librosa(),
        "job": job_vs_bare_loop(args.tracks, args.duration_s, args.copies),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
