"""tasker's own periodic work never waits behind user work.

Beat publishes ``tasker.sample_fleet`` and ``tasker.recover_steps`` to a queue
of their own (:func:`periodic_queue_name`), which no pool consumer reads. Every
worker node's MainProcess takes from it on a connection of its own
(:class:`PeriodicWork`), apart from its prefetch of user tasks, so a node
holding its full prefetch still takes the next periodic message at once (on
Redis as it arrives, woken by :mod:`tasker.periodic_watch`; elsewhere within
a second). It was beat's messages waiting in ``celery`` behind a backlog,
and expiring there, that made ``tasker_queue_depth`` vanish exactly when a
backlog formed.

* ``tasker.sample_fleet`` runs in a thread of the MainProcess: it never waits
  for a free pool process, so pool processes busy with long tasks do not delay
  it. The round is written into the node's own metrics directory, which that
  MainProcess serves. One round at a time per node; a message that arrives
  while the previous round still runs is dropped (the next interval brings a
  fresh one), as is a message past its ``expires``.
* ``tasker.recover_steps`` is handed to the node's pool like any task message
  (it uses the process's database pool, which the MainProcess must not open:
  its pool processes inherit whatever it holds at fork). It skips the backlog,
  but waits for a free pool process: when all are busy with long tasks, the
  steps it would re-publish could not start sooner either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from celery import bootsteps
from kombu import Exchange, Queue
from kombu.serialization import prepare_accept_content

from tasker import schedule_monitor
from tasker.contracts import celery_worker, kombu_redis
from tasker.headers import PUBLISHED_AT_HEADER
from tasker.periodic_queue import PERIODIC_QUEUE, periodic_queue_name
from tasker.periodic_watch import ArrivalWatcher
from tasker.settings import get_settings

__all__ = ["PeriodicWork", "periodic_queue_name", "PERIODIC_QUEUE", "PERIODIC_TASKS"]

logger = logging.getLogger("tasker.periodic")

#: The tasks run from that queue in the MainProcess.
PERIODIC_TASKS = ("tasker.sample_fleet", "tasker.recover_steps")


def _expired(expires: object, now: datetime | None = None) -> bool:
    if not isinstance(expires, str):
        return False
    try:
        when = datetime.fromisoformat(expires)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (now or datetime.now(timezone.utc)) > when


def _is_redis(connection: Any) -> bool:
    return getattr(getattr(connection, "transport", None), "driver_type", None) == "redis"


def _run_in_thread(task: Any, headers: dict[str, Any]) -> None:
    """Run ``task`` (the app's own task object) here, with the message's publish stamp."""
    # The task reads the publish stamp from its request (its stale check);
    # the request stack is thread-local, so this thread has its own.
    task.push_request(**{PUBLISHED_AT_HEADER: headers.get(PUBLISHED_AT_HEADER)})
    try:
        task.run()
    finally:
        task.pop_request()


#: Run in a thread of the MainProcess.
_IN_THREAD = frozenset({"tasker.sample_fleet"})
#: Handed to the pool, through the consumer's own task handler.
_TO_POOL = frozenset({"tasker.recover_steps"})
#: Seconds between two looks at the periodic queue. On Redis a message is taken
#: as it arrives (:mod:`tasker.periodic_watch`); the look covers every priority
#: level, a broker without the watcher (RabbitMQ: a message waits up to this
#: long) and a watcher that is not running. A look at an empty Redis queue is
#: one round trip (every priority level's LLEN): about 0.1 ms of CPU.
POLL_INTERVAL = 1.0
#: Messages taken in one read at most (beat sends a few per interval).
READ_AT_MOST = 20
#: The longest wait between two reads while reading fails (seconds).
MAX_BACKOFF = 30.0
#: Content types a periodic message may have (as the task consumer accepts).
_ACCEPT = prepare_accept_content(["json"])


class PeriodicWork(bootsteps.StartStopStep):
    """Consumer bootstep: the periodic queue, read by the MainProcess itself.

    Taken from with a non-blocking get on a connection of its own, not
    consumed: a second consuming channel costs the event loop at every turn,
    so at every task (kombu's Redis transport walks each consuming channel
    per turn: about 14,000 instructions per task, ``bench.instructions``).
    The reader looks every :data:`POLL_INTERVAL` seconds, and on Redis a
    thread blocked on the queue's list (:class:`~tasker.periodic_watch.ArrivalWatcher`)
    wakes it as a message arrives: what it costs is paid per periodic
    message and once a second, whether the node runs one task a second or a
    thousand. The connection of its own (never registered with the event
    loop) keeps those reads out of the consumer's poller.
    """

    # After the task consumer: its handler takes the messages meant for the pool.
    requires = ("celery.worker.consumer:Connection", "celery.worker.consumer.tasks:Tasks")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._to_pool: Callable[[Any], None] | None = None
        self._timer_entry: Any = None
        self._connection: Any = None
        self._channel: Any = None  # a channel of that connection
        self._queue: Queue | None = None
        self._stopped = True
        self._failing = False  # the last read failed (said once per outage)
        self._backoff = POLL_INTERVAL  # seconds to the next read after a failure
        self._retry_at = 0.0  # time.monotonic() before which no read is tried
        self._watcher: ArrivalWatcher | None = None

    def start(self, c: Any) -> None:
        self._consumer = c
        self._to_pool = None  # made again after a reconnect, as the task loop does
        name = periodic_queue_name(get_settings().step_queue)
        # The same exchange and binding Celery creates for a routed queue it does
        # not know (task_create_missing_queues), so beat's messages land here.
        self._queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
        self._stopped = False
        self._timer_entry = c.timer.call_repeatedly(POLL_INTERVAL, self._read)
        hub = getattr(c, "hub", None)
        if hub is not None and _is_redis(c.connection):
            # A message is taken as it arrives, not at the next look (see periodic_watch).
            self._watcher = ArrivalWatcher(hub, self._watched_list, self._read)
            self._watcher.start()

    def stop(self, c: Any) -> None:
        """No more reads; the connection stays open for the acks of tasks in flight.

        A ``tasker.recover_steps`` handed to the pool is acked on this
        connection when it ends, which may be after the consumer stopped (Celery
        keeps its own connection open through ``stop`` for the same reason);
        closing it here would also put that message back for a second run.
        """
        self._stopped = True  # a timer already firing (another thread) reads nothing
        entry, self._timer_entry = self._timer_entry, None
        if entry is not None:
            entry.cancel()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        self._close()

    def _read(self) -> None:
        """Take what the periodic queue holds (at most :data:`READ_AT_MOST` messages).

        Never raises into the event loop. A message that cannot be handled is
        dropped with a line (it would otherwise come back first at every read,
        holding up every sample and recovery behind it, fleet-wide); a read
        that fails is said once per outage and tried again after a back-off
        (doubling up to :data:`MAX_BACKOFF` seconds: a broker that refuses new
        connections must not cost the event loop a connect every second).
        """
        if self._stopped or time.monotonic() < self._retry_at:
            return
        try:
            channel = self._open_channel()
            if kombu_redis.queue_size(channel, self._queue.name) == 0:
                self._read_ok()
                return  # the common case: one round trip, nothing taken
            for _ in range(READ_AT_MOST):
                raw = channel.basic_get(queue=self._queue.name, no_ack=False)
                if raw is None:
                    break
                self._take(channel.message_to_python(raw))
        except Exception as exc:  # noqa: BLE001 - never into the event loop
            self._read_failed(exc)
            return
        self._read_ok()

    def _read_ok(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("periodic.reading_again")
        self._backoff, self._retry_at = POLL_INTERVAL, 0.0

    def _take(self, message: Any) -> None:
        """Handle one message; one that cannot be handled is dropped, not put back."""
        try:
            if message.errors:  # e.g. a body that does not decompress
                raise ValueError(str(message.errors[0])[:200])
            message.accept = _ACCEPT  # only JSON, as the task consumer takes
            self._on_message(message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the queue
            logger.warning("periodic.message_dropped", extra={
                "error": repr(exc)[:300],
                "task": str((getattr(message, "headers", None) or {}).get("task"))[:200]})
            if not message.acknowledged:
                message.reject(requeue=False)

    def _read_failed(self, exc: BaseException) -> None:
        if not self._failing:  # one line per outage, not one a second
            self._failing = True
            logger.warning("periodic.read_failed", extra={"error": repr(exc)[:300]})
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._retry_at = time.monotonic() + self._backoff
        connection = self._connection
        errors = (connection.connection_errors + connection.channel_errors
                  if connection is not None else ())
        if connection is None or isinstance(exc, errors):
            self._close()  # a new connection at the next read; other errors keep this one

    def _watched_list(self) -> tuple[Any, str] | None:
        """(a redis-py client on the reader's connection, the queue's list key), if open.

        Called by the watcher's thread: it reads the attribute once, and a
        connection closed meanwhile makes its command fail (it tries again).
        """
        channel = self._channel
        if channel is None or self._queue is None:
            return None
        import redis  # lazy: loaded already with a Redis broker (its transport needs it)

        key = (getattr(channel, "global_keyprefix", None) or "") + self._queue.name
        return redis.Redis(connection_pool=channel.pool), key

    def _open_channel(self) -> Any:
        if self._connection is None:
            # Its own connection, without heartbeats (nothing would service them),
            # one connect attempt per read (kombu would retry with sleeps, in the
            # event loop's thread).
            connection = self._consumer.connection.clone(heartbeat=None)
            self._connection = connection
            connection.ensure_connection(max_retries=0)
            channel = connection.channel()
            self._queue(channel).declare()
            self._channel = channel
        return self._channel

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # noqa: BLE001 - it is gone either way
                logger.debug("periodic.close_failed", exc_info=True)

    def _on_message(self, message: Any) -> None:
        headers = dict(message.headers or {})
        task = headers.get("task")
        if task in _TO_POOL:
            if self._to_pool is None:
                # Celery's own handler of task messages (what the task loop uses).
                self._to_pool = celery_worker.task_handler(self._consumer)
            self._to_pool(message)  # a task like any other from here on (acked when done)
            return
        message.ack()
        if task not in _IN_THREAD:
            logger.warning("periodic.unknown_task", extra={"task": str(task)[:200]})
            return
        if _expired(headers.get("expires")):
            logger.info("periodic.expired", extra={"task": task})
            return
        with self._lock:
            if task in self._running:
                logger.info("periodic.still_running", extra={"task": task})
                return
            self._running.add(task)
        threading.Thread(target=self._run, args=(task, headers),
                         name=f"tasker-periodic-{task}", daemon=True).start()

    def _run(self, task: str, headers: dict[str, Any]) -> None:
        try:
            # A beat entry's start, as task_prerun records it for pool tasks
            # (Celery sends no task signal for work run here).
            schedule_monitor.record_start(SimpleNamespace(headers=headers))
        except Exception:  # noqa: BLE001 - monitoring must never stop the round
            logger.debug("periodic.schedule_record_failed", exc_info=True)
        try:
            _run_in_thread(self._consumer.app.tasks[task], headers)
        except Exception:  # noqa: BLE001 - a failed round must never reach the event loop
            logger.exception("periodic.failed", extra={"task": task})
        finally:
            with self._lock:
                self._running.discard(task)
