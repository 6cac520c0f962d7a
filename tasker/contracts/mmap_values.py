"""Metric values kept in a node's multiprocess files: prometheus_client's format, a shorter write.

Part of tasker's contract with prometheus_client (:mod:`tasker.contracts`):
the value class writes through ``MmapedDict``'s private ``_positions`` and
``_m`` on every update, so it lives here, next to the start check that
proves those names and the file layout on the installed version
(:func:`tasker.contracts.prometheus.check_file_layout`).

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

import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import mmap_dict
from prometheus_client.mmap_dict import MmapedDict

from tasker.contracts.mmap_format import entry_end

__all__ = ["multiprocess_value_class", "adder_of", "add_each", "AllocatedMmapedDict"]

#: Allocation unit of the metric files (a tmpfs charges whole pages).
_PAGE = mmap.PAGESIZE

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
    global _fork_generation  # os.register_at_fork hooks take no arguments
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def add_each(updates: Iterable[tuple[Any, float]]) -> None:
    """``value.inc(amount)`` for each pair: for any value class (the stock ones too)."""
    for value, amount in updates:
        value.inc(amount)


def adder_of(value: Any) -> Callable[[Iterable[tuple[Any, float]]], None]:
    """The fastest way to add to several values of ``value``'s class at once."""
    return getattr(type(value), "add_many", add_each)


def _multiproc_dir() -> str:
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


def multiprocess_value_class(process_identifier: Callable[[], str],
                             mmaped_dict: type[MmapedDict] = MmapedDict,
                             directory: Callable[[], str] = _multiproc_dir) -> type:
    """A ``prometheus_client.values.ValueClass`` writing ``<prefix>_<identity>.db`` files.

    ``mmaped_dict`` must keep ``MmapedDict``'s layout and its ``_positions``
    and ``_m`` attributes (tasker passes its ``AllocatedMmapedDict``).
    ``directory`` is where the files go: ``PROMETHEUS_MULTIPROC_DIR`` at the
    time a file is opened, as prometheus_client has it (the start check
    passes a temporary directory of its own).
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
                path = os.path.join(directory(), f"{prefix}_{process_identifier()}.db")
                file = files[prefix] = mmaped_dict(path)
            # Looked up on the module at each new value (not per update): the
            # key is whatever the installed prometheus_client writes, and the
            # start check proves that tasker's store reads that shape.
            key = mmap_dict.mmap_key(metric_name, name, labelnames, labelvalues, help_text)
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


class AllocatedMmapedDict(MmapedDict):
    """prometheus_client's ``MmapedDict`` with the pages it writes allocated before use.

    prometheus_client sizes its files with ``truncate()``, which leaves them
    sparse. On a full file system (a size-limited tmpfs, the usual home of
    the directory) the first write into an unallocated page of the map then
    kills the process with SIGBUS: a pool process, or the MainProcess and so
    the whole node. ``posix_fallocate`` first turns that into ``OSError``
    (ENOSPC) when a file is opened or an entry added, which the callers
    handle. Only the pages up to the end of the last entry are allocated (a
    file's header page first, then page by page as entries are added), never
    the whole mapped capacity: on a tmpfs every allocated page is memory.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o666)
            size = 0
            try:
                size = os.fstat(fd).st_size
                os.posix_fallocate(fd, 0, _PAGE)  # the header's page
            except OSError:
                if size == 0:  # created just now: leave no empty file behind
                    os.unlink(filename)
                raise
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        # The entry's size as MmapedDict._init_value computes it (the start
        # check proves the layout: tasker.contracts.prometheus.entry_end).
        needed = entry_end(self._used, len(key.encode("utf-8")))
        os.posix_fallocate(self._f.fileno(), 0, -(-needed // _PAGE) * _PAGE)
        super()._init_value(key)
