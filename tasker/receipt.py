"""What the MainProcess does with each task message as it arrives, without a signal.

The MainProcess is what limits a prefork node's throughput. For each message
Celery calls the handler it built for that task name (its *strategy*, in
``consumer.strategies``), which makes the ``Request`` and hands it on. A
consumer bootstep (:class:`Receipt`) wraps each of those handlers, so that
for every message tasker:

1. looks at the message's correlation id (``tasker_correlation_id`` in its
   headers, before Celery copies them into the request): when ``task.received``
   is logged (INFO for ``tasker.task``), an absent or invalid id is replaced
   by a new one and the line carries it; otherwise only the first message
   without an id is given one here, with the ``correlation.assigned_at_receipt``
   warning, and later ones get theirs in the pool process when the task first
   needs it (its first log line, a publish, a span: see
   :func:`tasker.correlation.current_correlation_id`), the same id everywhere
   from then on. Making a UUID for every message of a plain Celery client cost
   the MainProcess about 8,000 instructions each, for an id nothing in the
   MainProcess would have shown;
2. counts it received (``tasker_tasks_received_total``): one addition in
   memory, folded into the counter before every reading
   (:meth:`tasker.metrics.recording.Recorder.flush_received`). Before Celery's
   handler, which may hand the task to a pool process that starts and finishes
   it before this thread runs again: a scrape never sees a task started that
   is not received yet;
3. hands the message to Celery's handler; when Celery refuses it (an invalid
   message raises there), the count is taken back.

It used to be a ``task_received`` receiver. Celery's dispatch of that signal
alone cost every message about 11,000 instructions (``bench.instructions``),
more than everything the receiver did. A side effect of counting here: a
message Celery discards at receipt because it was revoked or has expired is
counted received (and revoked); before, it was counted revoked only. Celery
itself logs such a message as received before it discards it. A message
Celery refuses (an invalid one: the handler raises) is not counted here; it
is counted as rejected.

Nothing here raises into Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any, NamedTuple

from celery import bootsteps

from tasker.contracts import celery_worker
from tasker.correlation import CORRELATION_HEADER, on_receipt
from tasker.metrics import recording

__all__ = ["Receipt", "receiving"]

logger = logging.getLogger("tasker.receipt")
_task_logger = logging.getLogger("tasker.task")

#: Marks a handler this module made (so a restarted consumer never wraps one twice).
_WRAPPED = "_tasker_receipt"

Strategy = Callable[..., Any]


class _Received(NamedTuple):
    """What :func:`tasker.metrics.recording.record_received` reads of a request."""

    name: str
    delivery_info: Any


def receiving(name: str, strategy: Strategy, recorder: recording.Recorder | None,
              log_received: bool) -> Strategy:
    """Celery's handler of ``name``'s messages, with tasker's receipt around it.

    Args:
        name: the task name the handler is for.
        strategy: Celery's handler (``task_message_handler``).
        recorder: the node's recorder; None counts nothing.
        log_received: whether ``task.received`` is logged (decided once, as
            Celery decides for its own "Received task" line).
    """
    #: In-memory counts of the recorder, by the message's (exchange, routing key).
    counts: dict[tuple[Any, Any], recording.ReceivedCount] = {}
    watching = True  # no message without an id seen yet (see the module doc)

    def tasker_receipt(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
        nonlocal watching
        headers: MutableMapping[str, Any] = message.headers
        if log_received:
            on_receipt(name, headers, True)
        elif watching:
            given = headers.get(CORRELATION_HEADER)
            # Only the shape here: a full check costs about 3,000 instructions.
            if given.__class__ is not str or len(given) != 36:
                watching = on_receipt(name, headers, False)
        # Counted before Celery's handler hands the task to the pool: a scrape
        # must never see a task started (or finished) that is not received yet.
        entry = None
        if recorder is not None:
            try:
                info = message.delivery_info
                key = (info.get("exchange"), info.get("routing_key"))
                entry = counts.get(key)
                if entry is None:
                    entry = recorder.received_entry(name, info)  # None: counted already
                    if entry is not None:
                        counts[key] = entry
                if entry is not None:
                    # Only this thread (the event loop) changes it; the flush reads it.
                    entry.counted += 1
            except Exception:  # noqa: BLE001 - a count must never fail a message
                entry = None
                # The recorder's own path, which counts and logs its failures.
                recording.record_received(
                    _Received(name, getattr(message, "delivery_info", None)))
        try:
            return strategy(message, body, ack, reject, callbacks)
        except BaseException:
            if entry is not None:  # Celery refused the message (invalid): not received
                entry.counted -= 1
            raise

    setattr(tasker_receipt, _WRAPPED, True)
    tasker_receipt.__wrapped__ = strategy  # type: ignore[attr-defined]
    return tasker_receipt


class Receipt(bootsteps.StartStopStep):
    """Consumer bootstep: wraps the handler Celery built for each task name.

    Started after Celery's ``Tasks`` step, which builds the handlers (again
    at every reconnect, so this wraps them again then).
    """

    label = "tasker receipt"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        recorder = recording.current()
        log_received = _task_logger.isEnabledFor(logging.INFO)
        strategies = celery_worker.task_strategies(c)
        if strategies is None:  # not the Celery the contract knows: nothing counted here
            return
        for name, strategy in list(strategies.items()):
            if not getattr(strategy, _WRAPPED, False):
                strategies[name] = receiving(name, strategy, recorder, log_received)
