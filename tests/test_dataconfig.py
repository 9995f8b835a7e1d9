"""musicrep.dataconfig: one dataclass read by argparse, mappings and code; the docs list every field."""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import subprocess
import sys

import pytest

from musicrep import dataconfig
from musicrep.dataconfig import nested, setting
from musicrep.errors import ConfigError

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = setting(0.5, above=0, maximum=1, help="a rate")
    names: tuple[str, ...] = setting((), help="repeatable")

    def __post_init__(self) -> None:
        dataconfig.check(self)


@dataclasses.dataclass(frozen=True)
class Outer:
    path: str = setting(flag="--out", help="where")
    count: int | None = setting(None, minimum=1, help="how many")
    mode: str = setting("a", choices=("a", "b"), help="which")
    fast: bool = setting(False, help="go fast")
    inner: Inner = nested(Inner, default_factory=lambda: Inner(rate=0.25))

    def __post_init__(self) -> None:
        dataconfig.check(self)


def parse(argv: list[str]) -> Outer:
    parser = argparse.ArgumentParser()
    dataconfig.add_arguments(parser, Outer)
    return dataconfig.from_arguments(Outer, parser.parse_args(argv))


def test_options_are_generated_from_the_fields_and_defaults_stay_in_the_dataclass():
    assert parse(["--out", "p"]) == Outer(path="p")
    config = parse(["--out", "p", "--count", "3", "--mode", "b", "--fast", "--rate", "1", "--names", "x", "--names", "y"])
    assert config == Outer(path="p", count=3, mode="b", fast=True, inner=Inner(rate=1.0, names=("x", "y")))
    assert parse(["--out", "p", "--rate", "0.1"]).inner == Inner(rate=0.1)  # the nested default (0.25) replaced
    assert parse(["--out", "p"]).inner.rate == 0.25  # the parent's default of the nested config


def test_mappings_are_flat_round_trip_and_refuse_unknown_keys():
    config = Outer(path="p", count=2, inner=Inner(names=("n",)))
    mapping = dataconfig.to_mapping(config)
    assert mapping == {"path": "p", "count": 2, "mode": "a", "fast": False, "rate": 0.5, "names": ["n"]}
    assert dataconfig.from_mapping(Outer, mapping) == config
    assert dataconfig.given(config) == {"path": "p", "count": 2, "rate": 0.5, "names": ["n"]}
    with pytest.raises(ConfigError, match=r"^job: unknown setting\(s\) \['cuont', 'speed'\]; known: \['count', "):
        dataconfig.from_mapping(Outer, {"path": "p", "cuont": 2, "speed": 1}, where="job")
    with pytest.raises(ConfigError, match=r"^job: missing required setting\(s\) path \(--out\)$"):
        dataconfig.from_mapping(Outer, {}, where="job")


@pytest.mark.parametrize("settings, message", [
    ({"count": 0}, "count must be ≥ 1, got 0"),
    ({"count": 2.5}, "count must be int or null, got 2.5"),
    ({"count": True}, "count must be int or null, got True"),
    ({"count": "two"}, "count must be int or null, got 'two'"),
    ({"mode": "c"}, "mode must be one of ['a', 'b'], got 'c'"),
    ({"fast": "yes"}, "fast must be bool, got 'yes'"),
    ({"rate": 0}, "rate must be > 0, got 0.0"),
    ({"rate": 2}, "rate must be ≤ 1, got 2.0"),
    ({"rate": float("nan")}, "rate must be a finite number, got nan"),
    ({"names": [1]}, "names must be list of str, got [1]"),
])
def test_bad_values_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError) as error:
        dataconfig.from_mapping(Outer, {"path": "p", **settings})
    assert str(error.value) == message


def test_text_is_read_as_the_command_line_reads_it():
    # PyYAML reads 1e-4 as a string; a single string for a list is one item.
    config = dataconfig.from_mapping(Outer, {"path": "p", "count": "4", "rate": "1e-1", "names": "k=v"})
    assert (config.count, config.inner.rate, config.inner.names) == (4, 0.1, ("k=v",))


def test_code_gets_the_same_checks():
    with pytest.raises(ConfigError, match="count must be ≥ 1, got -1"):
        Outer(path="p", count=-1)
    assert Inner(names=["a"]).names == ("a",)  # lists become tuples: frozen, hashable


def test_docs_list_every_setting_as_the_code_declares_it():
    from musicrep.model.training_config import TrainConfig
    from musicrep.probes.config import ProbeConfig

    text = DOC.read_text()
    for cls in (TrainConfig, ProbeConfig):
        table = dataconfig.markdown_table(cls)
        assert table in text, f"docs/configuration.md is out of date for {cls.__name__}; its table:\n{table}"
        for leaf in dataconfig.leaves(cls):
            assert f"| `{leaf.name}` |" in text


def test_importing_the_model_package_and_checking_pretrain_options_loads_no_tensorflow():
    code = ("import sys, musicrep.model\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "from musicrep.model.pretrain import build_parser\n"
            "build_parser().parse_args(['simclr', '--features', 'f', '--output', 'o', '--steps', '5'])\n"
            "import musicrep.model.training_config\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF loaded'\n"
            "import musicrep.model as mm\n"
            "assert mm.SF_NFNET_VARIANTS['tiny'].name == 'tiny' and 'keras' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
