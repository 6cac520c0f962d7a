"""tasker's contract with kombu's Redis key scheme and its timer.

What tasker touches, and why:

* the list key of each priority level of a queue (kombu's private
  ``Channel._q_for_pri``): the broker sampler and the workflow backlog read
  every level of a queue in one script, without a channel per queue;
* the entries of kombu's timer (``Timer.queue``, each ``.entry.args``): the
  worker view counts the ETA/countdown tasks waiting in it;
* the layout of kombu's ``unacked`` hash values (``[message, exchange,
  routing_key]`` as JSON, written by ``QoS.append``) and of its binding
  sets' members (``routing_key + sep + pattern + sep + queue`` in
  ``_kombu.binding.<exchange>``): the broker sampler counts each queue's
  unacked messages from them, in a server-side script;
* a Redis channel's ``_size`` (every priority level's ``LLEN`` in one round
  trip): the periodic reader looks whether its queue holds anything before
  it takes (:mod:`tasker.periodic`), once a second.

:func:`check` compares :func:`priority_list_keys` with kombu's own
``_q_for_pri`` for the default steps and a few others (no connection: the
method runs on a stand-in channel), and schedules a probe entry on a timer
of its own. A key scheme of another shape stops the node (queue depths and
backlogs would be read from the wrong keys: silently zero); a timer of
another shape makes the scheduled count unknown (not exported) instead.
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Iterable
from typing import Any

from tasker.contracts.base import Touch

__all__ = ["priority_list_keys", "timer_entry_args", "queue_size", "unacked_layout_known",
           "TOUCHES"]

LIBRARY = "kombu"


def priority_list_keys(queue: str, priority_steps: Iterable[int], sep: str) -> list[str]:
    """The list key of each priority level of ``queue``, in the order kombu consumes them.

    kombu's ``Channel._q_for_pri`` for each step: step 0 is the bare queue
    name, any other step is ``queue + sep + step``. ``priority_steps`` and
    ``sep`` are the channel's (its transport options).
    """
    return [f"{queue}{sep}{step}" if step else queue for step in priority_steps]


#: False when the start check found a timer of another shape.
_timer_known = True


def timer_entry_args(timer: Any) -> list[tuple[Any, ...]] | None:
    """The ``args`` of every entry waiting in a kombu timer; None when they cannot be known."""
    if not _timer_known:
        return None
    return [getattr(getattr(waiting, "entry", None), "args", None) or ()
            for waiting in list(timer.queue)]


#: False when the start check found another unacked or binding layout.
_unacked_layout_known = True


def unacked_layout_known() -> bool:
    """Whether the sampler may read kombu's unacked hash and binding sets (see the check)."""
    return _unacked_layout_known


def check_unacked_layout() -> None:
    """kombu writes the layouts the broker sampler's script reads (its own code says so)."""
    import inspect

    # lazy: 69 ms; loaded by a node's start check, not by every importer of tasker
    from kombu.transport import redis as kombu_redis

    global _unacked_layout_known  # the start check's outcome, read by the sampler
    _unacked_layout_known = False
    append = kombu_redis.QoS.append
    wants = (
        (getattr(append, "__wrapped__", append), "dumps([message._raw, EX, RK])"),
        (kombu_redis.QoS.restore_by_tag, "M, EX, RK = loads("),
        (kombu_redis.Channel._queue_bind,
         "self.sep.join([routing_key or '', pattern or '', queue or ''])"),
    )
    for function, text in wants:
        if text not in inspect.getsource(function):
            raise AssertionError(f"{function.__qualname__} no longer has {text!r}")
    if kombu_redis.Channel.keyprefix_queue != "_kombu.binding.%s":
        raise AssertionError(f"binding keys are {kombu_redis.Channel.keyprefix_queue!r}")
    _unacked_layout_known = True


#: False when the start check found a channel whose ``_size`` is not kombu 5.7's.
_size_known = True


def queue_size(channel: Any, queue: str) -> int | None:
    """Messages waiting in ``queue`` over every priority level (one round trip).

    None where that cannot be known this way (not a kombu Redis channel, or
    the start check refused its ``_size``): the caller takes instead.
    """
    size = getattr(channel, "_size", None) if _size_known else None
    if size is None or getattr(type(channel), "__module__", "") != "kombu.transport.redis":
        return None
    return int(size(queue))


def check_size() -> None:
    """kombu's Redis ``Channel._size(queue)`` sums ``LLEN`` over the queue's priority lists."""
    import inspect

    # lazy: 69 ms; loaded by a node's start check, not by every importer of tasker
    from kombu.transport import redis as kombu_redis

    global _size_known  # the start check's outcome, read by module functions
    _size_known = False
    source = inspect.getsource(kombu_redis.Channel._size)
    if list(inspect.signature(kombu_redis.Channel._size).parameters) != ["self", "queue"]:
        raise AssertionError("Channel._size(self, queue) changed its signature")
    for part in ("pipe.llen(self._q_for_pri(queue, pri))", "for pri in self.priority_steps",
                 "sum("):
        if part not in source:
            raise AssertionError(f"Channel._size no longer has {part!r}")
    _size_known = True


# The checks import what they check inside them: they run once, when a worker
# or beat starts, not in every process that imports tasker (pool processes,
# the command line), where those imports would cost start-up time for nothing.

def check_priority_keys() -> None:
    # lazy: 69 ms; loaded by a node's start check, not by every importer of tasker
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    for steps, sep in ((channel.priority_steps, channel.sep), ([0, 3, 6, 9], ":"),
                       ([0, 5], "\x06\x16")):
        stand_in = types.SimpleNamespace(priority_steps=list(steps), sep=sep)
        stand_in.priority = functools.partial(channel.priority, stand_in)
        theirs = [channel._q_for_pri(stand_in, "q", step) for step in steps]
        ours = priority_list_keys("q", steps, sep)
        if ours != theirs:
            raise AssertionError(f"kombu's keys are {theirs!r}, tasker reads {ours!r}")


def check_timer() -> None:
    global _timer_known  # the start check's outcome, read by module functions
    from kombu.asynchronous.timer import Timer  # beside the probe (loaded already)

    _timer_known = True
    timer = Timer()
    try:
        probe = object()
        timer.call_at(time.time() + 3600, lambda _: None, (probe,))
        args = timer_entry_args(timer)
        if args != [(probe,)]:
            raise AssertionError(f"the timer's entries gave {args!r}")
    except Exception:
        _timer_known = False
        raise
    finally:
        timer.clear()
        timer.stop()


TOUCHES = (
    Touch(LIBRARY, "Redis priority list keys (Channel._q_for_pri)", check_priority_keys,
          fallback=None),
    Touch(LIBRARY, "the timer's entries (Timer.queue, entry.args)", check_timer,
          fallback="the scheduled (ETA) task count is not exported"),
    Touch(LIBRARY, "the unacked hash's and binding sets' layout (QoS.append, _queue_bind)",
          check_unacked_layout,
          fallback="unacked messages per queue are not sampled (tasker_queue_unacked absent)"),
    Touch(LIBRARY, "a Redis channel's queue size (Channel._size)", check_size,
          fallback="the periodic reader takes from its queue at every look (four RPOPs "
                   "instead of one round trip)"),
)
