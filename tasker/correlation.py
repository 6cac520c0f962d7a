"""Correlation ids and publish stamps carried in every message's headers.

Every message tasker publishes carries:

* ``tasker_correlation_id``: a UUIDv7 naming one piece of work. A message
  published while a task runs inherits the running task's id (so chains,
  groups, chords and retries keep it); a new piece of work gets a new one.
  (Not ``correlation_id``: Celery sets the AMQP property of that name to the
  task id, and the worker copies it over any header of that name.)
* ``tasker_parent_correlation_id``: the id of the work that started this one.
* ``tasker_published_at``: Unix time of publishing, for queue wait and the
  age of the oldest waiting message, as a decimal string with microseconds
  (``"1796083135.886345"``). Not a JSON number: the worker's MainProcess
  decodes every message and kombu's Redis transport encodes it again (its
  copy in the ``unacked`` hash), and turning a float into its shortest
  decimal costs about 3 µs there, on the node's bottleneck, where a string
  costs nothing. Readers accept a number too (older publishers).
* ``tasker_delivery``: on workflow step messages only (the one kind of
  message with two delivery paths), ``event`` (dispatched when its
  dependencies finished) or ``poll`` (re-dispatched by the recovery poller).
  Any other message is delivered by its publish alone; stamping that on every
  message would cost each one about 5,000 instructions in the worker's
  MainProcess (decoded, re-encoded for kombu's unacked copy, pickled to the
  pool process) for a value that never varies.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery.signals import before_task_publish, task_prerun

from tasker.contracts import celery_worker
from tasker.headers import (
    CORRELATION_HEADER,
    DELIVERY_HEADER,
    PARENT_HEADER,
    PUBLISHED_AT_HEADER,
)

__all__ = [
    "CORRELATION_HEADER",
    "PARENT_HEADER",
    "PUBLISHED_AT_HEADER",
    "DELIVERY_HEADER",
    "uuid7",
    "current_correlation_id",
    "current_parent_correlation_id",
    "new_correlation",
    "is_valid_correlation_id",
    "publish_stamp",
    "on_receipt",
    "log_task_starts_if_enabled",
]


logger = logging.getLogger("tasker.correlation")
_task_logger = logging.getLogger("tasker.task")

_UUID_FULLMATCH = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch

_current: ContextVar[str | None] = ContextVar("tasker_correlation_id", default=None)
_parent: ContextVar[str | None] = ContextVar("tasker_parent_correlation_id", default=None)


_last_ms = -1
_last_counter = 0


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7) as a string.

    Ids made by one process sort in the order they were made, even within one
    millisecond: the 42 bits after the timestamp are a counter (RFC 9562 §6.2,
    method 1) seeded at random each millisecond; the last 32 bits are random
    on every call, so a forked child counting on from its parent's state (or
    two threads racing here) still makes distinct ids.
    """
    global _last_ms, _last_counter  # the generator's order is per process by definition
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    if ms > _last_ms:
        counter = rand >> 39  # 41 random bits: the top bit leaves room to count on
    else:  # same millisecond, or the clock went back: count on from the last id
        ms, counter = _last_ms, _last_counter + 1
        if counter >> 42:  # counter exhausted: borrow the next millisecond
            ms, counter = ms + 1, rand >> 39
    _last_ms, _last_counter = ms, counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= (counter >> 30) << 64  # 12 counter bits (rand_a)
    value |= 0b10 << 62  # variant
    value |= (counter & 0x3FFF_FFFF) << 32  # 30 more counter bits
    value |= rand & 0xFFFF_FFFF  # 32 random bits
    return str(uuid.UUID(int=value))


def publish_stamp(unix_time: float) -> str:
    """The ``tasker_published_at`` value of a time: a decimal string (see the module doc)."""
    return f"{unix_time:.6f}"


def is_valid_correlation_id(value: object) -> bool:
    """A correlation id is a canonical lower-case UUID string (any version)."""
    # Checked for every message in the MainProcess: the cheapest form measured.
    return type(value) is str and len(value) == 36 and _UUID_FULLMATCH(value) is not None


def current_correlation_id() -> str | None:
    """The correlation id of the work in this context, if any.

    Inside a :func:`new_correlation` block, that block's id; otherwise the id
    of the task running in this thread (from its request's headers).
    """
    return _current_ids()[0]


def current_parent_correlation_id() -> str | None:
    return _current_ids()[1]


def _current_ids() -> tuple[str | None, str | None]:
    """(correlation id, parent id): a :func:`new_correlation` block's, else the running task's."""
    if _current.get() is not None:
        return _current.get(), _parent.get()
    return _running_task_ids()


def _running_task_ids() -> tuple[str | None, str | None]:
    """(correlation id, parent id) of the task running in this thread.

    Read from the request when asked (publishing, logging, tracing), not set
    up for every task: receivers in the pool process cost every task, and on
    a node whose CPUs are all busy that time is taken from the MainProcess
    and Redis (see BENCHMARKS.md).
    """
    task = celery_worker.current_task()  # Celery's private one, checked at start
    if task is None:
        return None, None
    request = task.request
    if getattr(request, "called_directly", True):  # a plain function call, not a run
        return None, None
    cid = getattr(request, CORRELATION_HEADER, None)
    if not is_valid_correlation_id(cid):
        # Only a message that bypassed the MainProcess's receipt (an eager
        # apply()) lacks one; keep it on the request so the whole run shares it.
        cid = uuid7()
        setattr(request, CORRELATION_HEADER, cid)
    parent = getattr(request, PARENT_HEADER, None)
    return cid, parent if is_valid_correlation_id(parent) else None


@contextmanager
def new_correlation(correlation_id: str | None = None,
                    parent_correlation_id: str | None = None) -> Iterator[str]:
    """Start a new piece of work: messages published inside carry a new id.

    Inside a running task, the default parent is the running task's id, so a
    nested workflow can be traced back to the one that started it.
    """
    if correlation_id is not None and not is_valid_correlation_id(correlation_id):
        raise ValueError(f"correlation id must be a UUID string, got {correlation_id!r}")
    parent = (parent_correlation_id if parent_correlation_id is not None
              else current_correlation_id())
    cid = correlation_id or uuid7()
    token, parent_token = _current.set(cid), _parent.set(parent)
    try:
        yield cid
    finally:
        _current.reset(token)
        _parent.reset(parent_token)


@before_task_publish.connect(weak=False)
def _stamp_headers(headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    """Publisher side: stamp the time and the correlation ids (the delivery path: see above)."""
    if headers is None:
        return
    headers[PUBLISHED_AT_HEADER] = publish_stamp(time.time())
    given = headers.get(CORRELATION_HEADER)
    if not is_valid_correlation_id(given):
        # Inside a task (or a new_correlation block) the context decides;
        # otherwise this publish starts new work.
        cid, parent = _current_ids()
        headers[CORRELATION_HEADER] = cid or uuid7()
        if parent and not headers.get(PARENT_HEADER):
            headers[PARENT_HEADER] = parent
    elif not headers.get(PARENT_HEADER):
        # An id given the plain Celery way (``apply_async(headers=...)``): a new
        # id inside running work is nested work, whose parent is that work; the
        # running work's own id keeps the running work's parent.
        cid, parent = _current_ids()
        inherited = parent if given == cid else cid
        if inherited:
            headers[PARENT_HEADER] = inherited
    if PARENT_HEADER in headers and not is_valid_correlation_id(headers[PARENT_HEADER]):
        del headers[PARENT_HEADER]


_logged_missing = False


def on_receipt(task_name: str, headers: MutableMapping[str, Any], log_received: bool) -> bool:
    """MainProcess, on a message's receipt (:mod:`tasker.receipt`): its correlation id.

    With ``log_received`` (``task.received`` is logged: INFO for
    ``tasker.task``), a message without a valid id gets one in ``headers``
    (before Celery copies them into the request the pool process sees) and the
    line is logged with it. Without, only the first message without an id
    gets one here (the receipt module says why). The first message given an
    id here is logged (``correlation.assigned_at_receipt``, WARNING).

    Returns whether a later message without an id still needs this call when
    ``task.received`` is not logged (until one was given an id and logged).
    Never raises.
    """
    global _logged_missing  # once per process
    try:
        given = headers.get(CORRELATION_HEADER)
        # Protocol 2 only (a protocol 1 request is built from the body, not these headers).
        if (not is_valid_correlation_id(given) and "task" in headers
                and (log_received or not _logged_missing)):
            headers[CORRELATION_HEADER] = uuid7()
            if not _logged_missing:
                _logged_missing = True
                logger.warning("correlation.assigned_at_receipt", extra={
                    "task": task_name, "task_id": headers.get("id"),
                    "reason": "invalid header" if given is not None else "no header",
                    "correlation_id": headers[CORRELATION_HEADER]})
        if log_received:
            fields = {"task": task_name, "task_id": headers.get("id"),
                      "correlation_id": headers.get(CORRELATION_HEADER)}
            if is_valid_correlation_id(headers.get(PARENT_HEADER)):
                fields["parent_correlation_id"] = headers[PARENT_HEADER]
            _task_logger.info("task.received", extra=fields)
    except Exception:  # noqa: BLE001 - never fail a message over its correlation id
        logger.debug("correlation.assign_failed", exc_info=True)
    return not _logged_missing


def _log_task_started(**_: Any) -> None:
    _task_logger.debug("task.started")


def log_task_starts_if_enabled() -> None:
    """Log ``task.started`` (DEBUG) in pool processes, if DEBUG is on for ``tasker.task``.

    Connected only then: a receiver costs every task a call even when it
    writes nothing. Called once logging is configured, before the pool forks.
    """
    if _task_logger.isEnabledFor(logging.DEBUG):
        task_prerun.connect(_log_task_started, weak=False)
    else:
        task_prerun.disconnect(_log_task_started)
