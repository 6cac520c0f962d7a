"""Native histogram arithmetic, checked against Prometheus' definition of the buckets."""

from __future__ import annotations

import math
import random

import pytest

from tasker.metrics.native import (
    NativeCounts,
    bucket_index,
    reduce_schema,
    spans_and_deltas,
    upper_bound,
)


@pytest.mark.parametrize("schema", [-4, -1, 0, 1, 3, 5, 8])
def test_every_value_lies_in_its_bucket(schema: int) -> None:
    rng = random.Random(schema)
    for _ in range(5000):
        value = math.exp(rng.uniform(-12, 12))
        i = bucket_index(value, schema)
        assert upper_bound(i - 1, schema) < value * (1 + 1e-12)
        assert value <= upper_bound(i, schema) * (1 + 1e-12)


@pytest.mark.parametrize("schema", [-2, 0, 3, 5])
def test_a_bound_belongs_to_the_bucket_it_closes(schema: int) -> None:
    """Upper bounds are inclusive: 1.0 and every bucket's bound close their bucket."""
    for k in range(-10, 11):
        value = upper_bound(k, schema)
        if schema <= 0:  # exact powers of two: the bound itself is in bucket k
            assert bucket_index(value, schema) == k
        assert bucket_index(value * 1.0000001, schema) == k + 1
    assert bucket_index(1.0, schema) == 0


def test_known_indexes_match_client_golang() -> None:
    # Schema 3 (factor 2**(1/8)): 1.1 lies in (2**(1/8), 2**(2/8)] = (1.0905, 1.1892].
    assert bucket_index(1.1, 3) == 2
    assert bucket_index(0.5, 0) == -1
    assert bucket_index(3.0, 0) == 2  # (2, 4]
    assert bucket_index(3.0, -1) == 1  # (1, 4]


def test_reducing_the_schema_merges_exactly() -> None:
    rng = random.Random(1)
    values = [math.exp(rng.uniform(-6, 3)) for _ in range(3000)]
    fine: dict[int, float] = {}
    for v in values:
        i = bucket_index(v, 5)
        fine[i] = fine.get(i, 0) + 1
    for to in (4, 2, 0, -3):
        direct: dict[int, float] = {}
        for v in values:
            i = bucket_index(v, to)
            direct[i] = direct.get(i, 0) + 1
        assert reduce_schema(fine, 5, to) == direct, to


def test_limited_keeps_at_most_the_bucket_limit() -> None:
    buckets = {i: 1.0 for i in range(-300, 300)}
    limited = NativeCounts(5, 2.0, buckets).limited(160)
    assert len(limited.buckets) <= 160 and limited.schema < 5
    assert sum(limited.buckets.values()) == 600 and limited.zero_count == 2.0


def test_spans_and_deltas() -> None:
    spans, deltas = spans_and_deltas({0: 2, 1: 3, 3: 1, 10: 4, -5: 1})
    # -5 alone; 0, 1, (2 empty), 3 in one span; 10 after a gap of 6.
    assert spans == [(-5, 1), (4, 4), (6, 1)]
    assert deltas == [1, 1, 1, -3, 1, 3]
    counts = []
    running = 0
    for d in deltas:
        running += d
        counts.append(running)
    assert counts == [1, 2, 3, 0, 1, 4]
