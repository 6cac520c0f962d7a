"""Native histogram buckets recorded in a process's multiprocess files.

Each populated bucket of one labelled histogram is one value in the process's
``native_<identity>.db`` file (prometheus_client's file format, tasker's value
class), keyed like any other value with one more label, ``bucket``:
``"<schema>:<index>"``, or ``"<schema>:zero"`` for the zero bucket. So the
native buckets follow the files' rules: written through at every observation,
moved into a pool process's own file after a fork, folded into the node's
archive when the process exits, merged by :class:`~tasker.metrics.store.MetricStore`.
The observation's count and sum are the classic histogram's ``_count`` and
``_sum`` (the same observations), so they are not kept twice.

Bounded: observations at or below :data:`ZERO_THRESHOLD` (2**-20 s, about a
microsecond: a bucket bound in every schema) count in the zero bucket and
those above :data:`HIGHEST` in the highest bucket, so one labelled histogram
of one process holds at most ``log2(HIGHEST / ZERO_THRESHOLD) * 2**schema``
buckets (about 1,170 at schema 5), and in practice the few dozen its
runtimes fall into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasker.contracts.prometheus import new_value
from tasker.metrics.native import bucket_index

__all__ = ["NativeSeries", "NativeObserving", "NATIVE_TYPE", "BUCKET_LABEL", "ZERO_THRESHOLD",
           "HIGHEST", "parse_bucket"]

#: The file type (``native_<identity>.db``) and the series' type in the store.
NATIVE_TYPE = "native"
#: The label of a native bucket's key: ``<schema>:<index>`` or ``<schema>:zero``.
BUCKET_LABEL = "bucket"
#: Seconds: the zero bucket's width (about a microsecond), and a day: they bound
#: the buckets one histogram can fill.
ZERO_THRESHOLD = 2.0 ** -20
HIGHEST = 86400.0


class NativeSeries:
    """The native buckets of one labelled histogram in this process."""

    __slots__ = ("_name", "_help", "_labelnames", "_labelvalues", "_schema", "_buckets",
                 "_zero", "_highest")

    def __init__(self, metric_name: str, help_text: str, labelnames: Sequence[str],
                 labelvalues: Sequence[str], schema: int) -> None:
        self._name, self._help, self._schema = metric_name, help_text, schema
        self._labelnames = (*labelnames, BUCKET_LABEL)
        self._labelvalues = tuple(labelvalues)
        self._buckets: dict[int, Any] = {}
        self._zero: Any = None
        self._highest = bucket_index(HIGHEST, schema)

    def _value(self, bucket: str) -> Any:
        # The installed value class: tasker's in a worker node (contracts/mmap_values.py).
        return new_value(NATIVE_TYPE, self._name, f"{self._name}_native",
                         self._labelnames, (*self._labelvalues, bucket), self._help)

    def pair(self, amount: float) -> tuple[Any, float]:
        """(the value of the bucket ``amount`` falls into, 1.0): for ``add_many``."""
        if amount <= ZERO_THRESHOLD:
            zero = self._zero
            if zero is None:
                zero = self._zero = self._value(f"{self._schema}:zero")
            return zero, 1.0
        index = min(bucket_index(amount, self._schema), self._highest)
        found = self._buckets.get(index)
        if found is None:
            found = self._buckets[index] = self._value(f"{self._schema}:{index}")
        return found, 1.0

    def observe(self, amount: float) -> None:
        value, one = self.pair(amount)
        value.inc(one)


class NativeObserving:
    """A classic histogram child whose ``observe`` also fills the native buckets."""

    __slots__ = ("_child", "_native")

    def __init__(self, child: Any, native: NativeSeries) -> None:
        self._child, self._native = child, native

    def observe(self, amount: float, *args: Any, **kwargs: Any) -> None:
        self._child.observe(amount, *args, **kwargs)
        self._native.observe(amount)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._child, name)


def parse_bucket(value: str) -> tuple[int, int | None] | None:
    """``"5:37"`` -> (5, 37); ``"5:zero"`` -> (5, None); None if malformed."""
    schema, _, index = value.partition(":")
    try:
        return int(schema), None if index == "zero" else int(index)
    except ValueError:
        return None
