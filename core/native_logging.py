"""Quiets TensorFlow's and absl's C++ start-up lines unless the user asked for them.

What a CPU-only host prints on `import tensorflow` (measured with TF 2.21): `I0000 …
cudart_stub.cc] Could not find cuda drivers` twice, `cpu_feature_guard` notices, absl's
"All log messages before absl::InitializeLog()" banner, and at the first op `E0000 …
failed call to cuInit` (an error line, although nothing is wrong). Only the last obeys
TF_CPP_MIN_LOG_LEVEL, and only at 3, which would hide real errors; the others are written
by static initialisers before TensorFlow reads that variable, so no setting hides them.
They are filtered instead: the first `import tensorflow` of the process, and its listing
of the physical devices (where cuInit runs; it changes no device setting), run with file
descriptor 2 captured, and everything but those start-up lines is written back.

`quiet()` runs when the `musicrep` package is imported, so every process that touches our
code is covered before it can import TensorFlow: the launcher, and each Beam worker,
which imports the package when it unpickles our DoFns. `musicrep --verbose` or
MUSICREP_VERBOSE=1 keeps everything; an explicit TF_CPP_MIN_LOG_LEVEL is respected.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator

VERBOSE_ENV = "MUSICREP_VERBOSE"
# absl's INFO/WARNING line prefix (`I0000 00:00:1796050064.032399   12013 file.cc:31] `)
# and the two unprefixed start-up notices; error lines other than cuInit stay.
_START_UP_NOISE = re.compile(
    r"^[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\]"
    r"|^E\d{4} .*cuInit"
    r"|^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_start_up_noise(line: str) -> bool:
    return bool(_START_UP_NOISE.search(line))


def set_verbose() -> None:
    """Keep every native log line in this process and its children (call before TF loads)."""
    os.environ[VERBOSE_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _FilterTensorFlowImport)]


def quiet() -> None:
    if is_verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _FilterTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FilterTensorFlowImport())


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter (a daemon with fd 2 closed)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not is_start_up_noise(line))
            if kept:
                os.write(2, kept.encode())


class _FilterTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the loading of the top-level `tensorflow` package in `_filtered_stderr` (once)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 (importlib's signature)
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            with _filtered_stderr():
                execute(module)
                module.config.list_physical_devices()

        spec.loader.exec_module = exec_module
        return spec
