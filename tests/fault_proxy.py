"""A seeded fault-injecting HTTP proxy for the GCS emulator: the storage faults of a real
object store (429, 503, connections reset) on a share of requests, every other request
forwarded unchanged. Faults are decided before forwarding, so a faulted request never
reaches the emulator (as a throttled or dropped request never reaches GCS), except the
opt-in LOST, which forwards the request and then resets the connection (a write that
landed while its answer was lost)."""
from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse

FAULTS = ("429", "503", "reset")
LOST = "lost"  # opt-in: the request reaches upstream, then the connection is reset
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """`endpoint` forwards to `upstream`; each request faults with probability `rate`, or
    the rate of the first key of `path_rates` its path contains (one of `kinds`, chosen by
    a seeded RNG; LOST among them: some requests take effect with their answer lost). `faults` counts what was injected by kind, `faulted` holds (method, path,
    kind) of each, `requests` counts every request seen. `upstream_host`: send upstream's
    own Host header (fake-gcs-server reads another host as a virtual-hosted bucket name);
    by default the client's goes through, so URLs an emulator builds from it lead back here."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float,
        seed: int,
        path_rates: dict[str, float] | None = None,
        upstream_host: bool = False,
        kinds: tuple[str, ...] = FAULTS,
    ):
        self._upstream = urllib.parse.urlsplit(upstream)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rate = rate
        self._path_rates = dict(path_rates or {})
        self._kinds = kinds
        dropped = _HOP_HEADERS | ({"host"} if upstream_host else set())
        self.faults: collections.Counter = collections.Counter()
        self.faulted: list[tuple[str, str, str]] = []
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path)
                if fault == "lost":  # done upstream, the answer lost on the way back
                    self._forward(body)
                if fault in ("reset", "lost"):
                    # RST instead of FIN: the client sees "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault:
                    payload = b'{"error": {"code": %s, "message": "injected"}}' % fault.encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, reason, reply_headers, data = self._forward(body)
                self.send_response(status, reason)
                for key, value in reply_headers:
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self, body: bytes) -> tuple[int, str, list, bytes]:
                upstream = http.client.HTTPConnection(proxy._upstream.hostname, proxy._upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                return response.status, response.reason, response.getheaders(), data

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _decide(self, method: str, path: str) -> str | None:
        rate = next((r for key, r in self._path_rates.items() if key in urllib.parse.unquote(path)), self.rate)
        with self._lock:
            self.requests += 1
            if self._rng.random() >= rate:
                return None
            fault = self._rng.choice(self._kinds)
            self.faults[fault] += 1
            self.faulted.append((method, path, fault))
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class FaultProxyProcess:
    """A FaultProxy in a process of its own, with the same `endpoint`, `requests`,
    `faults` and `faulted` (read when it stops). For clients that hold the GIL while they
    wait for the network (delta-rs's history), which would starve a proxy thread here."""

    def __init__(self, upstream: str, *, rate: float, seed: int, **options):
        """`options`: FaultProxy's path_rates, upstream_host and kinds."""
        kinds = options.get("kinds", FAULTS)
        self._argv = [sys.executable, os.path.abspath(__file__), upstream, str(rate), str(seed), f"--kinds={','.join(kinds)}"]
        self._argv += [f"--path-rate={key}={value}" for key, value in (options.get("path_rates") or {}).items()]
        self._argv += ["--upstream-host"] if options.get("upstream_host") else []
        self.faults: collections.Counter = collections.Counter()
        self.faulted: list[tuple[str, str, str]] = []
        self.requests = 0

    def __enter__(self) -> "FaultProxyProcess":
        self._process = subprocess.Popen(self._argv, stdout=subprocess.PIPE, text=True)
        self.endpoint = self._process.stdout.readline().strip()
        return self

    def __exit__(self, *exc) -> None:
        self._process.send_signal(signal.SIGTERM)
        stats = json.loads(self._process.stdout.read())
        self._process.wait(timeout=30)
        self.requests, self.faults = stats["requests"], collections.Counter(stats["faults"])
        self.faulted = [tuple(entry) for entry in stats["faulted"]]


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("upstream")
    parser.add_argument("rate", type=float)
    parser.add_argument("seed", type=int)
    parser.add_argument("--path-rate", action="append", default=[])
    parser.add_argument("--upstream-host", action="store_true")
    parser.add_argument("--kinds", default=",".join(FAULTS))
    args = parser.parse_args(argv)
    path_rates = {key: float(value) for key, _, value in (item.rpartition("=") for item in args.path_rate)}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    kinds = tuple(args.kinds.split(","))
    proxy = FaultProxy(args.upstream, rate=args.rate, seed=args.seed, path_rates=path_rates, upstream_host=args.upstream_host, kinds=kinds)
    with proxy:
        print(proxy.endpoint, flush=True)
        stop.wait()
    print(json.dumps({"requests": proxy.requests, "faults": dict(proxy.faults), "faulted": proxy.faulted}), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1:])
