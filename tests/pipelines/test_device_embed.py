"""`--log-mel-on device` in the jobs: embed --audio and reembed with the front end in the
graph give the CPU front end's rows (≤ 1e-4), record it in window_spec, and refuse the
settings it cannot run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from deltalake import DeltaTable

from audio_files import tone, write_audio
from job_outputs import read_dead_letters, read_embeddings
from musicrep.cli import main
from musicrep.pipelines import embed as embed_job
from musicrep.pipelines import reembed

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Stereo mp3 at 44.1 kHz, mono flac at 22.05 kHz (FFmpeg converts to 44.1 kHz first),
    a track shorter than one window, and a file that is not audio."""
    root = tmp_path_factory.mktemp("catalog")
    rng = np.random.default_rng(11)
    left = tone(330, 13.4, 44100, amplitude=0.3)
    stereo = np.stack([left, 0.2 * rng.standard_normal(left.size)], axis=1)
    write_audio(str(root / "stereo.mp3"), stereo.astype(np.float32), 44100)
    mono = tone(523.25, 8.2, 22050)
    write_audio(str(root / "mono.flac"), mono + 0.05 * rng.standard_normal(mono.size).astype(np.float32), 22050)
    write_audio(str(root / "short.flac"), tone(220, 1.3, 22050), 22050)
    (root / "broken.flac").write_bytes(b"not audio at all")
    return root


def run_embed(model_uri: str, catalog, out, *extra: str) -> None:
    embed_job.run(["--audio", f"{catalog}/*", "--model", model_uri, "--output", str(out), "--batch-size", "4",
                   *extra, *IN_MEMORY])


@pytest.mark.parametrize("extra", [[], ["--max-duration-s", "5.5"], ["--hop-s", "1.0", "--max-windows", "3"]])
def test_device_rows_equal_cpu_rows(tiny_model_uri, catalog, tmp_path, extra):
    run_embed(tiny_model_uri, catalog, tmp_path / "cpu", *extra)
    run_embed(tiny_model_uri, catalog, tmp_path / "device", "--log-mel-on", "device", *extra)
    cpu, device = read_embeddings(str(tmp_path / "cpu")), read_embeddings(str(tmp_path / "device"))
    assert list(device.index) == list(cpu.index) == ["mono", "short", "stereo"]
    for column in ("n_windows", "window_s", "hop_s", "duration_s", "content_sha256"):
        assert list(device[column]) == list(cpu[column]), column
    assert set(device["engine"]) == {"tf"}  # auto picks tf for the device front end
    error = np.abs(np.stack(device["embedding"]) - np.stack(cpu["embedding"])).max()
    print(f"{extra}: max |Δ track embedding| device vs cpu {error:.2e}")
    assert error <= 1e-4
    for spec_cpu, spec_device in zip(cpu["window_spec"], device["window_spec"]):
        assert json.loads(spec_device) == {**json.loads(spec_cpu), "log_mel_on": "device"}
        assert "log_mel_on" not in json.loads(spec_cpu)  # rows of the CPU front end keep their key
    (letter,) = read_dead_letters(str(tmp_path / "device"))
    assert (letter["track_id"], letter["stage"]) == ("broken", "decode")


def test_settings_the_device_front_end_cannot_run_are_usage_errors(tiny_model_uri, catalog, tmp_path, capsys):
    base = ["embed", "--model", tiny_model_uri, "--output", str(tmp_path / "out"), "--log-mel-on", "device", *IN_MEMORY]
    assert main([*base, "--audio", f"{catalog}/*", "--engine", "openvino"]) == 2
    assert "--log-mel-on device runs the front end as TensorFlow ops: use --engine tf (or auto)" in capsys.readouterr().err
    assert main([*base, "--features", str(tmp_path)]) == 2
    assert "--log-mel-on device needs --audio" in capsys.readouterr().err


def test_reembed_records_the_device_front_end_and_recomputes_on_a_switch(tiny_model_uri, catalog, tmp_path):
    store = str(tmp_path / "store")
    args = ["--catalog", f"{catalog}/*.flac", "--model", tiny_model_uri, "--store", store, "--engine", "tf", *IN_MEMORY]
    reembed.run(args)
    reembed.run([*args, "--log-mel-on", "device"])  # another front end: every track is stale
    rows = DeltaTable(store).to_pandas().set_index("track_id").sort_index()
    assert list(rows.index) == ["mono", "short"]
    assert all(json.loads(spec)["log_mel_on"] == "device" for spec in rows["window_spec"])
    assert DeltaTable(store).version() == 2


def test_batch_size_of_audio_windows_is_counted_from_their_arrays():
    from musicrep.pipelines.device_embed import AudioTrackWindows, DeviceFrontEndHandler

    chunk = AudioTrackWindows("t", "t.flac", "", "", np.zeros(48000, np.float32), np.array([0, 16000]),
                              np.zeros((2, 300), np.int64), np.array([0, 200]), 300)
    assert DeviceFrontEndHandler("unused").get_num_bytes([chunk, chunk]) == 2 * (48000 * 4 + 2 * 8 + 2 * 300 * 8 + 2 * 8)


def test_device_handler_batches_windows_across_tracks_and_returns_them_per_track():
    from musicrep.features.audio_windows import geometry
    from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
    from musicrep.pipelines.device_embed import AudioModel, AudioTrackWindows, DeviceFrontEndHandler

    g, calls = geometry(DEFAULT_FEATURE_CONFIG), []

    def embedder(audio, positions, window_frames):
        # A window's "embedding": its first sample, its sum and its first position.
        calls.append((audio.shape, window_frames))
        return np.stack([audio[:, 0], audio.sum(axis=1), positions[:, 0]], axis=1).astype(np.float32)

    rng = np.random.default_rng(3)

    def chunk(track_id: str, offsets: list[int], window_frames: int) -> AudioTrackWindows:
        size = g.input_samples(window_frames)
        audio = rng.standard_normal(max(offsets) + size).astype(np.float32)
        positions = rng.integers(0, 1000, (len(offsets), window_frames))
        return AudioTrackWindows(track_id, track_id, "", "", audio, np.array(offsets), positions,
                                 np.arange(len(offsets)) * 200, window_frames)

    batch = [chunk("x", [0, 700, 1400], 300), chunk("short", [0], 120), chunk("y", [5, 900], 300)]
    model = AudioModel(embedder=embedder, batch_size=4, geometry=g)
    results = list(DeviceFrontEndHandler("unused").run_inference(batch, model))
    # Windows of x and y share batches of 4 (the last padded), the short track its own.
    assert calls == [((4, g.input_samples(300)), 300), ((4, g.input_samples(300)), 300), ((4, g.input_samples(120)), 120)]
    for element, result in zip(batch, results):
        size = g.input_samples(element.window_frames)
        windows = np.stack([element.audio[o : o + size] for o in element.offsets])
        expected = np.stack([windows[:, 0], windows.sum(axis=1), element.positions[:, 0]], axis=1).astype(np.float32)
        assert result.example is element
        np.testing.assert_allclose(result.inference, expected, rtol=1e-6)
