"""Node-wide task statistics shared by every pool process of one worker node.

The processing rate and the latency EMA must describe the whole node, and a
recycled process must not take its share with it. So pool processes update
one small memory-mapped file in the node's directory, under an ``flock``
(which the kernel releases if the holder is killed). The MainProcess only
reads it: no per-task work lands on the node's bottleneck process.

Layout: 16 doubles (see ``_F_*``), then ``slots`` int64 bucket seconds, then
``slots`` int64 bucket counts for :class:`~tasker.metrics.trackers.SlidingWindowRate`.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
from dataclasses import dataclass

from tasker.metrics.trackers import SlidingWindowRate, ema_update

__all__ = ["NodeState", "NodeStateReading", "FILE_NAME"]

FILE_NAME = "node_state.bin"
_MAGIC = 0x7A5C3E01
_FIELDS = 16
(_F_MAGIC, _F_WINDOW, _F_ALPHA, _F_STARTED, _F_COUNT, _F_TOTAL, _F_MIN, _F_MAX, _F_EMA,
 _F_LAST_RUN) = range(10)
_HEADER_BYTES = _FIELDS * 8


@dataclass(frozen=True)
class NodeStateReading:
    """The node's task statistics at one moment (None = nothing measured yet)."""

    processing_rate: float
    latency_ema_seconds: float | None
    runs: int
    average_seconds: float | None
    min_seconds: float | None
    max_seconds: float | None
    last_run_time: float | None


#: Forks this process descends through; each process's handle notes the value it opened at.
_forks_seen = 0


def _count_fork() -> None:
    global _forks_seen
    _forks_seen += 1


os.register_at_fork(after_in_child=_count_fork)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


class NodeState:
    """One process's handle on the node's shared statistics file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._open()

    @classmethod
    def create(cls, path: str, window: float, alpha: float, started: float) -> NodeState:
        """Create (or replace) the file for a node starting now."""
        slots = SlidingWindowRate(window, started).slots
        size = _HEADER_BYTES + 16 * slots
        header = [math.nan] * _FIELDS
        header[_F_MAGIC], header[_F_WINDOW], header[_F_ALPHA] = _MAGIC, window, alpha
        header[_F_STARTED], header[_F_COUNT], header[_F_TOTAL] = started, 0.0, 0.0
        payload = struct.pack(f"<{_FIELDS}d", *header)
        payload += struct.pack(f"<{slots}q", *([-1] * slots)) + bytes(8 * slots)
        assert len(payload) == size
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)  # readers never see a half-written file
        return cls(path)

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR)
        self._forks = _forks_seen
        size = os.fstat(self._fd).st_size
        # Check before mapping: a short or foreign file must be a ValueError, not
        # a TypeError from ``cast`` or an IndexError at the first record.
        head = os.pread(self._fd, _HEADER_BYTES, 0)
        magic, window = struct.unpack_from("<2d", head) if len(head) == _HEADER_BYTES else (0, 0)
        if magic != _MAGIC or size < _HEADER_BYTES + 16 * SlidingWindowRate(window, 0).slots:
            os.close(self._fd)
            raise ValueError(f"{self.path} is not a tasker node state file")
        self._map = mmap.mmap(self._fd, size)
        view = memoryview(self._map)
        self._header = view[:_HEADER_BYTES].cast("d")
        if self._header[_F_MAGIC] != _MAGIC:
            raise ValueError(f"{self.path} is not a tasker node state file")
        self._rate = SlidingWindowRate(self._header[_F_WINDOW], self._header[_F_STARTED])
        slots = self._rate.slots
        self._rate.stamps = view[_HEADER_BYTES:_HEADER_BYTES + 8 * slots].cast("q")
        self._rate.counts = view[_HEADER_BYTES + 8 * slots:_HEADER_BYTES + 16 * slots].cast("q")

    def _ensure_own_fd(self) -> None:
        # An flock belongs to an open file description, which fork shares:
        # each process needs its own for the lock to exclude the others.
        # (A fork counter, not os.getpid(): this runs for every task.)
        if self._forks != _forks_seen:
            self.close()  # the inherited descriptor and map; the parent keeps its own
            self._open()

    def record_finished(self, runtime: float, now: float) -> None:
        """Count one finished task that ran for ``runtime`` seconds."""
        self._ensure_own_fd()
        h = self._header
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            h[_F_COUNT] += 1
            h[_F_TOTAL] += runtime
            h[_F_MIN] = runtime if math.isnan(h[_F_MIN]) else min(h[_F_MIN], runtime)
            h[_F_MAX] = runtime if math.isnan(h[_F_MAX]) else max(h[_F_MAX], runtime)
            h[_F_EMA] = ema_update(_none_if_nan(h[_F_EMA]), runtime, h[_F_ALPHA])
            h[_F_LAST_RUN] = now
            self._rate.record(now)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read(self, now: float) -> NodeStateReading:
        """A consistent copy of the statistics."""
        self._ensure_own_fd()
        h = self._header
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            count = int(h[_F_COUNT])
            return NodeStateReading(
                processing_rate=self._rate.rate(now),
                latency_ema_seconds=_none_if_nan(h[_F_EMA]),
                runs=count,
                average_seconds=h[_F_TOTAL] / count if count else None,
                min_seconds=_none_if_nan(h[_F_MIN]),
                max_seconds=_none_if_nan(h[_F_MAX]),
                last_run_time=_none_if_nan(h[_F_LAST_RUN]),
            )
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _release_views(self) -> None:
        # Views into the map must be released before it can be closed.
        self._rate.stamps.release()  # type: ignore[union-attr]
        self._rate.counts.release()  # type: ignore[union-attr]
        self._header.release()

    def close(self) -> None:
        self._release_views()
        self._map.close()
        os.close(self._fd)
