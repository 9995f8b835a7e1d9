"""Fixtures for the operations tests: a local GCS emulator that Beam's gs:// filesystem uses.

`gcs_emulator` (session scope) starts `gcp-storage-emulator` (PyPI, in the `test` extra) on
127.0.0.1 in a subprocess, points this process and every child process at it through
environment variables, and creates one bucket. Nothing leaves the loopback interface:

- ``STORAGE_EMULATOR_HOST`` sends google-cloud-storage (which Beam's gcsio uses) to the
  emulator.
- Beam asks ``google.auth.default()`` for credentials and, when there are none, retries with
  exponential backoff for about 40 s per process before going anonymous. To keep every
  process (pytest, Beam's multi-process workers, a Flink LOOPBACK harness) fast, the fixture
  writes a service-account credentials file (a throw-away RSA key) whose ``token_uri`` is
  a tiny token endpoint served on 127.0.0.1 by a thread of this process, and points
  ``GOOGLE_APPLICATION_CREDENTIALS`` at it (an ``authorized_user`` file would not do:
  google-auth always sends those to the real OAuth endpoint). ``NO_GCE_CHECK`` and a loopback
  ``GCE_METADATA_HOST`` make sure the metadata server is never probed.

TensorFlow's own GCS filesystem (``tf.io.gfile`` on gs://) has its endpoints compiled in
(``https://www.googleapis.com/storage/v1/``) and no emulator override, so it cannot be
tested here: code that must work on gs:// reads through Beam's FileSystems (see
docs/runners.md, "Running on Dataflow").
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

EMULATOR_START_TIMEOUT_S = 30.0
FAKE_GCS_MODULE = "github.com/fsouza/fake-gcs-server@v1.56.1"
_PROJECT = "musicrep-test"
_BUCKET = "musicrep-test-bucket"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _new_private_key_pem() -> str:
    """A throw-away RSA key: service-account credentials sign their token request with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    """Answers every OAuth2 refresh with a fixed bearer token (the emulator ignores it)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps(
            {"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclasses.dataclass
class GcsEmulator:
    """A running emulator: its endpoint, one bucket, and helpers for test set-up/checks."""

    endpoint: str
    bucket: str
    env: dict[str, str]
    data_dir: pathlib.Path

    def url(self, *parts: str) -> str:
        """`gs://<bucket>/<parts joined by '/'>`."""
        path = "/".join(part.strip("/") for part in parts if part)
        return f"gs://{self.bucket}/{path}" if path else f"gs://{self.bucket}/"

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=_PROJECT, credentials=AnonymousCredentials())

    def upload_file(self, local_path: str | os.PathLike, object_name: str) -> str:
        blob = self.client().bucket(self.bucket).blob(object_name.lstrip("/"))
        blob.upload_from_filename(os.fspath(local_path))
        return self.url(object_name)

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        """Uploads every file below `local_dir` to `prefix/<relative path>`; returns the URLs."""
        root = pathlib.Path(local_dir)
        urls = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            urls.append(self.upload_file(path, f"{prefix.strip('/')}/{path.relative_to(root).as_posix()}"))
        return urls

    def list(self, prefix: str = "") -> list[str]:
        """Sorted gs:// URLs of the objects whose names start with `prefix`."""
        blobs = self.client().list_blobs(self.bucket, prefix=prefix.lstrip("/") or None)
        return sorted(self.url(blob.name) for blob in blobs)

    def read_bytes(self, object_name: str) -> bytes:
        return self.client().bucket(self.bucket).blob(object_name.lstrip("/")).download_as_bytes()

    def download(self, prefix: str, local_dir: str | os.PathLike) -> list[pathlib.Path]:
        """Copies the objects under `prefix` into `local_dir`, keeping their relative names."""
        root = pathlib.Path(local_dir)
        stripped = prefix.strip("/")
        written = []
        for blob in self.client().list_blobs(self.bucket, prefix=stripped or None):
            relative = blob.name[len(stripped):].lstrip("/") if stripped else blob.name
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(os.fspath(target))
            written.append(target)
        return sorted(written)


def _wait_until_serving(endpoint: str, process: subprocess.Popen, log_path: pathlib.Path) -> None:
    deadline = time.monotonic() + EMULATOR_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"gcp-storage-emulator exited with {process.returncode}: {log_path.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b?project={_PROJECT}", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator not serving after {EMULATOR_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory):
    """A GCS emulator on 127.0.0.1 with bucket `.bucket`, seen by this and child processes."""
    executable = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    if executable is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    work = tmp_path_factory.mktemp("gcs_emulator")
    port = _free_loopback_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = work / "emulator.log"
    data_dir = work / "data"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [executable, "--data-dir", os.fspath(data_dir), "start", "--host", "127.0.0.1",
             "--port", str(port), "--quiet"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    token_thread = threading.Thread(target=token_server.serve_forever, daemon=True)
    token_thread.start()
    credentials_path = work / "application_default_credentials.json"
    credentials_path.write_text(json.dumps({
        "type": "service_account",
        "project_id": _PROJECT,
        "private_key_id": "musicrep-test",
        "private_key": _new_private_key_pem(),
        "client_email": f"tests@{_PROJECT}.iam.gserviceaccount.com",
        "client_id": "0",
        "token_uri": f"http://127.0.0.1:{token_server.server_address[1]}/token",
    }))
    (work / "gcloud").mkdir()
    env = {
        "STORAGE_EMULATOR_HOST": endpoint,
        "GOOGLE_APPLICATION_CREDENTIALS": os.fspath(credentials_path),
        "GOOGLE_CLOUD_PROJECT": _PROJECT,
        "CLOUDSDK_CONFIG": os.fspath(work / "gcloud"),
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
    }
    try:
        _wait_until_serving(endpoint, process, log_path)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)  # os.environ: inherited by every child process
            emulator = GcsEmulator(endpoint=endpoint, bucket=_BUCKET, env=env, data_dir=data_dir)
            emulator.client().create_bucket(_BUCKET)
            yield emulator
    finally:
        token_server.shutdown()
        token_server.server_close()
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()


def _fake_gcs_binary() -> str:
    gopath = os.environ.get("GOPATH") or os.path.expanduser("~/go")
    path = os.path.join(os.environ.get("GOBIN") or os.path.join(gopath, "bin"), "fake-gcs-server")
    if os.access(path, os.X_OK):
        return path
    if not shutil.which("go"):
        pytest.skip("no fake-gcs-server and no `go` to build it")
    build = subprocess.run(["go", "install", FAKE_GCS_MODULE], capture_output=True, text=True, timeout=900, check=False)
    if build.returncode != 0:
        pytest.fail(f"`go install {FAKE_GCS_MODULE}` failed:\n{build.stderr[-2000:]}")
    return path


@pytest.fixture(scope="module")
def fake_gcs(gcs_emulator, tmp_path_factory):
    """fake-gcs-server with bucket FAKE_GCS_BUCKET and the XML shim delta-rs needs
    (tests/gcs_xml_shim.py); Beam's and google-cloud-storage's gs:// go to it while the
    fixture lasts (`gcs_emulator` for the credentials, which this server ignores)."""
    from apache_beam.io.gcp import gcsio

    from gcs_xml_shim import FAKE_GCS_BUCKET, delete_one_by_one, start_fake_gcs

    fake = start_fake_gcs(_fake_gcs_binary(), str(tmp_path_factory.mktemp("fake_gcs")), [FAKE_GCS_BUCKET])
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
            patch.setattr(gcsio.GcsIO, "delete_batch", delete_one_by_one)
            yield fake
    finally:
        fake.stop()
