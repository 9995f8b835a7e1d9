"""The front end in a child process (musicrep.features.front_end_process): the same
numbers as in-process, and a hang, a crash or a track given up half-read costs that
track only; the next one is served by a fresh child."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import threadpoolctl

from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep.errors import AudioDecodeError, TrackTimeoutError
from musicrep.features.audio_windows import TrackInput
from musicrep.features.front_end_process import AUDIO, LOG_MEL, DecoderCrashError, FrontEndProcess, Request
from musicrep.features.stream import TrackLogMel

# A child that crashes (SIGSEGV) on a URI naming "crash" and logs a warning on one naming
# "warn"; otherwise the real one.
MISBEHAVING_CHILD = """
import logging, os, signal
from musicrep import fileio
from musicrep.features import front_end_process
real_open_read = fileio.open_read
def open_read(uri):
    if "crash" in uri:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "warn" in uri:
        logging.getLogger("musicrep.child").warning("a warning from the child about %s", os.path.basename(uri))
    return real_open_read(uri)
fileio.open_read = open_read
front_end_process.main()
"""


@pytest.fixture(scope="module")
def tracks(signals, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks")
    paths = {}
    for name, fmt, seconds in (("a.flac", "flac", 12.0), ("b.mp3", "mp3", 11.0), ("warn.flac", "flac", 1.0)):
        audio = signals.sine(330, duration_s=seconds, sample_rate_hz=44100)[None]
        paths[name] = root / name
        paths[name].write_bytes(signals.encode(audio, sample_rate_hz=44100, audio_format=fmt))
    return paths


@pytest.fixture
def child():
    process = FrontEndProcess()
    process.start()
    yield process
    process.close()


def _request(path, mode=LOG_MEL, **kwargs) -> Request:
    return Request(uri=str(path), mode=mode, config=DEFAULT_FEATURE_CONFIG, **kwargs)


def _pid(process: FrontEndProcess) -> int:
    return process._child.pid  # noqa: SLF001 - which child answered is the point here


def test_blocks_hash_and_length_are_those_of_the_in_process_front_end(child, tracks):
    with threadpoolctl.threadpool_limits(1, user_api="blas"):  # as the child runs
        for name in ("a.flac", "b.mp3"):
            path = tracks[name]
            with child.track(_request(path)) as track:
                assert track.content_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
                blocks = list(track)
            local = TrackLogMel(path.read_bytes())
            np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate(list(local)))
            assert len(blocks) > 1 and track.n_samples == local.n_samples and track.duration_s == local.duration_s
            # The device front end's input: decoded audio, capped.
            with child.track(_request(path, AUDIO, max_samples=48_000)) as track:
                chunks = list(track)
            local = TrackInput(path.read_bytes(), max_samples=48_000)
            np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(list(local)))
            assert track.n_samples == local.n_samples == 48_000


def test_a_known_hash_stops_after_hashing_and_errors_come_back_as_raised(child, tracks, tmp_path):
    path = tracks["b.mp3"]
    known = hashlib.sha256(path.read_bytes()).hexdigest()
    pid = _pid(child)
    with child.track(_request(path, skip_sha256=known)) as track:
        assert track.content_sha256() == known
        assert list(track) == [] and track.n_samples == 0
    with pytest.raises(FileNotFoundError):
        with child.track(_request(tmp_path / "missing.mp3")) as track:
            track.content_sha256()
    (tmp_path / "text.mp3").write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        with child.track(_request(tmp_path / "text.mp3")) as track:
            list(track)
    with child.track(_request(path)) as track:
        assert sum(block.shape[0] for block in track) == DEFAULT_FEATURE_CONFIG.n_frames(track.n_samples)
    assert _pid(child) == pid  # errors are answers: the same child served all of it


def test_a_read_that_hangs_is_cut_at_the_budget_and_the_next_track_decodes(child, tracks, tmp_path):
    fifo = tmp_path / "stalled.mp3"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: none will
    pid = _pid(child)
    started = time.monotonic()
    with pytest.raises(TrackTimeoutError, match=r"gave up after 1\.\d s \(the per-track time budget is 1\.5 s\)"):
        with child.track(_request(fifo), budget_s=1.5) as track:
            track.content_sha256()
    assert 1.5 <= time.monotonic() - started < 10
    with child.track(_request(tracks["b.mp3"]), budget_s=60) as track:
        assert sum(block.shape[0] for block in track) > 0
    assert _pid(child) != pid


def test_a_budget_counts_the_parents_own_time_between_blocks(child, tracks):
    with pytest.raises(TrackTimeoutError, match="budget is 0.5 s"):
        with child.track(_request(tracks["a.flac"]), budget_s=0.5) as track:
            for _ in track:
                time.sleep(0.3)  # the job's own work on each block, downstream


def test_a_crash_is_that_tracks_error_and_a_fresh_child_serves_the_next(tracks, tmp_path, caplog):
    process = FrontEndProcess([sys.executable, "-c", MISBEHAVING_CHILD])
    try:
        process.start()
        crash = tmp_path / "crash.mp3"
        crash.write_bytes(tracks["b.mp3"].read_bytes())
        with pytest.raises(DecoderCrashError, match=r"the front-end process died \(killed by SIGSEGV\)"):
            with process.track(_request(crash)) as track:
                list(track)
        with caplog.at_level(logging.WARNING, logger="musicrep.child"):
            with process.track(_request(tracks["warn.flac"])) as track:
                assert sum(block.shape[0] for block in track) == 101
        assert [r.getMessage() for r in caplog.records if r.name == "musicrep.child"] == [
            "a warning from the child about warn.flac"
        ]
    finally:
        process.close()


def test_a_track_given_up_half_read_does_not_reach_the_next_request(child, tracks):
    with child.track(_request(tracks["a.flac"])) as track:
        next(iter(track))  # a block of many; the rest is never read
    with child.track(_request(tracks["b.mp3"])) as track:
        assert track.content_sha256() == hashlib.sha256(tracks["b.mp3"].read_bytes()).hexdigest()
        assert sum(block.shape[0] for block in track) == DEFAULT_FEATURE_CONFIG.n_frames(track.n_samples)


def test_a_child_that_died_between_tracks_is_replaced_before_the_next(child, tracks):
    pid = _pid(child)
    os.kill(pid, 9)  # as the OOM killer would
    while _alive(pid):
        time.sleep(0.05)
    with child.track(_request(tracks["b.mp3"])) as track:
        assert sum(block.shape[0] for block in track) == DEFAULT_FEATURE_CONFIG.n_frames(track.n_samples)
    assert _pid(child) != pid


def test_a_child_that_cannot_start_fails_the_start_not_the_tracks():
    process = FrontEndProcess([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match=r"did not start: the front-end process died \(exit status 3\)"):
        process.start()


def test_a_child_outlives_the_thread_that_started_it(tracks):
    # Beam's harness runs setup() on a pool thread that may retire while the worker
    # goes on using the child from another thread.
    process = FrontEndProcess()
    starter = threading.Thread(target=process.start)
    starter.start()
    starter.join()
    pid = _pid(process)
    time.sleep(0.5)  # a parent-death signal tied to the starter would have fired by now
    try:
        assert _alive(pid)
        with process.track(_request(tracks["a.flac"])) as track:
            assert sum(block.shape[0] for block in track) == DEFAULT_FEATURE_CONFIG.n_frames(track.n_samples)
        assert _pid(process) == pid
    finally:
        process.close()


def test_a_parent_killed_outright_takes_its_child_along(tmp_path):
    fifo = tmp_path / "stalled.mp3"
    os.mkfifo(fifo)
    script = (
        "import sys, time\n"
        "from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG as C\n"
        "from musicrep.features.front_end_process import FrontEndProcess, Request, LOG_MEL\n"
        "p = FrontEndProcess(); p.start(); print(p._child.pid, flush=True)\n"
        f"p.track(Request(uri={str(fifo)!r}, mode=LOG_MEL, config=C)).content_sha256()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(0.5)  # the child is blocked opening the FIFO
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
