"""Native (exponential) histogram arithmetic: bucket indexes, schemas, merging.

Prometheus' native histograms have no fixed bucket list. A *schema* ``s``
(-4..8) splits every power of two into ``2**s`` buckets whose bounds grow by
the factor ``2 ** (2 ** -s)``; bucket ``i`` holds the observations ``v`` with
``base**(i-1) < v <= base**i``. Observations at or below the *zero threshold*
go to a zero bucket. Two histograms of the same schema merge by adding the
counts of equal indexes, so the files of every pool process (alive or exited)
merge exactly; a histogram of a finer schema turns into a coarser one exactly
too (``reduce_schema``): each coarse bucket is the sum of ``2**k`` fine ones.

The index is computed as client_golang computes it (``math.Frexp`` and a
search in the bounds of one power of two), so tasker puts an observation in
the bucket any other Prometheus client would.

No Celery, no prometheus_client: plain arithmetic, tested on its own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["bucket_index", "upper_bound", "reduce_schema", "NativeCounts", "DEFAULT_SCHEMA",
           "MAX_BUCKETS", "spans_and_deltas"]

# The zero bucket's threshold is where observations are recorded:
# tasker.metrics.native_series.ZERO_THRESHOLD.
#: 32 buckets per power of two: neighbouring bounds 2.2 % apart, so a quantile
#: interpolated inside one bucket is off by less than that.
DEFAULT_SCHEMA = 5
#: Most buckets one exposed histogram keeps; more, and it is served at a
#: coarser schema (merged exactly), as client_golang's bucket limit does.
MAX_BUCKETS = 160

#: For each schema 1..8: the bounds of its buckets inside [0.5, 1).
_BOUNDS: dict[int, list[float]] = {
    s: [2.0 ** (j / 2 ** s - 1) for j in range(2 ** s)] for s in range(1, 9)}


def bucket_index(value: float, schema: int) -> int:
    """The index of the bucket holding ``value`` (> the zero threshold) at ``schema``."""
    frac, exp = math.frexp(value)
    if schema > 0:
        bounds = _BOUNDS[schema]
        return bisect.bisect_left(bounds, frac) + (exp - 1) * len(bounds)
    key = exp - 1 if frac == 0.5 else exp
    offset = (1 << -schema) - 1
    return (key + offset) >> -schema


def upper_bound(index: int, schema: int) -> float:
    """The (inclusive) upper bound of bucket ``index``: ``2 ** (index * 2 ** -schema)``."""
    return 2.0 ** (index * 2.0 ** -schema)


def reduce_schema(counts: Mapping[int, float], schema: int, to: int) -> dict[int, float]:
    """Bucket counts at ``schema`` turned into the coarser schema ``to`` (exact)."""
    if to > schema:
        raise ValueError(f"cannot refine schema {schema} to {to}")
    shift = schema - to
    merged: dict[int, float] = {}
    for index, count in counts.items():
        # Bucket i of schema s lies in bucket ceil(i / 2**k) of schema s - k.
        coarse = -((-index) >> shift)
        merged[coarse] = merged.get(coarse, 0.0) + count
    return merged


@dataclass
class NativeCounts:
    """One native histogram: the zero bucket and the positive buckets by index."""

    schema: int
    zero_count: float = 0.0
    buckets: dict[int, float] = field(default_factory=dict)

    def limited(self, max_buckets: int = MAX_BUCKETS) -> NativeCounts:
        """The same histogram at the finest schema that needs at most ``max_buckets``."""
        schema, buckets = self.schema, self.buckets
        while len(buckets) > max_buckets and schema > -4:
            schema -= 1
            buckets = reduce_schema(self.buckets, self.schema, schema)
        return NativeCounts(schema, self.zero_count, buckets)


def spans_and_deltas(buckets: Mapping[int, float]) -> tuple[list[tuple[int, int]], list[int]]:
    """The protobuf form of positive buckets: spans (offset, length) and count deltas.

    Empty buckets between two populated ones cost less inside a span (a delta
    of the count) than a new span (two numbers), so gaps of up to two buckets
    are filled with zeros, as client_golang does.
    """
    indexes = sorted(i for i, c in buckets.items() if c)
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    previous_count = 0
    previous_index: int | None = None
    for index in indexes:
        gap = index - previous_index - 1 if previous_index is not None else None
        if gap is not None and gap <= 2:
            for _ in range(gap):  # zeros inside the current span
                deltas.append(-previous_count)
                previous_count = 0
            spans[-1] = (spans[-1][0], spans[-1][1] + gap + 1)
        else:
            offset = index if previous_index is None else gap
            spans.append((offset, 1))  # type: ignore[arg-type]
        count = int(round(buckets[index]))
        deltas.append(count - previous_count)
        previous_count = count
        previous_index = index
    return spans, deltas
