"""Window placement of SPEC §4, checked against the reference's own rule written out."""
import numpy as np
import pytest

from musicrep.errors import ConfigError, TooShortError
from musicrep.contracts.window_spec import WindowSpec
from musicrep.features.windows import cut_windows, window_starts


def reference_starts(n_frames: int, window: int, hop: int) -> list[int]:
    # The reference's slice extractor: centres hop, 2·hop, … below n_frames, clamped to
    # [w/2, n_frames − w/2], window [c − w/2, c + w/2) (without its 8000-frame skip).
    half = window // 2
    centres = [min(max(c, half), n_frames - half) for c in range(hop, n_frames, hop)]
    return [c - half for c in centres]


@pytest.mark.parametrize("n_frames", [300, 301, 455, 601, 1000, 2401, 18001])
def test_default_placement_equals_the_reference_rule(n_frames):
    starts, length = window_starts(n_frames, window_frames=300, hop_frames=200)
    assert length == 300
    assert starts.tolist() == reference_starts(n_frames, 300, 200)
    assert starts.min() >= 0 and starts.max() + 300 <= n_frames


def test_six_second_track_gives_three_windows():
    starts, _ = window_starts(601, window_frames=300, hop_frames=200)
    assert starts.tolist() == [50, 250, 301]


def test_nsynth_settings():
    four_second_clip = 401
    starts, length = window_starts(four_second_clip, window_frames=100, hop_frames=100, max_windows=4)
    assert length == 100 and starts.tolist() == [50, 150, 250, 301]
    starts, length = window_starts(four_second_clip, window_frames=400, hop_frames=200, max_windows=1)
    assert length == 400 and starts.tolist() == [0]


def test_short_track_is_one_window_of_its_length_and_too_short_raises():
    starts, length = window_starts(120, window_frames=300, hop_frames=200, min_frames=16)
    assert starts.tolist() == [0] and length == 120
    with pytest.raises(TooShortError, match="15 frames is shorter than the network's minimum of 16"):
        window_starts(15, window_frames=300, hop_frames=200, min_frames=16)
    with pytest.raises(ConfigError, match="max_windows must be >= 1, got 0"):
        window_starts(1000, window_frames=300, hop_frames=200, max_windows=0)


def test_cut_windows_is_frequency_first_slicing(rng):
    log_mel = rng.standard_normal((700, 96)).astype(np.float32)
    starts = np.array([0, 250, 400])
    windows = cut_windows(log_mel, starts, 300)
    assert windows.shape == (3, 96, 300) and windows.dtype == np.float32
    for window, start in zip(windows, starts):
        np.testing.assert_array_equal(window, log_mel[start : start + 300].T)
    # float16 shards are widened; `out` is filled in place.
    out = np.full((3, 96, 300), np.nan, np.float32)
    assert cut_windows(log_mel.astype(np.float16), starts, 300, out=out) is out
    np.testing.assert_array_equal(out, windows.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"hop_s": 0.004}, "at least one frame"),
        ({"window_s": 0.001}, "at least one frame"),
        ({"hop_s": 0.0}, "must be finite numbers > 0"),
        ({"hop_s": float("inf")}, "must be finite numbers > 0 s, got window 3.0 s, hop inf s"),
        ({"window_s": float("nan")}, "must be finite numbers > 0"),
        ({"max_duration_s": float("inf")}, "max duration must be a finite number > 0"),
        ({"max_windows": 0}, "max windows must be >= 1"),
        ({"aggregate": "median"}, "aggregate must be one of"),
    ],
)
def test_window_spec_refuses_settings_that_give_no_windows(settings, match):
    with pytest.raises(ConfigError, match=match):
        WindowSpec(**settings).frames()


def test_window_spec_frames_follow_the_front_end():
    from musicrep.contracts.feature_config import FeatureConfig

    assert WindowSpec().frames() == (300, 200)
    assert WindowSpec(window_s=1.0, hop_s=1.0).frames(FeatureConfig(hop_samples=320)) == (50, 50)


def test_window_spec_pools_by_its_aggregate(rng):
    windows = rng.normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_array_equal(WindowSpec(aggregate="max").pool(windows), windows.max(axis=0))
    np.testing.assert_allclose(WindowSpec().pool(windows), windows.mean(axis=0), rtol=1e-6)


def test_window_spec_key_is_the_frame_grid_not_the_spelling():
    assert WindowSpec(hop_s=2.0).key() == WindowSpec(hop_s=2.001).key()
    keys = {WindowSpec().key(), WindowSpec(hop_s=1.0).key(), WindowSpec(max_windows=4).key(), WindowSpec(aggregate="max").key()}
    assert len(keys) == 4
