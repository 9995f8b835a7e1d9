"""The worker pool TaskManagers share: workers are told apart by caller, not by id alone.

Beam 2.50's Flink runner numbers SDK workers per TaskManager from the same start
("1-1", "1-2", ...), so two TaskManagers ask one pool for the same ids. These tests play
two TaskManagers over two real gRPC channels against the pool's server.
"""
from __future__ import annotations

import grpc
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

from musicrep.pipelines import harness


class FakeWorker:
    def __init__(self, request, log):
        self.worker_id = request.worker_id
        self.control = request.control_endpoint.url
        self.stopped = False
        log.append(self)

    def alive(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def pool_and_callers():
    started: list[FakeWorker] = []
    pool = harness.WorkerPool(lambda request: FakeWorker(request, started))
    server, port = harness.serve(pool)
    # Two TaskManagers: two connections (gRPC would otherwise share one between channels
    # of one process, where two JVMs never do).
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(2)]
    stubs = [beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel) for channel in channels]
    yield pool, stubs, started
    for channel in channels:
        channel.close()
    server.stop(0)


def _start(stub, worker_id: str, control: str):
    request = beam_fn_api_pb2.StartWorkerRequest(worker_id=worker_id)
    request.control_endpoint.url = control
    return stub.StartWorker(request)


def test_same_worker_id_from_two_taskmanagers_stops_only_the_callers_worker(pool_and_callers):
    pool, (tm1, tm2), started = pool_and_callers
    assert _start(tm1, "1-1", "tm1:1000").error == ""
    assert _start(tm2, "1-1", "tm2:2000").error == ""
    assert [(w.worker_id, w.control) for w in started] == [("1-1", "tm1:1000"), ("1-1", "tm2:2000")]
    assert pool.requests["shared_id"] == 1

    tm1.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1-1"))
    # Beam's own pool (keyed by id) would have stopped tm2's harness here, mid-bundle.
    assert [w.stopped for w in started] == [True, False]
    tm2.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1-1"))
    assert [w.stopped for w in started] == [True, True]


def test_stop_from_an_unknown_caller_stops_only_an_unambiguous_worker(pool_and_callers):
    pool, (tm1, tm2), started = pool_and_callers
    _start(tm1, "2-1", "tm1:1000")
    tm2.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="2-1"))  # e.g. tm1 reconnected
    assert started[0].stopped

    _start(tm1, "3-1", "tm1:1000")
    _start(tm2, "3-1", "tm2:2000")
    # Both callers reconnected since (new peer addresses): the pool cannot tell which is whose.
    pool._workers = {(f"gone-{i}", "3-1"): w for i, w in enumerate(pool._workers.values())}
    tm1.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="3-1"))
    assert [w.stopped for w in started[1:]] == [False, False]  # ambiguous: neither is stopped
    assert pool.requests["ambiguous_stop"] == 1
    pool.stop_all()
    assert all(w.stopped for w in started)


def test_a_worker_that_fails_to_start_is_reported_to_the_runner():
    def broken(request):
        raise OSError("no such interpreter")

    pool = harness.WorkerPool(broken)
    server, port = harness.serve(pool)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = _start(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel), "1-1", "tm:1")
    server.stop(0)
    assert response.error == "OSError: no such interpreter"


@pytest.mark.parametrize("runner, environment, replaced", [
    ("FlinkRunner", "LOOPBACK", True),
    ("PortableRunner", "LOOPBACK", True),
    ("FlinkRunner", "PROCESS", False),
    ("PrismRunner", "LOOPBACK", False),  # one runner process: Beam's pool is safe there
    (None, None, False),
])
def test_loopback_serves_the_harness_from_our_pool_only_where_jvms_share_it(runner, environment, replaced):
    args = ([f"--runner={runner}"] if runner else []) + ([f"--environment_type={environment}"] if environment else [])
    options = PipelineOptions(args)
    portable = options.view_as(PortableOptions)
    with harness.loopback(options) as pool:
        inside = (portable.environment_type, portable.environment_config)
        if replaced:
            assert isinstance(pool, harness.WorkerPool)
            assert inside[0] == "EXTERNAL" and inside[1].startswith("127.0.0.1:")
            port = int(inside[1].rsplit(":", 1)[1])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # it really serves
                grpc.channel_ready_future(channel).result(timeout=5)
        else:
            assert pool is None and inside == (environment, None)
    assert (portable.environment_type, portable.environment_config) == (environment, None)
