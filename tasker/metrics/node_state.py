"""Node-wide task statistics shared by every pool process of one worker node.

The processing rate and the latency EMA must describe the whole node, and a
recycled process must not take its share with it. So the numbers live in one
small memory-mapped file in the node's directory, and the MainProcess only
reads it: no per-task work lands on the node's bottleneck process.

The file has one *slot* per pool process index (billiard numbers a prefork
pool's processes 0..n-1 and gives a replacement the index of the process it
replaces) plus a shared slot 0. A prefork pool process writes only its own
slot, so it takes no lock: one lock shared by every process of the node is a
system call or two per task and a queue as soon as two processes finish at
once. Readers use the slot's sequence number (a seqlock) to get a consistent
copy. Everything else (the MainProcess, solo and thread pools, an index
beyond the slots) writes slot 0 under an ``flock``, which the kernel releases
if the holder is killed. A reading adds the slots up.

Memory order: a slot's fields and its sequence number are separate 8-byte
stores. x86-64 makes them visible to other CPUs in program order, which the
seqlock needs; ARM64 does not, and Python emits no barrier, so there a reading
may rarely combine fields from before and after one update. Everything read
from this file is a gauge (rate, EMA, average, min/max), so such a reading is
off by one task for one scrape; no counter is derived from it.

The latency EMA is one value for the node, in the file's header, updated
without a lock by every writer: two processes finishing in the same instant
can each fold their sample into the same previous value, so one sample is
occasionally skipped, which an average with weight alpha per sample hardly
notices. Counts, totals, min and max are exact.

Layout: 16 doubles of header (see ``_F_*``); then ``slots`` slots of 8
doubles (see ``_S_*``), ``rate_slots`` int64 bucket seconds and ``rate_slots``
int64 bucket counts for :class:`~tasker.metrics.trackers.SlidingWindowRate`.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass

from tasker.contracts.celery_worker import pool_process_index
from tasker.metrics.trackers import SlidingWindowRate, ema_update

__all__ = ["NodeState", "NodeStateReading", "FILE_NAME"]

FILE_NAME = "node_state.bin"
_MAGIC = 0x7A5C3E02
_FIELDS = 16
(_F_MAGIC, _F_WINDOW, _F_ALPHA, _F_STARTED, _F_SLOTS, _F_EMA) = range(6)
_HEADER_BYTES = _FIELDS * 8
_SLOT_FIELDS = 8
(_S_SEQ, _S_COUNT, _S_TOTAL, _S_MIN, _S_MAX, _S_LAST_RUN) = range(6)
#: Tries at a consistent copy of a slot that is being written before taking it as it is.
_READ_TRIES = 100


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
    global _forks_seen  # os.register_at_fork hooks take no arguments: module state
    _forks_seen += 1


os.register_at_fork(after_in_child=_count_fork)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _nan_min(a: float, b: float) -> float:
    """The smaller of two values, where NaN means "none yet"."""
    return b if math.isnan(a) or b < a else a


def _nan_max(a: float, b: float) -> float:
    return b if math.isnan(a) or b > a else a


def _pool_index() -> int | None:
    """This process's index in a billiard (prefork) pool, or None elsewhere."""
    return pool_process_index()


class _Slot:
    """Views of one slot: its fields and its rate buckets."""

    def __init__(self, view: memoryview, offset: int, window: float, started: float) -> None:
        self.rate = SlidingWindowRate(window, started)
        n = self.rate.slots
        fields_end = offset + _SLOT_FIELDS * 8
        self.fields = view[offset:fields_end].cast("d")
        self.rate.stamps = view[fields_end:fields_end + 8 * n].cast("q")
        self.rate.counts = view[fields_end + 8 * n:fields_end + 16 * n].cast("q")

    def add(self, runtime: float, now: float) -> None:
        """Count one task; the sequence number is odd while the fields change."""
        f = self.fields
        f[_S_SEQ] += 1
        f[_S_COUNT] += 1
        f[_S_TOTAL] += runtime
        f[_S_MIN] = _nan_min(f[_S_MIN], runtime)
        f[_S_MAX] = _nan_max(f[_S_MAX], runtime)
        f[_S_LAST_RUN] = now
        self.rate.record(now)
        f[_S_SEQ] += 1

    def release(self) -> None:
        self.fields.release()
        self.rate.stamps.release()  # type: ignore[union-attr]
        self.rate.counts.release()  # type: ignore[union-attr]


def _slot_bytes(window: float) -> int:
    return _SLOT_FIELDS * 8 + 16 * SlidingWindowRate(window, 0).slots


class NodeState:
    """One process's handle on the node's shared statistics file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # threads of one process share slot 0's descriptor
        self._open()

    @classmethod
    def create(cls, path: str, window: float, alpha: float, started: float,
               pool_processes: int = 1) -> NodeState:
        """Create (or replace) the file for a node starting now.

        Args:
            pool_processes: the most pool processes the node will run at once
                (each gets a slot of its own; any others share slot 0).
        """
        slots = 1 + max(1, pool_processes)
        header = [math.nan] * _FIELDS
        header[_F_MAGIC], header[_F_WINDOW], header[_F_ALPHA] = _MAGIC, window, alpha
        header[_F_STARTED], header[_F_SLOTS] = started, slots
        rate_slots = SlidingWindowRate(window, started).slots
        slot = struct.pack(f"<{_SLOT_FIELDS}d", 0.0, 0.0, 0.0, math.nan, math.nan, math.nan,
                           0.0, 0.0)
        slot += struct.pack(f"<{rate_slots}q", *([-1] * rate_slots)) + bytes(8 * rate_slots)
        payload = struct.pack(f"<{_FIELDS}d", *header) + slot * slots
        assert len(payload) == _HEADER_BYTES + slots * _slot_bytes(window)
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
        magic = window = slots = 0.0
        if len(head) == _HEADER_BYTES:
            magic, window, _, _, slots = struct.unpack_from("<5d", head)
        if (magic != _MAGIC or not 1 <= slots <= 4096
                or size < _HEADER_BYTES + int(slots) * _slot_bytes(window)):
            os.close(self._fd)
            raise ValueError(f"{self.path} is not a tasker node state file")
        self._map = mmap.mmap(self._fd, size)
        view = memoryview(self._map)
        self._header = view[:_HEADER_BYTES].cast("d")
        window, started = self._header[_F_WINDOW], self._header[_F_STARTED]
        step = _slot_bytes(window)
        self._slots = [_Slot(view, _HEADER_BYTES + i * step, window, started)
                       for i in range(int(self._header[_F_SLOTS]))]
        view.release()
        index = _pool_index()
        # A slot of its own for a pool process; None: the shared slot 0, under the lock.
        self._own = (self._slots[1 + index]
                     if index is not None and 1 + index < len(self._slots) else None)
        if self._own is not None and self._own.fields[_S_SEQ] % 2:
            # The slot's previous writer was killed mid-update; it has one writer now.
            self._own.fields[_S_SEQ] += 1

    def _ensure_own_fd(self) -> None:
        # After a fork: this process's own descriptor (an flock belongs to an
        # open file description, which fork shares) and its own slot.
        # (A fork counter, not os.getpid(): this runs for every task.)
        if self._forks != _forks_seen:
            # Another thread of the parent may have held the lock at the fork:
            # the child's copy would never be released.
            self._lock = threading.Lock()
            self.close()  # the inherited descriptor and map; the parent keeps its own
            self._open()

    def record_finished(self, runtime: float, now: float) -> None:
        """Count one finished task that ran for ``runtime`` seconds."""
        self._ensure_own_fd()
        h = self._header
        if self._own is not None:  # the only writer of this slot: no lock
            self._own.add(runtime, now)
            h[_F_EMA] = ema_update(_none_if_nan(h[_F_EMA]), runtime, h[_F_ALPHA])
            return
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._slots[0].add(runtime, now)
                h[_F_EMA] = ema_update(_none_if_nan(h[_F_EMA]), runtime, h[_F_ALPHA])
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read(self, now: float) -> NodeStateReading:
        """The statistics of all slots together."""
        self._ensure_own_fd()
        count = 0
        total = rate = 0.0
        low = high = last = math.nan
        for slot in self._slots:
            fields, slot_rate = self._consistent(slot, now)
            count += int(fields[_S_COUNT])
            total += fields[_S_TOTAL]
            rate += slot_rate
            low = _nan_min(low, fields[_S_MIN])
            high = _nan_max(high, fields[_S_MAX])
            last = _nan_max(last, fields[_S_LAST_RUN])
        return NodeStateReading(
            processing_rate=rate,
            latency_ema_seconds=_none_if_nan(self._header[_F_EMA]),
            runs=count,
            average_seconds=total / count if count else None,
            min_seconds=_none_if_nan(low),
            max_seconds=_none_if_nan(high),
            last_run_time=_none_if_nan(last),
        )

    @staticmethod
    def _consistent(slot: _Slot, now: float) -> tuple[list[float], float]:
        """A copy of a slot's fields and its rate, not torn by a concurrent writer."""
        for _ in range(_READ_TRIES):
            seq = slot.fields[_S_SEQ]
            if seq % 2 == 0:
                fields = slot.fields.tolist()
                rate = slot.rate.rate(now)
                if slot.fields[_S_SEQ] == seq:
                    return fields, rate
        # A writer killed mid-update leaves the sequence odd for good: its
        # numbers are whole values anyway, at most one task short.
        return slot.fields.tolist(), slot.rate.rate(now)

    def close(self) -> None:
        # Views into the map must be released before it can be closed.
        for slot in self._slots:
            slot.release()
        self._header.release()
        self._map.close()
        os.close(self._fd)
