"""docker/Dockerfile, checked without a Docker engine: it parses, its base is Beam's SDK image
of the pinned Beam/Python, its entrypoint is Beam's boot, and what it pip-installs is exactly
setup.py's INSTALL_REQUIRES (TensorFlow with its CUDA extra)."""
from __future__ import annotations

import ast
import json
import pathlib
import shlex
import sys

import pytest
from packaging.requirements import Requirement

dockerfile_parse = pytest.importorskip("dockerfile_parse")

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BOOT = "/opt/apache/beam/boot"


def _setup_py_constants() -> dict[str, object]:
    """Module-level assignments of setup.py, read with `ast` (running it calls setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def _setup_call_keywords() -> dict[str, ast.expr]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setup":
            return {keyword.arg: keyword.value for keyword in node.keywords}
    raise AssertionError("setup.py has no setuptools.setup(...) call")


def _stages() -> dict[str, list[dict]]:
    """Instructions per build stage, keyed by the stage's `AS` name."""
    parser = dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))
    stages: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {instruction['value']!r}"
            current = stages.setdefault(words[2], [])
        if current is not None:
            current.append(instruction)
    return stages


def _base(stage: list[dict]) -> str:
    return stage[0]["value"].split()[0]


def _last(stage: list[dict], name: str) -> str | None:
    values = [i["value"] for i in stage if i["instruction"] == name]
    return values[-1] if values else None


def _pip_install_requirements(stage: list[dict]) -> list[str]:
    """Requirement strings of `pip install` commands in RUN lines (options and `.` left out)."""
    requirements = []
    for instruction in stage:
        if instruction["instruction"] != "RUN":
            continue
        for command in instruction["value"].split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            requirements += [w for w in words[2:] if not w.startswith("-") and w != "."]
    return requirements


def test_dockerfile_parses_into_named_stages():
    stages = _stages()
    assert set(stages) == {"worker", "flink-dist", "flink-taskmanager"}


def test_worker_is_beams_sdk_image_for_the_pinned_versions():
    install_requires = [Requirement(r) for r in _setup_py_constants()["INSTALL_REQUIRES"]]
    (beam,) = [r for r in install_requires if r.name == "apache-beam"]
    (beam_version,) = [spec.version for spec in beam.specifier if spec.operator == "=="]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python == "3.11", "the image's Python must be the one the tests run on"
    assert _base(_stages()["worker"]) == f"apache/beam_python{python}_sdk:{beam_version}"


def test_worker_entrypoint_is_beams_boot():
    stages = _stages()
    assert json.loads(_last(stages["worker"], "ENTRYPOINT")) == [BOOT]
    # The Flink TaskManager image inherits the boot binary for --environment_type=PROCESS.
    assert _base(stages["flink-taskmanager"]) == "worker"


def test_pip_set_equals_setup_py_install_requires():
    expected = {}
    for line in _setup_py_constants()["INSTALL_REQUIRES"]:
        requirement = Requirement(line)
        expected[requirement.name] = (requirement.extras, requirement.specifier)
    installed = {}
    for line in _pip_install_requirements(_stages()["worker"]):
        requirement = Requirement(line)
        assert requirement.name not in installed, f"{requirement.name} installed twice"
        installed[requirement.name] = (requirement.extras, requirement.specifier)
    assert set(installed) == set(expected)
    for name, (extras, specifier) in installed.items():
        assert specifier == expected[name][1], f"{name}: Dockerfile {specifier} != setup.py {expected[name][1]}"
        wanted_extras = expected[name][0] | ({"and-cuda"} if name == "tensorflow" else set())
        assert extras == wanted_extras, name


def test_worker_installs_this_package_without_dependencies():
    worker = _stages()["worker"]
    runs = " ".join(i["value"] for i in worker if i["instruction"] == "RUN")
    assert "pip install --no-deps ." in runs
    copied = {i["value"].split()[0] for i in worker if i["instruction"] == "COPY"}
    # package_dir = {"musicrep": "core", **{f"musicrep.{name}": name for name in SUBPACKAGES}}
    package_dir = _setup_call_keywords()["package_dir"]
    folders = {value.value for key, value in zip(package_dir.keys, package_dir.values)
               if key is not None and isinstance(value, ast.Constant)}
    folders |= set(_setup_py_constants()["SUBPACKAGES"])
    assert "core" in folders
    assert folders | {"setup.py"} <= copied, f"not copied: {folders - copied}"
    # The build context ignores everything but what it lets in again: every package folder.
    allowed = {line[1:].split("/")[0] for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert folders | {"setup.py"} <= allowed, f"not in the build context: {folders - allowed}"


def test_model_can_be_baked_in():
    worker = _stages()["worker"]
    assert any(i["instruction"] == "ARG" and i["value"].startswith("MODEL_URI=") for i in worker)
    fetch = [i["value"] for i in worker if i["instruction"] == "RUN" and "fetch_model.py" in i["value"]]
    assert fetch and '"$MODEL_URI" /opt/musicrep/model' in fetch[0]
    assert (ROOT / "docker" / "fetch_model.py").is_file()
