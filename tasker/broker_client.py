"""One redis-py client per kombu Redis channel, and a shorter poller turn.

Moved into tasker's contract with kombu: :mod:`tasker.contracts.kombu_client`
(what it changes and why is told there). This module keeps the names
:mod:`tasker.celeryconfig`, the benchmarks and the tests import.
"""

from __future__ import annotations

from tasker.contracts.kombu_client import _poller_classes, install, installed, uninstall

__all__ = ["install", "uninstall", "installed", "_poller_classes"]
