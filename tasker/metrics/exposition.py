"""Prometheus text format 0.0.4 for ``/metrics``, with each series' line prefix formatted once.

prometheus_client's ``generate_latest`` formats every sample from scratch at
every scrape: it sorts the labels, escapes each name and value and builds the
line. With a few hundred task names a node has thousands of samples, and
that formatting took about as long as reading and merging all the files. The
series of a node hardly change between scrapes, so :class:`TextExposition`
keeps each sample's ``name{labels} `` prefix and only formats the value.

The output is byte for byte ``generate_latest``'s (tests compare them). A
family this fast path does not cover (a name or label name outside the
classic character set, OpenMetrics ``_created``/``_gsum``/``_gcount``
samples, timestamps) is handed to ``generate_latest`` whole.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["TextExposition"]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")
# generate_latest's munging of OpenMetrics types into the classic format.
_TYPE_NAMES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
               "unknown": "untyped"}


class _Families:
    """A collector holding given families (for generate_latest's fallback)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class TextExposition:
    """Renders metric families as ``generate_latest`` does, from cached line prefixes.

    Args:
        max_prefixes: cached prefixes kept before the cache starts over (label
            values that keep changing must not grow it without end).
    """

    def __init__(self, max_prefixes: int = 200_000) -> None:
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._max_prefixes = max_prefixes
        self._lock = threading.Lock()  # scrapes may be served concurrently

    def render(self, collector: Any) -> bytes:
        """The text exposition of everything ``collector.collect()`` yields."""
        families = list(collector.collect())  # reading the files needs no lock of ours
        with self._lock:
            out: list[str] = []
            for metric in families:
                if not self._render_family(metric, out):
                    out.append(generate_latest(_Families([metric])).decode("utf-8"))
            if len(self._prefixes) > self._max_prefixes:
                self._prefixes.clear()
            return "".join(out).encode("utf-8")

    def _render_family(self, metric: Metric, out: list[str]) -> bool:
        """Append ``metric``'s lines to ``out``; False (and nothing appended) if not covered."""
        name = metric.name
        if not _METRIC_NAME.match(name):
            return False
        start = len(out)
        mtype = metric.type
        header_name = name + "_total" if mtype == "counter" else (
            name + "_info" if mtype == "info" else name)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {header_name} {doc}\n"
                   f"# TYPE {header_name} {_TYPE_NAMES.get(mtype, mtype)}\n")
        prefixes = self._prefixes
        for sample in metric.samples:
            if sample.timestamp is not None:
                del out[start:]
                return False
            key = (sample.name, tuple(sample.labels.items()))
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = self._prefix(metric.name, sample.name, sample.labels)
                if prefix is None:
                    del out[start:]
                    return False
                prefixes[key] = prefix
            out.append(f"{prefix}{floatToGoString(sample.value)}\n")
        return True

    @staticmethod
    def _prefix(family: str, name: str, labels: dict[str, str]) -> str | None:
        """``name{labels} `` as generate_latest writes it; None if the fast path does not apply."""
        if not _METRIC_NAME.match(name):
            return None
        if any(name == family + suffix for suffix in _OPENMETRICS_SUFFIXES):
            return None  # generate_latest moves these into families of their own
        if not labels:
            return f"{name} "
        parts = []
        for key, value in sorted(labels.items()):
            if not _LABEL_NAME.match(key):
                return None
            parts.append(f'{key}="{_escape_value(value)}"')
        return f"{name}{{{','.join(parts)}}} "
