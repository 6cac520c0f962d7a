"""Metric values kept in a node's multiprocess files: prometheus_client's format, a shorter write.

The value class writes through prometheus_client's private ``MmapedDict``
attributes on every update, so it lives in tasker's contract with
prometheus_client: :mod:`tasker.contracts.mmap_values` (what it saves and why
is told there). This module keeps the names recording code and tests import.
"""

from __future__ import annotations

from tasker.contracts.mmap_values import add_each, adder_of, multiprocess_value_class

__all__ = ["multiprocess_value_class", "adder_of", "add_each"]
