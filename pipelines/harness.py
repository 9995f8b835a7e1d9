"""Where the Python SDK harness runs on portable runners: a worker pool that can serve
several TaskManagers at once.

A runner that starts SDK harnesses through a worker pool (``--environment_type=EXTERNAL``,
and LOOPBACK, which is EXTERNAL with a pool inside the launcher) sends it
``StartWorker(worker_id)`` and later ``StopWorker(worker_id)``. Beam's Java runners number
workers per JVM, and Beam 2.50's Flink runner restarts the numbering for every job in
every TaskManager (``DefaultJobBundleFactory``: a static counter in the job's class
loader), so two TaskManagers ask one pool for the same ids: "1-1", "1-2", ... Beam's pool
keys its workers by that id alone, so one TaskManager's ``StopWorker`` ends the other's
harness in the middle of a bundle ("SDK harness closed connection"), and an overwritten
entry is never stopped. Whether the ids overlap in time depends on scheduling, which is
why two-TaskManager runs failed at random while one TaskManager never did.

`WorkerPool` keys each worker by the id *and* the caller: the runner sends both requests
of one environment over one gRPC channel, so the peer address tells the TaskManagers
apart. A ``StopWorker`` from a peer that reconnected is matched by id only when exactly
one worker has that id; otherwise nothing is stopped (the runner has already closed that
worker's control stream, which ends it).

- `loopback(options)`: for FlinkRunner/PortableRunner with ``--environment_type=LOOPBACK``,
  serves the harness from this process through a `WorkerPool` instead of Beam's, for the
  duration of one run. Other runners are left as they are.
- ``python -m musicrep.pipelines.harness --port 50000``: a pool of harness processes for
  ``--environment_type=EXTERNAL --environment_config=HOST:50000``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import subprocess
import sys
import threading
from concurrent import futures
from typing import Callable, Iterator, Protocol

import grpc
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker import sdk_worker

logger = logging.getLogger(__name__)

# Runners whose LOOPBACK pool may be shared by several JVMs (TaskManagers).
SHARED_POOL_RUNNERS = ("FlinkRunner", "PortableRunner")
_MODULE = "musicrep.pipelines.harness"  # not __name__: that is "__main__" in the pool itself
_STOP_GRACE_S = 5.0


class Worker(Protocol):
    """One SDK harness the pool started."""

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class _ThreadWorker:
    """An SDK harness in a thread of this process (what LOOPBACK runs)."""

    def __init__(self, request: beam_fn_api_pb2.StartWorkerRequest, *, state_cache_size: int, data_buffer_time_limit_ms: int):
        self._harness = sdk_worker.SdkHarness(
            request.control_endpoint.url, worker_id=request.worker_id,
            state_cache_size=state_cache_size, data_buffer_time_limit_ms=data_buffer_time_limit_ms,
        )
        self._thread = threading.Thread(target=self._harness.run, name=f"sdk_harness_{request.worker_id}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        # SdkHarness has no public stop; Beam's own pool ends the harness's response
        # stream the same way (a sentinel in its queue), which lets run() return.
        self._harness._responses.put(sdk_worker.Sentinel.sentinel)  # pylint: disable=protected-access


class _ProcessWorker:
    """An SDK harness in a child process running this Python (not whatever `python` is
    first on PATH, which is what Beam's pool runs)."""

    def __init__(self, request: beam_fn_api_pb2.StartWorkerRequest, *, state_cache_size: int, data_buffer_time_limit_ms: int):
        self._process = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "--harness", request.control_endpoint.url, request.worker_id,
             str(state_cache_size), str(data_buffer_time_limit_ms)],
            stdin=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def thread_workers(*, state_cache_size: int = 0, data_buffer_time_limit_ms: int = 0):
    """Harnesses in threads of this process (LOOPBACK)."""
    return functools.partial(_ThreadWorker, state_cache_size=state_cache_size,
                             data_buffer_time_limit_ms=data_buffer_time_limit_ms)


def process_workers(*, state_cache_size: int = 0, data_buffer_time_limit_ms: int = 0):
    """Harnesses in child processes (a worker pool for EXTERNAL)."""
    return functools.partial(_ProcessWorker, state_cache_size=state_cache_size,
                             data_buffer_time_limit_ms=data_buffer_time_limit_ms)


class WorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Beam's external worker pool service with workers keyed by (caller, worker id)."""

    def __init__(self, start_worker: Callable[[beam_fn_api_pb2.StartWorkerRequest], Worker]):
        """`start_worker(request)` starts one harness: `thread_workers(...)`,
        `process_workers(...)`."""
        self._start_worker = start_worker
        self._workers: dict[tuple[str, str], Worker] = {}
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()  # observed, for tests and logs

    def StartWorker(self, request, context):  # noqa: N802 (gRPC method name)
        key = (context.peer(), request.worker_id)
        try:
            worker = self._start_worker(request)
        except Exception as error:  # reported to the runner, which fails the task with it
            logger.exception("could not start SDK harness %s", request.worker_id)
            return beam_fn_api_pb2.StartWorkerResponse(error=f"{type(error).__name__}: {error}")
        with self._lock:
            self.requests["start"] += 1
            if any(id_ == request.worker_id for _, id_ in self._workers):
                self.requests["shared_id"] += 1
                logger.info("worker id %s is in use by another caller too; kept apart by caller", request.worker_id)
            previous = self._workers.pop(key, None)
            self._workers[key] = worker
        if previous is not None:
            previous.stop()
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):  # noqa: N802
        with self._lock:
            self.requests["stop"] += 1
            worker = self._workers.pop((context.peer(), request.worker_id), None)
            if worker is None:
                same_id = [key for key in self._workers if key[1] == request.worker_id]
                if len(same_id) == 1:
                    worker = self._workers.pop(same_id[0])
                elif same_id:
                    self.requests["ambiguous_stop"] += 1
                    logger.info("StopWorker(%s) from an unknown caller matches %d workers: none stopped",
                                request.worker_id, len(same_id))
            for key in [key for key, other in self._workers.items() if not other.alive()]:
                del self._workers[key]
        if worker is not None:
            worker.stop()
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_all(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()


def serve(pool: WorkerPool, *, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.Server, int]:
    """Serves `pool` on host:port (0: a free port); returns the started server and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


@contextlib.contextmanager
def loopback(options: PipelineOptions) -> Iterator[WorkerPool | None]:
    """While the block runs, a LOOPBACK harness on a runner whose TaskManagers share it is
    served by a `WorkerPool` in this process (EXTERNAL to the runner); else does nothing."""
    portable = options.view_as(PortableOptions)
    runner = str(options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1]
    if runner not in SHARED_POOL_RUNNERS or (portable.environment_type or "").upper() != "LOOPBACK":
        yield None
        return
    from apache_beam.runners.worker import sdk_worker_main

    # The cache size Beam's own LOOPBACK pool gives its harnesses.
    pool = WorkerPool(thread_workers(state_cache_size=sdk_worker_main._get_state_cache_size_bytes(options=options)))
    server, port = serve(pool)
    given = portable.environment_type, portable.environment_config
    portable.environment_type, portable.environment_config = "EXTERNAL", f"127.0.0.1:{port}"
    try:
        yield pool
    finally:
        portable.environment_type, portable.environment_config = given
        server.stop(1)
        pool.stop_all()
        logger.debug("loopback pool: %s", dict(pool.requests))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m musicrep.pipelines.harness",
        description="A Beam worker pool for --environment_type=EXTERNAL: each StartWorker runs an SDK harness "
        "process; safe to share between TaskManagers (workers are told apart by caller, not id alone).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50000, help="port (default 50000, Beam's worker-pool port)")
    parser.add_argument("--harness", nargs=4, metavar=("CONTROL", "ID", "CACHE", "BUFFER_MS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.harness:  # a _ProcessWorker
        control, worker_id, cache, buffer_ms = args.harness
        sdk_worker.SdkHarness(control, worker_id=worker_id, state_cache_size=int(cache),
                              data_buffer_time_limit_ms=int(buffer_ms)).run()
        return
    pool = WorkerPool(process_workers())
    server, port = serve(pool, host=args.host, port=args.port)
    print(f"worker pool on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    finally:
        pool.stop_all()


if __name__ == "__main__":
    main()
