"""Metric values kept in a node's multiprocess files: prometheus_client's format, a shorter write.

prometheus_client's multiprocess value (``values.MultiProcessValue``) does, at
every update: take a lock, call the process identifier to notice a fork, look
the key's position up in a dict, and pack two doubles through two more calls.
A pool process makes about eight updates per task, on the path between one
task and the next, so tasker installs this value class instead. It keeps
what matters to the readers: the same files (``<type>[_<mode>]_<identity>.db``),
the same keys, the same layout, the same two doubles per value (so the
stock ``MultiProcessCollector`` and tasker's ``MetricStore`` read them alike).
What it saves: the key's position is looked up once, and a fork is noticed by
a generation number that ``os.register_at_fork`` bumps in the child, not by a
call per update.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.mmap_dict import MmapedDict, mmap_key

__all__ = ["multiprocess_value_class", "adder_of", "add_each"]

#: Packs a value and its timestamp; written with ONE slice assignment, never
#: ``struct.pack_into``: CPython's ``pack_into`` zero-fills the target bytes
#: before it writes them, so a scrape reading the file at that instant reads
#: 0, a counter reset to Prometheus (3 % of concurrent reads measured here;
#: prometheus_client's ``mmap_dict.py`` carries the same warning). A slice
#: assignment is one ``memcpy`` of 16 bytes: the value is 8-byte aligned, so
#: each double is replaced by one store, never seen half-written
#: (``tests/unit/test_concurrent_reads.py``).
_pack_two_doubles = struct.Struct(b"dd").pack

#: Bumped in every forked child: a value from before the fork must reopen its
#: files under the child's identity before it writes.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def add_each(updates: Iterable[tuple[Any, float]]) -> None:
    """``value.inc(amount)`` for each pair: for any value class (the stock ones too)."""
    for value, amount in updates:
        value.inc(amount)


def adder_of(value: Any) -> Callable[[Iterable[tuple[Any, float]]], None]:
    """The fastest way to add to several values of ``value``'s class at once."""
    return getattr(type(value), "add_many", add_each)


def multiprocess_value_class(process_identifier: Callable[[], str],
                             mmaped_dict: type[MmapedDict] = MmapedDict) -> type:
    """A ``prometheus_client.values.ValueClass`` writing ``<prefix>_<identity>.db`` files.

    ``mmaped_dict`` must keep ``MmapedDict``'s layout and its ``_positions``
    and ``_m`` attributes (tasker passes its ``AllocatedMmapedDict``).
    """
    files: dict[str, MmapedDict] = {}
    values: list[Any] = []
    # One lock for all values, as prometheus_client has: the thread pool
    # updates from several threads of one process.
    lock = threading.Lock()
    opened_in = [_fork_generation]

    def new_lock_in_child() -> None:
        # billiard forks pool processes from the MainProcess's main thread
        # while its other threads (the received-count flush, exit counts, a
        # scrape) may hold the lock; the child has only the forking thread,
        # so nobody would ever release that copy. The child's values reopen
        # their own files at their first update, so nothing half-written in
        # the parent's memory is carried over.
        nonlocal lock
        lock = threading.Lock()

    os.register_at_fork(after_in_child=new_lock_in_child)

    def enter_this_process() -> None:
        """Lock held: the first update since a fork; the files open are the parent's."""
        for f in files.values():
            f.close()
        files.clear()
        opened_in[0] = _fork_generation

    class MmapedValue:
        """A float in this process's mmaped file; written through at every update.

        After a fork, a value inherited from the parent moves into the child's
        own file at its first update, not before: a pool process inherits
        every series the MainProcess created (each task name's zero-valued
        counters, every queue's) and writes a few of them, and only those
        take room in its files, in the node's shared memory.
        """

        _multiprocess = True

        def __init__(self, typ: str, metric_name: str, name: str, labelnames: Any,
                     labelvalues: Any, help_text: str, multiprocess_mode: str = "",
                     **_: Any) -> None:
            self._params = (typ, metric_name, name, labelnames, labelvalues, help_text,
                            multiprocess_mode)
            self._generation = -1
            with lock:
                self._open()
                values.append(self)

        def _open(self) -> None:
            """Lock held: this value's place in this process's file (adds the key if new)."""
            if opened_in[0] != _fork_generation:
                enter_this_process()
            typ, metric_name, name, labelnames, labelvalues, help_text, mode = self._params
            prefix = f"{typ}_{mode}" if typ == "gauge" else typ
            file = files.get(prefix)
            if file is None:
                path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"],
                                    f"{prefix}_{process_identifier()}.db")
                file = files[prefix] = mmaped_dict(path)
            key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            value, timestamp = file.read_value(key)  # adds the key if new
            # OSError (no space) above leaves the value as it was: retried at its next update.
            self._file, self._value, self._timestamp = file, value, timestamp
            self._position = file._positions[key]
            self._generation = _fork_generation

        def _write(self) -> None:
            position = self._position
            self._file._m[position:position + 16] = _pack_two_doubles(self._value,
                                                                      self._timestamp)

        def inc(self, amount: float) -> None:
            with lock:
                if self._generation != _fork_generation:
                    self._open()
                self._value += amount
                self._timestamp = 0.0
                self._write()

        @staticmethod
        def add_many(updates: Iterable[tuple[Any, float]]) -> None:
            """``value.inc(amount)`` for each pair, under one taking of the lock.

            A pool process's four updates at the start of a task (and four at
            its end) cost a quarter of four separate ``inc`` calls through
            prometheus_client's wrappers. Every value must be of this class.
            """
            with lock:
                for value, amount in updates:
                    if value._generation != _fork_generation:
                        value._open()
                    value._value += amount
                    value._timestamp = 0.0
                    position = value._position
                    value._file._m[position:position + 16] = _pack_two_doubles(value._value,
                                                                               0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            with lock:
                if self._generation != _fork_generation:
                    self._open()
                self._value = value
                self._timestamp = timestamp or 0.0
                self._write()

        def set_exemplar(self, exemplar: Any) -> None:
            return  # prometheus_client keeps no exemplars in multiprocess mode either

        def get(self) -> float:
            with lock:
                if self._generation != _fork_generation:
                    self._open()
                return self._value

        def get_exemplar(self) -> None:
            return None

        @classmethod
        def close_all_files(cls) -> None:
            with lock:
                for f in files.values():
                    f.close()
                files.clear()
                values.clear()

    return MmapedValue
