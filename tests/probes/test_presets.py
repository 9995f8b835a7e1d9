"""Table 2 presets and the tuning grid."""
import pytest

from musicrep.errors import ConfigError
from musicrep.probes.presets import DEFAULT_GRID, PRESETS, get_preset, parse_grid

# SPEC.md §5, Table 2: dataset -> (task, labels, layers, dropout, batch).
TABLE_2 = {
    "MSDS": ("multilabel", 50, "2×1024", 0.5, 256),
    "MSD50": ("multilabel", 50, "1×512", 0.5, 256),
    "MSD100": ("multilabel", 100, "2×2048", 0.5, 256),
    "MSD500": ("multilabel", 500, "3×4096", 0.5, 256),
    "AMM": ("multilabel", 188, "1×1024", 0.5, 256),
    "MuMu": ("multilabel", 250, "linear", 0.3, 256),
    "MTT": ("multilabel", 50, "1×512", 0.5, 256),
    "NSynth_P": ("multiclass", 112, "linear", 0.0, 64),
    "NSynth_I": ("multiclass", 11, "linear", 0.0, 64),
    "GTZAN": ("multiclass", 10, "linear", 0.0, 2560),
    "Emo": ("regression", 2, "1×1024", 0.5, 512),
    "GS_Key": ("key", 24, "1×512", 0.8, 512),
    "Jam-50": ("multilabel", 50, "1×512", 0.75, 256),
    "Jam-All": ("multilabel", 183, "2×1024", 0.5, 256),
    "Jam-MT": ("multilabel", 56, "1×512", 0.75, 256),
}


def test_presets_are_table_2():
    assert set(PRESETS) == set(TABLE_2)
    for name, row in TABLE_2.items():
        preset = PRESETS[name]
        assert (preset.task, preset.n_labels, preset.layers_label, preset.dropout,
                preset.batch_size) == row, name
        assert preset.warmup_steps == (5000 if name.startswith("NSynth") else 1000)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown probe preset 'mtt'.*'MTT'"):
        get_preset("mtt")


def test_parse_grid():
    grid = parse_grid("lr=1e-4,5e-4,steps=20000,l2=0:1e-5")
    assert grid.learning_rates == (1e-4, 5e-4)
    assert grid.steps == (20000,)
    assert grid.l2s == (0.0, 1e-5)
    assert len(grid.points()) == 4
    assert parse_grid("steps=2e4").learning_rates == DEFAULT_GRID.learning_rates
    assert parse_grid("") == DEFAULT_GRID


@pytest.mark.parametrize("text", ["lr=", "rate=1e-4", "steps=-5", "lr=fast"])
def test_parse_grid_refuses(text):
    with pytest.raises(ConfigError, match="grid item"):
        parse_grid(text)
