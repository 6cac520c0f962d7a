"""prometheus_client's multiprocess file format, as tasker reads and writes it.

A file is a 4-byte ``used`` size and 4 bytes of padding, then entries of
(4-byte key length, UTF-8 JSON key padded so that what follows is 8-byte
aligned, double value, double timestamp); a key is ``mmap_key``'s JSON list
``[metric, sample, labels, help]``. The format is private to
prometheus_client (``MmapedDict``): :func:`tasker.contracts.prometheus.check_file_layout`
and ``check_key_shape`` prove it on the installed version when a node starts.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from tasker.contracts.base import installed_version

__all__ = ["HEADER", "FIRST_ENTRY", "UnknownKeyShape", "entry_end", "parse_key", "read_used"]

#: A file's header: the used size (a 4-byte int, then 4 bytes of padding).
HEADER = struct.Struct("<i")
#: Offset of a file's first entry.
FIRST_ENTRY = 8


class UnknownKeyShape(ValueError):
    """A complete key in a metric file that is not ``mmap_key``'s known shape."""


def entry_end(pos: int, length: int) -> int:
    """The end of the entry at ``pos`` whose key is ``length`` bytes; its two doubles
    are the 16 bytes before it.

    The length, the key padded so that the doubles are 8-byte aligned, then
    the value and its timestamp (``MmapedDict._init_value``).
    """
    return pos + 4 + length + (8 - (length + 4) % 8) + 16


def parse_key(key: str) -> tuple[str, str, dict[str, Any], str]:
    """(family name, sample name, labels, help) of a file key.

    Raises ValueError for text that is not JSON (an entry not written yet)
    and :class:`UnknownKeyShape` for JSON of another shape.
    """
    parsed = json.loads(key)
    if (not isinstance(parsed, list) or len(parsed) != 4 or not isinstance(parsed[2], dict)
            or not all(isinstance(parsed[i], str) for i in (0, 1, 3))):
        raise UnknownKeyShape(
            f"prometheus-client {installed_version('prometheus-client')}: a metric file "
            f"key of unknown shape ({key[:80]!r}); tasker's store reads [metric, sample, "
            "labels, help] (tasker.contracts.mmap_format)")
    return parsed[0], parsed[1], parsed[2], parsed[3]


#: Reads of one file until two consecutive copies agree (see read_used).
_READ_TRIES = 3


def read_used(path: str) -> tuple[bytes, int, bool] | None:
    """(the file's used bytes, the used size, whether a second read found them unchanged).

    None for a file whose header is not written yet. Bytes that did not change
    while they were read twice hold no half-copied value.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None  # empty: a process that is just creating it, or junk
        used = HEADER.unpack_from(head)[0]
        if used == 0:
            return None  # a process creating it right now: header not written yet
        if used < FIRST_ENTRY:
            raise ValueError(f"used size {used} is impossible")
        data = head + f.read(used - 8)
        for _ in range(_READ_TRIES):
            f.seek(0)
            again = f.read(len(data))
            if again == data:
                return data, used, True
            data = again  # a writer was at work: compare the next two copies
        return data, used, False
