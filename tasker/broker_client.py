"""tasker's changes to kombu's Redis transport (client per channel, poller turn, unacked copy).

Moved into tasker's contract with kombu: :mod:`tasker.contracts.kombu_client`
(what it changes and why is told there). This module keeps the names
:mod:`tasker.celeryconfig`, the benchmarks and the tests import.
"""

from __future__ import annotations

from tasker.contracts.kombu_client import _poller_classes, install, installed, uninstall

__all__ = ["install", "uninstall", "installed", "_poller_classes"]
