"""The metric files a process writes: prometheus_client's format, allocated before use.

:func:`_use_multiprocess_values` points prometheus_client at a node's
directory with tasker's value class (:mod:`tasker.metrics.values`), whose
files are :class:`AllocatedMmapedDict`.
"""

from __future__ import annotations

import mmap
import os

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict

from tasker.metrics import identity
from tasker.metrics.values import multiprocess_value_class

__all__ = ["AllocatedMmapedDict"]

#: Allocation unit of the metric files (a tmpfs charges whole pages).
_PAGE = mmap.PAGESIZE


def _use_multiprocess_values(directory: str) -> None:
    """Point prometheus_client at the node's directory, with pid-reuse-safe names."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = multiprocess_value_class(identity.process_identifier,
                                                 AllocatedMmapedDict)


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
        # The entry's size as MmapedDict._init_value computes it.
        length = len(key.encode("utf-8"))
        needed = self._used + 4 + length + (8 - (length + 4) % 8) + 16
        os.posix_fallocate(self._f.fileno(), 0, -(-needed // _PAGE) * _PAGE)
        super()._init_value(key)
