"""Prometheus' protobuf exposition: the one format that carries native histograms.

A Prometheus started with ``--enable-feature=native-histograms`` asks for
``application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
encoding=delimited``: a sequence of ``MetricFamily`` messages
(``io/prometheus/client/metrics.proto`` of prometheus/client_model), each
preceded by its length as a varint. A histogram's message carries the classic
buckets and the native ones side by side, so a server that keeps both (or
either) finds what it needs.

Why an encoder of its own instead of the ``protobuf`` runtime with code
generated from ``metrics.proto``: tasker writes five message types and reads
none, and this is about 150 lines of wire format (varints, zigzag, length
prefixes) with no dependency, no generated code to regenerate and no runtime
version to pin against prometheus_client's and Celery's; the tests decode
what it writes and a real Prometheus scrapes it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric

from tasker.metrics.native import NativeCounts, spans_and_deltas
from tasker.metrics.native_series import ZERO_THRESHOLD

__all__ = ["CONTENT_TYPE", "encode", "accepts_protobuf", "NativeKey"]

CONTENT_TYPE = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
                "encoding=delimited")

#: (family name, sorted label pairs) of one histogram, as the store keys native data.
NativeKey = tuple[str, tuple[tuple[str, str], ...]]

_COUNTER, _GAUGE, _UNTYPED, _HISTOGRAM = 0, 1, 3, 4
_VARINT, _I64, _LEN = 0, 1, 2
_double = struct.Struct("<d").pack


def accepts_protobuf(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for the delimited MetricFamily protobuf."""
    if not accept:
        return False
    for part in accept.split(","):
        params = [p.strip() for p in part.split(";")]
        if params[0].lower() != "application/vnd.google.protobuf":
            continue
        fields = dict(p.split("=", 1) for p in params[1:] if "=" in p)
        quality = fields.get("q", "1")
        if (fields.get("proto") == "io.prometheus.client.MetricFamily"
                and fields.get("encoding") == "delimited" and quality not in ("0", "0.0")):
            return True
    return False


#: Varints of 0..16383 (one or two bytes): counts, deltas and lengths are mostly small.
_SMALL_VARINTS = [bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
                  for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    if 0 <= n < 16384:
        return _SMALL_VARINTS[n]
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _text(field: int, value: str) -> bytes:
    return _len(field, value.encode("utf-8"))


def _f64(field: int, value: float) -> bytes:
    return _tag(field, _I64) + _double(value)


def _uint(field: int, value: int) -> bytes:
    return _tag(field, _VARINT) + _varint(value)


def _sint(field: int, value: int) -> bytes:
    return _tag(field, _VARINT) + _varint((value << 1) ^ (value >> 63))


def _labels(labels: Mapping[str, str]) -> bytes:
    return b"".join(_len(1, _text(1, k) + _text(2, v)) for k, v in sorted(labels.items()))


def _count(value: float) -> int:
    return int(round(value)) if math.isfinite(value) and value > 0 else 0


#: Bucket.upper_bound (field 2, 64-bit) by bound: the same few dozen at every scrape.
_upper_bounds: dict[float, bytes] = {}
_COUNT_TAG, _DELTA_TAG = _tag(1, _VARINT), _tag(13, _VARINT)


def _bucket(le: float, cumulative: float) -> bytes:
    bound = _upper_bounds.get(le)
    if bound is None:
        bound = _f64(2, le)
        if len(_upper_bounds) < 10_000:  # bucket layouts are few; never grow without end
            _upper_bounds[le] = bound
    payload = _COUNT_TAG + _varint(_count(cumulative)) + bound
    return b"\x1a" + _varint(len(payload)) + payload  # field 3, length-delimited


def _histogram(labels: dict[str, str], samples: dict[str, object],
               native: NativeCounts | None) -> bytes:
    count = samples.get("count", 0.0)
    if native is not None:
        native = native.limited()
        # Prometheus refuses a histogram whose count is not its buckets' total
        # (and with it the whole scrape). The classic count and the native
        # buckets sit in two files read a moment apart, so the count sent is
        # the native total: it only grows, as each file's values do.
        count = native.zero_count + math.fsum(native.buckets.values())
    parts = [_uint(1, _count(count)),  # type: ignore[arg-type]
             _f64(2, float(samples.get("sum", 0.0)))]  # type: ignore[arg-type]
    # (+Inf is optional in protobuf: it is the sample count)
    parts += [_bucket(le, cumulative) for le, cumulative in sorted(
        samples.get("buckets", {}).items()) if not math.isinf(le)]  # type: ignore[union-attr]
    if native is not None:
        parts += [_sint(5, native.schema), _f64(6, ZERO_THRESHOLD),
                  _uint(7, _count(native.zero_count))]
        spans, deltas = spans_and_deltas(native.buckets)
        if not spans:  # a no-op span: still a native histogram, with no observation yet
            spans = [(0, 0)]
        parts += [_len(12, _sint(1, offset) + _uint(2, length)) for offset, length in spans]
        parts += [_DELTA_TAG + _varint((d << 1) ^ (d >> 63)) for d in deltas]
    return _len(4, _labels(labels) + _len(7, b"".join(parts)))


def _family(family: Metric, native: Mapping[NativeKey, NativeCounts]) -> bytes:
    metrics: list[bytes] = []  # joined once: += on bytes would copy at every series
    if family.type == "histogram":
        by_labels: dict[tuple[tuple[str, str], ...], dict[str, object]] = {}
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            entry = by_labels.setdefault(tuple(sorted(labels.items())), {"buckets": {}})
            if s.name.endswith("_bucket"):
                entry["buckets"][float(s.labels["le"])] = s.value  # type: ignore[index]
            elif s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
        for key, entry in by_labels.items():
            metrics.append(_histogram(dict(key), entry, native.get((family.name, key))))
        typ, name = _HISTOGRAM, family.name
    elif family.type == "counter":
        for s in family.samples:
            if s.name.endswith("_total"):
                metrics.append(_len(4, _labels(s.labels) + _len(3, _f64(1, s.value))))
        typ, name = _COUNTER, family.name + "_total"
    else:
        field, typ = (2, _GAUGE) if family.type == "gauge" else (5, _UNTYPED)
        for s in family.samples:
            metrics.append(_len(4, _labels(s.labels) + _len(field, _f64(1, s.value))))
        name = family.name if family.type == "gauge" else family.samples[0].name \
            if family.samples else family.name
    return b"".join([_text(1, name), _text(2, family.documentation), _uint(3, typ), *metrics])


def encode(families: Iterable[Metric], native: Mapping[NativeKey, NativeCounts]) -> bytes:
    """The delimited protobuf exposition of ``families``, native buckets attached."""
    out = bytearray()
    for family in families:
        if not family.samples:
            continue
        message = _family(family, native)
        out += _varint(len(message)) + message
    return bytes(out)
