"""bf16 against fp32: per-track embeddings of synthetic music, per engine.

The contract (issue 13): every track's bf16 embedding has cosine ≥ 0.999 with its fp32
embedding; max |Δ| is printed. Engine tf computes bf16 on any CPU (emulated where the CPU
lacks bf16 units, so the hardware check is patched out: the numbers are the same bf16
roundings); OpenVINO silently computes float32 on such CPUs, so its bf16 case runs only
where the CPU has AMX or AVX-512 BF16.

Track embeddings are the mean of the track's windows, cut as the embed job cuts them.
"""
import numpy as np
import pytest

from musicrep.features import decode, log_mel
from musicrep.features.windows import cut_windows, window_starts
from musicrep.model import engines
from musicrep.model.export import save
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet
from musicrep.testing import encode_audio, plan_catalog, render_track

MIN_COSINE = 0.999


def synthetic_tracks(n_tracks: int, duration_s: float) -> list[np.ndarray]:
    """Windows [n, 96, 300] of each track of a small synthetic catalog (wav → 16 kHz → log-mel)."""
    tracks = []
    for spec in plan_catalog(n_tracks=n_tracks, seed=3):
        audio = encode_audio(render_track(spec, duration_s=duration_s), sample_rate_hz=spec.sample_rate_hz, audio_format="wav")
        features = log_mel(decode(audio))
        starts, length = window_starts(features.shape[0], window_frames=300, hop_frames=200, min_frames=16)
        tracks.append(cut_windows(features, starts, length))
    return tracks


def bf16_engines() -> list:
    return [
        "tf",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(not engines.cpu_has_bf16(), reason="OpenVINO computes float32 without bf16 units"),
        ),
    ]


def compare_track_embeddings(uri: str, engine: str, tracks: list[np.ndarray], monkeypatch) -> tuple[float, float]:
    """(min track cosine, max |Δ|) of bf16 against fp32 of the same engine."""
    fp32 = engines.load_embedder(uri, engine=engine, precision="fp32")
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    bf16 = engines.load_embedder(uri, engine=engine, precision="bf16")
    a = np.stack([fp32(windows).mean(axis=0) for windows in tracks]).astype(np.float64)
    b = np.stack([bf16(windows).mean(axis=0) for windows in tracks]).astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.any(a != b)  # bf16 really ran
    print(f"{engine}: bf16 vs fp32 over {len(tracks)} tracks: min cosine {cosine.min():.6f}, max |Δ| {np.abs(a - b).max():.2e}")
    return float(cosine.min()), float(np.abs(a - b).max())


@pytest.mark.parametrize("engine", bf16_engines())
def test_tiny_bf16_track_embeddings_match_fp32(tiny_model, tmp_path, monkeypatch, engine):
    uri = str(tmp_path / "tiny")
    save(tiny_model, uri, config=SF_NFNET_VARIANTS["tiny"], source="test")
    min_cosine, _ = compare_track_embeddings(uri, engine, synthetic_tracks(6, 8.0), monkeypatch)
    assert min_cosine >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("engine", bf16_engines())
def test_f0_bf16_track_embeddings_match_fp32(f0_model, tmp_path, monkeypatch, engine):
    """F0 at initialisation would hide the residual branches (skip gains 0): set them."""
    model = build_sf_nfnet("F0")
    model.set_weights(f0_model.get_weights())
    for layer in model.layers:
        if layer.name.endswith("_skip_gain"):
            layer.gain.assign(0.5)
    uri = str(tmp_path / "f0")
    save(model, uri, config=SF_NFNET_VARIANTS["F0"], source="test")
    tracks = [windows[:2] for windows in synthetic_tracks(3, 6.0)]  # 6 windows of F0 in all
    min_cosine, _ = compare_track_embeddings(uri, engine, tracks, monkeypatch)
    assert min_cosine >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("engine", bf16_engines())
def test_imported_reference_weights_bf16_match_fp32(tmp_path, monkeypatch, engine):
    """The reference backbone (built by the oracle, perturbed weights) after import-mule."""
    from mule_reference import reference_model
    from musicrep.model import cli

    uri = str(tmp_path / "mule")
    result = cli.run(["import-mule", str(reference_model(seed=7).keras_file), "--output", uri])
    assert (result.export_dir, result.metadata.config["name"]) == (uri, "F0")
    tracks = [windows[:2] for windows in synthetic_tracks(3, 6.0)]
    min_cosine, _ = compare_track_embeddings(uri, engine, tracks, monkeypatch)
    assert min_cosine >= MIN_COSINE


@pytest.mark.slow
def test_probe_scores_are_unchanged_in_bf16(tiny_model, tmp_path, monkeypatch):
    """The instrument probe of the synthetic catalog, on embeddings of the embed job in
    fp32 and in bf16 (engine auto: OpenVINO bf16 on a CPU, tf on a GPU): the bf16 test accuracy lies inside the fp32 run's 95 %
    bootstrap interval."""
    import json

    from musicrep import cli
    from musicrep.testing import write_synth_catalog

    catalog = tmp_path / "catalog"
    write_synth_catalog(str(catalog), n_tracks=64, duration_s=6.0)
    uri = str(tmp_path / "tiny")
    save(tiny_model, uri, config=SF_NFNET_VARIANTS["tiny"], source="test")
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert cli.main(["embed", "--audio", f"{catalog}/track_*", "--model", uri, "--output", str(out / "emb"),
                         "--precision", precision, "--direct_running_mode", "in_memory", "--direct_num_workers", "1"]) == 0
        assert cli.main(["probe", "--embeddings", f"{out}/emb/embeddings-*.parquet", "--labels", str(catalog / "labels.csv"),
                         "--task", "multiclass", "--label-column", "instrument", "--grid", "lr=5e-4,steps=1000,l2=0", "--warmup-steps", "100",
                         "--output", str(out / "probe")]) == 0
        scores[precision] = json.loads((out / "probe" / "report.json").read_text())["metrics"]["accuracy"]
    print(f"instrument accuracy: fp32 {scores['fp32']['mean']:.3f} {scores['fp32']['ci95']}, bf16 {scores['bf16']['mean']:.3f}")
    low, high = scores["fp32"]["ci95"]
    assert low <= scores["bf16"]["mean"] <= high
