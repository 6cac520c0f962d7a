"""A minimal protobuf wire-format reader for tests: what tasker's encoder wrote, field by field.

Independent of tasker's encoder (it shares no code with tasker.metrics.protobuf),
so a test can check field numbers and values against metrics.proto.
"""

from __future__ import annotations

import struct
from typing import Any


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value): ints for varints, floats for 64-bit, bytes for length-delimited."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value = data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def delimited(data: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos < len(data):
        length, pos = _varint(data, pos)
        messages.append(data[pos:pos + length])
        pos += length
    return messages


def families(data: bytes) -> dict[str, dict[str, Any]]:
    """MetricFamily messages by name: type, help and metrics (labels plus the value message)."""
    out: dict[str, dict[str, Any]] = {}
    for message in delimited(data):
        family: dict[str, Any] = {"metrics": [], "type": 0}
        for number, value in fields(message):
            if number == 1:
                family["name"] = value.decode()
            elif number == 2:
                family["help"] = value.decode()
            elif number == 3:
                family["type"] = value
            elif number == 4:
                family["metrics"].append(metric(value))
        out[family["name"]] = family
    return out


def metric(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": {}}
    for number, value in fields(data):
        if number == 1:
            pair = dict(fields(value))
            out["labels"][pair[1].decode()] = pair.get(2, b"").decode()
        elif number in (2, 3, 5):  # gauge, counter, untyped: value in field 1
            out["value"] = dict(fields(value)).get(1, 0.0)
        elif number == 7:
            out["histogram"] = histogram(value)
    return out


def histogram(data: bytes) -> dict[str, Any]:
    h: dict[str, Any] = {"buckets": [], "spans": [], "deltas": [], "zero_count": 0}
    for number, value in fields(data):
        if number == 1:
            h["count"] = value
        elif number == 2:
            h["sum"] = value
        elif number == 3:
            b = dict(fields(value))
            h["buckets"].append((b.get(2, 0.0), b.get(1, 0)))
        elif number == 5:
            h["schema"] = zigzag(value)
        elif number == 6:
            h["zero_threshold"] = value
        elif number == 7:
            h["zero_count"] = value
        elif number == 12:
            span = dict(fields(value))
            h["spans"].append((zigzag(span.get(1, 0)), span.get(2, 0)))
        elif number == 13:
            h["deltas"].append(zigzag(value))
    return h


def native_buckets(h: dict[str, Any]) -> dict[int, int]:
    """Index -> count of a decoded native histogram's positive buckets."""
    out, index, count, deltas = {}, None, 0, iter(h["deltas"])
    for offset, length in h["spans"]:
        index = offset if index is None else index + offset
        for _ in range(length):
            count += next(deltas)
            if count:
                out[index] = count
            index += 1
    return out
