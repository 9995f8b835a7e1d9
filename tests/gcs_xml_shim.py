"""fake-gcs-server for Delta on gs:// (tests/ops/test_gcs_delta_store.py, benchmarks/store.py).

`start_fake_gcs` runs fake-gcs-server and, in front of it, a small HTTP shim that lets delta-rs (object_store's GCS client, XML API) write to
fake-gcs-server, for the Delta-on-gs:// tests.

fake-gcs-server 1.56 serves GCS's JSON API fully but its XML API only in part. The shim
forwards every request and bridges three gaps, nothing else:
- a plain XML `PUT /bucket/object` is accepted upstream only as a signed-URL upload, so
  the shim adds the signed-URL marker (`X-Goog-Algorithm`) and answers with the `ETag`
  and `x-goog-generation` headers GCS sends;
- `x-goog-if-generation-match: 0` (create only if absent: how delta-rs commits a log
  entry atomically) is checked by the shim under a lock, answering 412 like GCS;
- the XML listing ignores `start-after`; the shim drops the keys up to it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# No "-": object_store percent-encodes it in the path, fake-gcs-server does not decode it.
FAKE_GCS_BUCKET = "musicrepdelta"
_HOP_HEADERS = {"content-length", "connection", "transfer-encoding", "date", "server"}


class XmlShim(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ""  # set by `serve`
    _create_lock = threading.Lock()

    def _forward(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        request = urllib.request.Request(self.upstream + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        url = urllib.parse.urlsplit(self.path)
        if self.command == "PUT" and not url.query and "x-goog-copy-source" not in {k.lower() for k in headers}:
            with self._create_lock:
                if self.headers.get("x-goog-if-generation-match") == "0":
                    status, _, _ = self._forward("HEAD", self.path, None, headers)
                    if status == 200:
                        return self._reply(412, {}, b"<Error><Code>PreconditionFailed</Code></Error>")
                signed = self.path + "?X-Goog-Algorithm=GOOG4-RSA-SHA256"
                status, reply_headers, data = self._forward("PUT", signed, body or b"", headers)
            if status == 200:
                meta = json.loads(data or b"{}")
                reply_headers["ETag"] = '"%s"' % (meta.get("etag") or hashlib.md5(body or b"").hexdigest())
                reply_headers["x-goog-generation"] = str(meta.get("generation", ""))
                data = b""
            return self._reply(status, reply_headers, data)
        status, reply_headers, data = self._forward(self.command, self.path, body, headers)
        query = urllib.parse.parse_qs(url.query)
        if self.command == "GET" and status == 200 and "list-type" in query and "start-after" in query:
            data = _drop_keys_up_to(data, query["start-after"][0])
        self._reply(status, reply_headers, data)

    def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        size = int(headers.get("Content-Length") or 0) if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _drop_keys_up_to(xml: bytes, start_after: str) -> bytes:
    def keep(match: re.Match) -> bytes:
        key = re.search(rb"<Key>(.*?)</Key>", match.group(0)).group(1).decode()
        return match.group(0) if key > start_after else b""

    return re.sub(rb"<Contents>.*?</Contents>", keep, xml, flags=re.S)


@dataclasses.dataclass
class FakeGcs:
    """A running fake-gcs-server (`endpoint`, JSON API: Beam, google-cloud-storage) and its
    shim (`xml_endpoint`: delta-rs); `service_account` points delta-rs at the shim."""

    endpoint: str
    xml_endpoint: str
    service_account: str
    processes: list

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def start_fake_gcs(binary: str, work_dir: str, buckets: list[str]) -> FakeGcs:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    upstream, shim = ports
    endpoint, xml_endpoint = f"http://127.0.0.1:{upstream}", f"http://127.0.0.1:{shim}"
    log = open(os.path.join(work_dir, "fake-gcs.log"), "wb")
    processes = [
        subprocess.Popen(
            [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(upstream), "-backend", "memory",
             "-public-host", f"127.0.0.1:{shim}", "-log-level", "error"],
            stdout=log, stderr=subprocess.STDOUT,
        ),
        subprocess.Popen([sys.executable, os.path.abspath(__file__), endpoint, str(shim)], stdout=log, stderr=subprocess.STDOUT),
    ]
    account = os.path.join(work_dir, "fake_gcs_service_account.json")
    with open(account, "w") as handle:
        json.dump({"gcs_base_url": xml_endpoint, "disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""}, handle)
    fake = FakeGcs(endpoint=endpoint, xml_endpoint=xml_endpoint, service_account=account, processes=processes)
    deadline = time.monotonic() + 30
    while True:
        try:
            for url in (endpoint, xml_endpoint):
                urllib.request.urlopen(f"{url}/storage/v1/b?project=p", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                fake.stop()
                raise RuntimeError(f"fake-gcs-server did not start; see {log.name}")
            time.sleep(0.1)
    for bucket in buckets:
        create = urllib.request.Request(
            f"{endpoint}/storage/v1/b?project=p", data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        urllib.request.urlopen(create).read()
    return fake


def delete_one_by_one(self, paths) -> list:
    """Stands in for Beam's GcsIO.delete_batch: fake-gcs-server's answer to a JSON batch
    request is not multipart, which google-cloud-storage refuses."""
    results = []
    for path in paths:
        try:
            self.delete(path)
            results.append((path, None))
        except Exception as error:  # reported per path, as delete_batch does
            results.append((path, error))
    return results


def serve_forever(upstream: str, port: int) -> None:
    handler = type("BoundXmlShim", (XmlShim,), {"upstream": upstream.rstrip("/")})
    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


if __name__ == "__main__":
    # A process of its own: some delta-rs calls (history) hold the GIL while they wait
    # for the network, which would starve a shim thread in the same interpreter.
    serve_forever(sys.argv[1], int(sys.argv[2]))
