"""The package's layers import one way (issue 19): read from the import graph of the source,
so a new upward import fails here, not in a reviewer's head."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Folder → package (setup.py's package_dir): core/ is the root package `musicrep`.
FOLDERS = {"core": "musicrep", "contracts": "musicrep.contracts", "features": "musicrep.features",
           "model": "musicrep.model", "store": "musicrep.store", "pipelines": "musicrep.pipelines",
           "probes": "musicrep.probes"}
# Bottom to top; a module may import its own layer and the ones below, never one above.
LAYERS = [
    ("base", ["musicrep.errors", "musicrep.fileio", "musicrep.manifest", "musicrep.labels",
              "musicrep.native_logging", "musicrep.flink_cluster", "musicrep.dataconfig", "musicrep.contracts"]),
    ("features", ["musicrep.features"]),
    ("model", ["musicrep.model"]),
    ("store", ["musicrep.store"]),
    ("pipelines", ["musicrep.pipelines"]),
    ("probes", ["musicrep.probes"]),
    ("commands", ["musicrep.cli", "musicrep.testing"]),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    if module == "musicrep":
        return 0
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(module: str, path: pathlib.Path) -> set[str]:
    """Every musicrep module `module` imports, at its top or inside a function."""
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from musicrep.x import y` imports musicrep.x.y when y is a module.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {name for name in found if name == "musicrep" or name.startswith("musicrep.")}


def test_every_module_has_a_layer():
    found = modules()
    assert {"musicrep.contracts.sidecar", "musicrep.pipelines.settings", "musicrep.store.runs"} <= set(found)
    assert all(0 <= layer_of(module) < len(LAYERS) for module in found)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, path in modules().items():
        for imported in imports_of(module, path):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")
    assert upward == []


def test_the_store_never_imports_the_pipelines():
    offenders = {m for m, p in modules().items() if m.startswith("musicrep.store")
                 and any(i.startswith("musicrep.pipelines") for i in imports_of(m, p))}
    assert offenders == set()


def test_the_check_sees_an_upward_import(tmp_path):
    # The graph reader itself: a contracts module importing a pipeline is caught.
    path = tmp_path / "bad.py"
    path.write_text("from musicrep.pipelines import commit\nimport musicrep.store.table\n")
    assert imports_of("musicrep.contracts.bad", path) == {"musicrep.pipelines.commit", "musicrep.store.table"}
    assert layer_of("musicrep.pipelines.commit") > layer_of("musicrep.contracts.bad")


@pytest.mark.parametrize(
    "module",
    ["musicrep.contracts.sidecar", "musicrep.contracts.schema", "musicrep.contracts.window_spec", "musicrep.model",
     "musicrep.pipelines.settings", "musicrep.probes.config", "musicrep.cli"],
)
def test_light_modules_import_neither_tensorflow_nor_beam(module):
    # What a launcher needs to validate its settings: no TensorFlow, Keras or Beam.
    code = (f"import sys, {module}; heavy = sorted(m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_features_jobs_workers_leave_decoding_to_their_front_end_process():
    # What a features worker loads: its DoFn, the segments, the shard writer. PyAV and
    # scipy load in the front-end process only (~0.4 CPU-s a worker, in every job's start-up).
    code = (
        "import sys\n"
        "from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG\n"
        "from musicrep.pipelines import features\n"
        "features.ComputeLogMel(DEFAULT_FEATURE_CONFIG)\n"
        "import musicrep.features\n"
        "print(','.join(sorted(m for m in ('av', 'soxr', 'scipy', 'librosa', 'tensorflow') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
