"""tasker's contract with Celery's worker (and billiard's pool) internals.

What tasker touches, and why:

* ``celery._state.get_current_task`` (private module): the running task, read
  when a message is published or a line logged in it (the public
  ``celery.current_task`` proxy is the fallback);
* the consumer's ``on_decode_error`` (bound into the task consumer by
  Celery's ``Tasks`` step): wrapped to count undecodable messages, which no
  signal reports;
* the consumer's ``on_connection_error_after_connected``: wrapped so that a
  failed close of a lost connection does not stop the node
  (:mod:`tasker.broker_loss`);
* the consumer's ``strategies`` table (task name -> message handler, called
  as ``(message, body, ack, reject, callbacks)``) and ``create_task_handler()``:
  receipt counting wraps Celery's handlers, tasker's periodic work hands
  messages to Celery's own handler;
* billiard's ``Process.index`` (the pool's slot number): a pool process's
  slot in the node state file.

:func:`check` (through :mod:`tasker.contracts`) proves each on the installed
Celery and billiard when a node starts. Every one has a fallback: the public
proxy, a count not kept (said once at start), or no slot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, MutableMapping
from typing import Any

import celery
from billiard.process import current_process

from tasker.contracts.base import Touch

__all__ = ["current_task", "wrap_decode_error_handler", "wrap_connection_error_handler",
           "task_strategies", "task_handler", "pool_process_index", "TOUCHES"]

LIBRARY = "celery"

try:
    from celery._state import get_current_task as _private_current_task
except ImportError:  # pragma: no cover - another Celery: the public proxy below
    _private_current_task = None


def _public_current_task() -> Any:
    proxy = celery.current_task
    return proxy if proxy else None  # the proxy is false when no task runs


#: The running task in this thread, or None (a plain function, resolved once).
current_task: Callable[[], Any] = _private_current_task or _public_current_task

#: Consumer methods the start check found missing or unused by Celery.
_broken: set[str] = set()

DECODE_ERROR_HANDLER = "on_decode_error"
CONNECTION_ERROR_HANDLER = "on_connection_error_after_connected"


def _wrap(c: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    original = None if name in _broken else getattr(c, name, None)
    if original is None:
        return False
    setattr(c, name, wrap(original))
    return True


def wrap_decode_error_handler(c: Any, wrap: Callable[[Callable[..., Any]],
                                                     Callable[..., Any]]) -> bool:
    """Replace consumer ``c``'s ``on_decode_error(message, exc)`` by ``wrap(original)``.

    Must run before Celery's ``Tasks`` step creates the task consumer (a
    consumer step's ``__init__`` does). False where this Celery has none.
    """
    return _wrap(c, DECODE_ERROR_HANDLER, wrap)


def wrap_connection_error_handler(c: Any, wrap: Callable[[Callable[..., Any]],
                                                         Callable[..., Any]]) -> bool:
    """Replace ``c.on_connection_error_after_connected(exc)`` by ``wrap(original)``."""
    return _wrap(c, CONNECTION_ERROR_HANDLER, wrap)


def task_strategies(c: Any) -> MutableMapping[str, Any] | None:
    """Consumer ``c``'s table task name -> message handler (filled by ``update_strategies``).

    None where this Celery keeps no such table: receipt is then not counted
    before the handler (said once at start).
    """
    if "strategies" in _broken:
        return None
    return getattr(c, "strategies", None)


def task_handler(c: Any) -> Callable[[Any], None]:
    """Celery's handler of one task message (what the task consumer calls)."""
    return c.create_task_handler()


def pool_process_index() -> int | None:
    """This process's slot number in a billiard (prefork) pool, or None elsewhere."""
    index = getattr(current_process(), "index", None)
    return index if isinstance(index, int) and index >= 0 else None


# -- the start check -----------------------------------------------------------

# The checks import what they check inside them: they run once, when a worker
# or beat starts, not in every process that imports tasker (pool processes,
# the command line), where those imports would cost start-up time for nothing.


def check_current_task() -> None:
    global current_task  # the start check picks the function callers use
    from celery import Celery  # loaded with celery; here beside the probe that uses it

    app = Celery("tasker-contract-probe", set_as_current=False)

    @app.task(shared=False, name="tasker.contract_probe")
    def probe() -> Any:
        return _private_current_task()

    try:
        if _private_current_task is None:
            raise AssertionError("celery._state.get_current_task is gone")
        if _private_current_task() is not None:
            raise AssertionError("a task is current outside any task")
        running = probe()
        if getattr(running, "name", None) != "tasker.contract_probe":
            raise AssertionError(f"get_current_task() gave {running!r} in a running task")
    except Exception:
        current_task = _public_current_task
        raise
    current_task = _private_current_task


def _consumer_source(*names: str) -> str:
    # lazy: the worker's consumer modules (15 ms) load only where a check runs
    from celery.worker.consumer import consumer, tasks

    parts = [inspect.getsource(getattr(consumer.Consumer, n)) for n in names]
    return "\n".join(parts) + inspect.getsource(tasks.Tasks.start)


def check_decode_error_handler() -> None:
    _broken.discard(DECODE_ERROR_HANDLER)
    if "on_decode_error=c.on_decode_error" not in _consumer_source(DECODE_ERROR_HANDLER):
        _broken.add(DECODE_ERROR_HANDLER)
        raise AssertionError("the Tasks step no longer binds c.on_decode_error")


def check_connection_error_handler() -> None:
    _broken.discard(CONNECTION_ERROR_HANDLER)
    from celery.worker.consumer import consumer  # lazy: see _consumer_source

    if (not callable(getattr(consumer.Consumer, CONNECTION_ERROR_HANDLER, None))
            or CONNECTION_ERROR_HANDLER not in inspect.getsource(consumer.Consumer.start)):
        _broken.add(CONNECTION_ERROR_HANDLER)
        raise AssertionError("Consumer.start no longer calls it")


def check_strategies() -> None:
    _broken.discard("strategies")
    from celery.worker import strategy  # lazy: with the consumer modules (15 ms)
    from celery.worker.consumer import consumer  # lazy: see _consumer_source

    source = _consumer_source("__init__", "update_strategies", "create_task_handler")
    handler = "def task_message_handler(message, body, ack, reject, callbacks"
    if ("self.strategies = " not in source or "strategies[type_]" not in source
            or not hasattr(consumer.Consumer, "create_task_handler")
            or handler not in inspect.getsource(strategy.default)):
        _broken.add("strategies")
        raise AssertionError("the consumer no longer dispatches through self.strategies "
                             "to handlers of (message, body, ack, reject, callbacks)")


def check_pool_index() -> None:
    from billiard import pool  # lazy: billiard's pool module costs 14 ms to import

    if "w.index = " not in inspect.getsource(pool.Pool._create_worker_process):
        raise AssertionError("the pool no longer numbers its processes (w.index)")


TOUCHES = (
    Touch(LIBRARY, "celery._state.get_current_task", check_current_task,
          fallback="the public celery.current_task proxy"),
    Touch(LIBRARY, "Consumer.on_decode_error bound by the Tasks step",
          check_decode_error_handler,
          fallback='tasker_tasks_rejected_total{reason="decode_error"} is not counted'),
    Touch(LIBRARY, "Consumer.on_connection_error_after_connected", check_connection_error_handler,
          fallback="a failed close of a lost broker connection stops the node, as in Celery"),
    Touch(LIBRARY, "Consumer.strategies and create_task_handler()", check_strategies,
          fallback="tasker_tasks_received_total is not counted"),
    Touch("billiard", "Process.index (the pool's slot number)", check_pool_index,
          fallback="pool processes keep no per-slot state"),
)
