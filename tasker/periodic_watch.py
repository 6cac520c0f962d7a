"""Wakes the worker's event loop when tasker's periodic queue gets a message (Redis).

The periodic reader (:mod:`tasker.periodic`) takes from its queue in the
event loop's thread, on a timer. Looking often enough for a scheduled run to
start within milliseconds of its due time (``tasker_schedule_lateness_seconds``)
would cost the MainProcess a round trip and a turn of its event loop ten or
more times a second, busy or idle (``bench.instructions``: about 6 million
instructions a second at ten looks). Instead, a thread of its own waits for
the queue's list to hold something: ``BLMOVE key key RIGHT RIGHT timeout``
blocks until it does and puts the element it took back where it was (the
list is unchanged; Redis 6.2 or later). It then writes one byte into a pipe
the event loop watches, and the reader takes the message in the loop's
thread as always. While nothing arrives the thread sleeps in the server's
reply: nothing runs in the MainProcess.

Only the list of priority 0 is watched (beat publishes without a priority);
the reader's timer still looks at every level once a second.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ArrivalWatcher", "WATCH_TIMEOUT"]

logger = logging.getLogger("tasker.periodic")

#: Seconds one BLMOVE waits before it is sent again (bounds how long a stop waits).
WATCH_TIMEOUT = 5
#: Seconds between two wake-ups at the least (a message the reader cannot take yet,
#: e.g. while it backs off, must not make the watcher spin).
MIN_SPACING = 0.05

#: The (redis-py client, list key) to watch, or None while there is none.
Target = Callable[[], "tuple[Any, str] | None"]


class ArrivalWatcher:
    """A daemon thread blocked on the periodic list; wakes ``on_arrival`` in the event loop."""

    def __init__(self, hub: Any, target: Target, on_arrival: Callable[[], None]) -> None:
        self._hub = hub
        self._target = target
        self._on_arrival = on_arrival
        self._stop = threading.Event()
        self._taken = threading.Event()  # set by the loop once it has read after a wake-up
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(write_fd, False)
        # The thread owns the write end and closes it when it ends: closed here,
        # its number could be reused by another file before the thread's last write.
        self._thread = threading.Thread(target=self._run, args=(write_fd,),
                                        name="tasker-periodic-watch", daemon=True)

    def start(self) -> None:
        self._hub.add_reader(self._read_fd, self._woken)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (event loop thread); the thread ends at its next reply."""
        self._stop.set()
        self._taken.set()
        try:
            self._hub.remove_reader(self._read_fd)
        finally:
            os.close(self._read_fd)

    def _woken(self) -> None:
        """Event loop: the thread saw a message; take what is there."""
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        try:
            self._on_arrival()
        finally:
            self._taken.set()

    def _run(self, write_fd: int) -> None:
        try:
            while not self._stop.is_set():
                target = self._target()
                if target is None:  # no connection yet, or between two
                    self._stop.wait(1.0)
                    continue
                client, key = target
                try:
                    got = client.blmove(key, key, WATCH_TIMEOUT, "RIGHT", "RIGHT")
                except Exception as exc:  # noqa: BLE001 - the reader's timer still looks
                    if "unknown command" in str(exc).lower():
                        logger.info("periodic.watch_unavailable", extra={
                            "reason": f"{exc}; the queue is looked at once a second instead"})
                        return
                    self._stop.wait(1.0)  # the broker is away: the reader says so
                    continue
                if got is None or self._stop.is_set():
                    continue
                self._taken.clear()
                try:
                    os.write(write_fd, b"x")
                except OSError:
                    return  # the loop closed its end: stopping
                self._taken.wait(WATCH_TIMEOUT)
                self._stop.wait(MIN_SPACING)
        finally:
            os.close(write_fd)
