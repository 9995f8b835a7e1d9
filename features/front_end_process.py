"""One track's front end in a child process, so that a hang or a crash in FFmpeg costs
that track, not the worker.

A worker that decodes in its own process cannot cut a call that never returns (a read
that stalls on a FIFO or a dead mount, a decoder stuck on a hostile file), and a
segfault in FFmpeg kills it: the runner then retries the bundle and at last fails the
job. `FrontEndProcess` keeps one child per worker (`python -m
musicrep.features.front_end_process`) that reads, hashes and decodes one track at a time
and streams the blocks back over a pipe. The parent waits on the pipe against the
track's deadline: past it, the child is killed (TrackTimeoutError, with the time spent);
a child that dies is reported (DecoderCrashError). Either way a fresh child serves the
next track.

Protocol, one request at a time: the parent sends a `Request`; the child answers
("sha256", hex), then, unless the hash is the request's `skip_sha256`, ("block", array)
for each block and ("end", n_samples); or ("error", exception) at any point. ("log",
level, logger, message) may come in between: the child's log records, logged again by
the parent so they reach the worker's log. Each message is an 8-byte little-endian
length and a pickle.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from musicrep.contracts.feature_config import FeatureConfig
from musicrep.errors import AudioDecodeError, TrackTimeoutError

_LENGTH = struct.Struct("<Q")
# What the child produces: log-mel blocks (TrackLogMel) or decoded input (TrackInput).
LOG_MEL, AUDIO = "log_mel", "audio"
# Seconds the child may take to start (imports) and to stop when asked.
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 5.0
# Linux's parent-death signal (see _die_with_parent) fires when the *thread* that forked
# the child ends, not its process; Beam's harness retires idle threads, and that would
# kill a child another thread still reads from. So children are forked from one thread
# that lives as long as the process.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="front-end-spawner")


class DecoderCrashError(AudioDecodeError):
    """The child process died while it decoded a track (a crash in FFmpeg, a kill)."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One track to decode. `max_samples`: the 16 kHz samples wanted (None: all);
    `skip_sha256`: a hash for which the child stops after hashing (the track is known)."""

    uri: str
    mode: str
    config: FeatureConfig
    max_samples: int | None = None
    skip_sha256: str | None = None


class FrontEndProcess:
    """The parent's side: a child started on `start()` (or the first track), one track at
    a time through `track()`, stopped by `close()`. `command` is the child's argv (tests
    give a child that misbehaves)."""

    def __init__(self, command: Sequence[str] | None = None):
        self._command = list(command or [sys.executable, "-m", __name__])
        self._child: subprocess.Popen | None = None

    def start(self) -> None:
        """Starts the child and waits until it is ready, so a broken environment fails
        the worker's setup instead of every track."""
        if self._child is not None:
            return
        env = dict(os.environ)
        # One worker per core: BLAS threads on top only fight each other.
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self._child = _SPAWNER.submit(
            subprocess.Popen, self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
        ).result()
        channel = _Channel(self._child, deadline=time.monotonic() + _START_TIMEOUT_S)
        try:
            kind, *_ = channel.receive()
        except (TrackTimeoutError, DecoderCrashError) as error:
            self.kill()
            raise RuntimeError(f"the front-end process did not start: {error}") from None
        if kind != "ready":
            self.kill()
            raise RuntimeError(f"the front-end process answered {kind!r} to its start")

    def track(self, request: Request, *, budget_s: float | None = None) -> "RemoteTrack":
        """Sends `request` and returns the track's answer, read as it is iterated; the
        child gets `budget_s` seconds from now for all of it."""
        if self._child is not None and self._child.poll() is not None:
            self._close_pipes()  # it died between tracks (the OOM killer, a kill): not this track's fault
        self.start()
        _send(self._child.stdin, request)
        return RemoteTrack(self, self._child, request, budget_s)

    def kill(self) -> None:
        """Ends the child now (a track past its deadline, a track given up half-read)."""
        if self._child is None:
            return
        self._child.kill()
        self._child.wait()
        self._close_pipes()

    def close(self) -> None:
        """Asks the child to stop (end of its input), killing it if it does not."""
        if self._child is None:
            return
        try:
            self._child.stdin.close()
            self._child.wait(timeout=_STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            self._child.kill()
            self._child.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._child.stdin, self._child.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        self._child = None


class RemoteTrack:
    """One track's answer. `content_sha256()` waits for the hash; iterating gives the
    blocks; then `n_samples` and `duration_s` are the 16 kHz waveform's, as TrackLogMel's
    are. Raises what the child raised, TrackTimeoutError past the budget (the child is
    killed) or DecoderCrashError. Use it as a context manager: a track left half-read
    kills the child, whose rest of the answer would otherwise meet the next request."""

    def __init__(self, owner: FrontEndProcess, child: subprocess.Popen, request: Request, budget_s: float | None):
        self._owner, self._request = owner, request
        self._started = time.monotonic()
        self._budget_s = budget_s
        deadline = None if budget_s is None else self._started + budget_s
        self._channel = _Channel(child, deadline=deadline, on_timeout=self._timed_out)
        self._sha256: str | None = None
        self._done = False
        self.n_samples = 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / self._request.config.sample_rate_hz

    def content_sha256(self) -> str:
        if self._sha256 is None:
            _, self._sha256 = self._receive("sha256")
            if self._sha256 == self._request.skip_sha256:
                self._done = True
        return self._sha256

    def __iter__(self) -> Iterator[np.ndarray]:
        self.content_sha256()
        while not self._done:
            kind, value = self._receive("block", "end")
            if kind == "end":
                self.n_samples, self._done = value, True
            else:
                yield value

    def __enter__(self) -> "RemoteTrack":
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._done:
            self._owner.kill()

    def _receive(self, *kinds: str) -> tuple:
        while True:
            try:
                message = self._channel.receive()
            except (TrackTimeoutError, DecoderCrashError):
                self._done = True
                self._owner.kill()
                raise
            kind = message[0]
            if kind == "log":
                _, level, name, text = message
                logging.getLogger(name).log(level, "%s", text)
            elif kind == "error":
                self._done = True  # the child is ready for the next request
                raise message[1]
            elif kind in kinds:
                return message
            else:
                self._done = True
                self._owner.kill()
                raise DecoderCrashError(f"the front-end process answered {kind!r} where {kinds} were due")

    def _timed_out(self) -> TrackTimeoutError:
        elapsed_s = time.monotonic() - self._started
        return TrackTimeoutError(f"gave up after {elapsed_s:.1f} s (the per-track time budget is {self._budget_s:g} s)")


class _Channel:
    """Reading the child's messages against a deadline (time.monotonic; None: none)."""

    def __init__(self, child: subprocess.Popen, *, deadline: float | None, on_timeout=None):
        self._child, self._deadline = child, deadline
        self._on_timeout = on_timeout or (lambda: TrackTimeoutError("no answer in time"))

    def receive(self) -> tuple:
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return pickle.loads(self._read(length))

    def _read(self, size: int) -> bytearray:
        data = bytearray(size)
        view, got = memoryview(data), 0
        pipe = self._child.stdout
        while got < size:
            # Checked even when data is waiting: a parent slowed by its own work downstream
            # (the model, in embed) still spends the track's budget.
            timeout = None if self._deadline is None else self._deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise self._on_timeout()
            readable, _, _ = select.select([pipe], [], [], timeout)
            if not readable:
                raise self._on_timeout()
            n = pipe.readinto(view[got:])
            if not n:
                raise DecoderCrashError(f"the front-end process died ({_exit_reason(self._child)})")
            got += n
        return data


def _exit_reason(child: subprocess.Popen) -> str:
    code = child.wait()
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _send(pipe: BinaryIO, value) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(payload)))
    pipe.write(payload)


# The child's side.


class _ForwardLogs(logging.Handler):
    def __init__(self, pipe: BinaryIO):
        super().__init__(logging.INFO)
        self._pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        _send(self._pipe, ("log", record.levelno, record.name, record.getMessage()))


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: answers each request on `requests` until its end."""
    from musicrep import fileio
    from musicrep.features.audio_windows import TrackInput
    from musicrep.features.stream import TrackLogMel

    _send(replies, ("ready",))
    while header := requests.read(_LENGTH.size):
        request: Request = pickle.loads(requests.read(_LENGTH.unpack(header)[0]))
        try:
            with fileio.open_read(request.uri) as handle:
                sha256 = fileio.sha256_of(handle)
                _send(replies, ("sha256", sha256))
                if sha256 == request.skip_sha256:
                    continue
                handle.seek(0)
                kind = TrackLogMel if request.mode == LOG_MEL else TrackInput
                track = kind(handle, config=request.config, max_samples=request.max_samples)
                for block in track:
                    _send(replies, ("block", block))
            _send(replies, ("end", track.n_samples))
        except Exception as error:  # the parent makes it the track's dead letter
            _send(replies, ("error", _picklable(error)))


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return AudioDecodeError(f"{type(error).__name__}: {error}")


def main() -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides when the child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The replies get fd 1's pipe to themselves; whatever else writes to fd 1 (a stray
    # print, a C library) lands on stderr instead of inside a message.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    root = logging.getLogger()
    root.addHandler(_ForwardLogs(replies))
    root.setLevel(logging.INFO)
    serve(sys.stdin.buffer, replies)


def _die_with_parent() -> None:
    """A child blocked in a hung read would outlive a parent killed outright: on Linux,
    have the kernel kill it with its parent."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


if __name__ == "__main__":
    main()
