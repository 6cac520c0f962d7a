"""tasker's contract with Celery, kombu, billiard, redis-py and prometheus_client.

Every use tasker makes of a private name (or private file format) of those
libraries lives in this package, behind a small named function, one module
per library or concern:

* :mod:`~tasker.contracts.prometheus`: the value class global, metric
  children's values, the label lock, and the start checks of all
  prometheus_client touches;
* :mod:`~tasker.contracts.mmap_format`: the multiprocess file format (what
  the metric store reads);
* :mod:`~tasker.contracts.mmap_values`: tasker's value class, which writes
  through ``MmapedDict``'s private attributes on every update (the hot path,
  so the class itself lives here);
* :mod:`~tasker.contracts.kombu_redis`: the Redis priority list keys, the
  timer's entries;
* :mod:`~tasker.contracts.kombu_client`: the broker client reuse, the
  poller turn and the unacked copy (kombu's and redis-py's private names);
* :mod:`~tasker.contracts.celery_worker`: the current task, the consumer's
  handlers and strategies, billiard's process index.

:func:`check` proves each touch on the installed versions. It runs when a
worker node or beat starts (the ``worker_init`` and ``beat_init`` receivers
below, before any bootstep is built). A touch with a fallback switches to it
and says so in one line; a touch without one stops the process with one
line naming the library, its version, the touch and why it cannot go on:
never a silently wrong or empty scrape. A version outside the tested range
(:data:`~tasker.contracts.base.TESTED`) is one warning line, not a stop.
See docs/contracts.md.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init, worker_init

from tasker.contracts import celery_worker, kombu_client, kombu_redis, prometheus
from tasker.contracts.base import TESTED, ContractBroken, Touch, installed_version, outside_tested

__all__ = ["check", "check_at_start", "touches", "ContractBroken", "Touch", "TESTED"]

logger = logging.getLogger("tasker.contracts")


def touches() -> tuple[Touch, ...]:
    """Every touch tasker makes, in the order they are checked."""
    return (
        *prometheus.TOUCHES,
        *kombu_redis.TOUCHES,
        Touch("kombu", "Channel._create_client (one redis-py client per channel)",
              kombu_client.check_create_client,
              fallback="kombu builds a redis-py client per command, as without tasker"),
        Touch("kombu", "QoS.append (the unacked copy made from the text received)",
              kombu_client.check_unacked_copy,
              fallback="kombu encodes each message again for its unacked copy, as without "
                       "tasker"),
        *celery_worker.TOUCHES,
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check(only: tuple[Touch, ...] | None = None) -> list[str]:
    """Check every touch against the installed versions.

    Returns:
        the lines to say: each version outside the tested range, each
        fallback taken.

    Raises:
        ContractBroken: a touch without fallback failed; its message is one
            line: ``tasker: <library> <version>: <touch>: <why>; stopping: ...``.
    """
    lines = [line for library in TESTED if (line := outside_tested(library)) is not None]
    for touch in touches() if only is None else only:
        try:
            touch.check()
        except Exception as exc:  # noqa: BLE001 - any failure is the touch failing
            head = (f"tasker: {touch.library} {installed_version(touch.library)}: "
                    f"{touch.what}: {_reason(exc)}")
            if touch.fallback is None:
                raise ContractBroken(
                    f"{head}; stopping: tasker cannot read or write its metrics correctly "
                    "with this version (see docs/contracts.md)") from None
            lines.append(f"{head}; falling back: {touch.fallback}")
    # The poller change has its own gate (the kombu it mirrors); not a fallback to report.
    return lines


def check_at_start() -> None:
    """:func:`check`, then each line logged once; a broken touch stops the process
    with its one line (on stderr, as any ``SystemExit`` message)."""
    try:
        lines = check()
    except ContractBroken as exc:  # Python prints the line to stderr; exit status 1
        raise SystemExit(str(exc)) from None
    for line in lines:
        logger.warning("contracts.fallback", extra={"reason": line})


@worker_init.connect(weak=False)
def _check_worker(**_: Any) -> None:
    check_at_start()


@beat_init.connect(weak=False)
def _check_beat(**_: Any) -> None:
    check_at_start()
