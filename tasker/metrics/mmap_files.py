"""The metric files a process writes: prometheus_client's format, allocated before use.

:func:`_use_multiprocess_values` points prometheus_client at a node's
directory with tasker's value class, whose files are
:class:`AllocatedMmapedDict`. Both subclass or replace prometheus_client
internals, so they live in tasker's contract with it
(:mod:`tasker.contracts.mmap_values`, checked at start).
"""

from __future__ import annotations

import os

from tasker.contracts.mmap_values import AllocatedMmapedDict, multiprocess_value_class
from tasker.contracts.prometheus import install_value_class
from tasker.metrics import identity

__all__ = ["AllocatedMmapedDict"]


def _use_multiprocess_values(directory: str) -> None:
    """Point prometheus_client at the node's directory, with pid-reuse-safe names."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    install_value_class(multiprocess_value_class(identity.process_identifier,
                                                 AllocatedMmapedDict))
