"""Pure trackers: sliding-window rate, latency EMA, runtime stats, snapshot arithmetic.

No Celery, no Prometheus, no clock of their own: callers pass ``now``, so tests
use a fake clock. The sliding window keeps its buckets in any mutable sequence
of ints, which lets :mod:`tasker.metrics.node_state` put them in shared memory
for every pool process of a node.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence
from dataclasses import dataclass

__all__ = [
    "SlidingWindowRate",
    "ema_update",
    "RuntimeStats",
    "percent",
    "runs_per_hour",
    "format_uptime",
]


class SlidingWindowRate:
    """Events per second over the last ``window`` seconds, in one-second buckets.

    It rises under load and falls to 0 once no event happened for a whole
    window: a rate, never a lifetime average.

    Args:
        window: seconds covered (rounded up to whole seconds).
        started: when counting began; before a full window has passed the rate
            is taken over the time since then.
        stamps: storage for each bucket's second (defaults to a new list).
        counts: storage for each bucket's count (defaults to a new list).
    """

    def __init__(self, window: float, started: float,
                 stamps: MutableSequence[int] | None = None,
                 counts: MutableSequence[int] | None = None) -> None:
        self.window = max(1, math.ceil(window))
        self.slots = self.window + 1
        self.started = started
        self.stamps = stamps if stamps is not None else [-1] * self.slots
        self.counts = counts if counts is not None else [0] * self.slots
        if len(self.stamps) < self.slots or len(self.counts) < self.slots:
            raise ValueError(f"bucket storage needs {self.slots} slots")

    def record(self, now: float, n: int = 1) -> None:
        """Count ``n`` events at time ``now``."""
        second = int(now)
        i = second % self.slots
        if self.stamps[i] != second:
            self.stamps[i] = second
            self.counts[i] = 0
        self.counts[i] += n

    def rate(self, now: float) -> float:
        """Events per second over ``(now - window, now]``."""
        second = int(now)
        oldest = second - self.window + 1
        events = sum(
            self.counts[i] for i in range(self.slots) if oldest <= self.stamps[i] <= second
        )
        # Buckets cover whole seconds: the window spans the full older buckets
        # plus the elapsed part of the current one.
        covered = (self.window - 1) + (now - second)
        covered = min(covered, now - self.started)
        if covered <= 0:
            return 0.0
        return events / max(covered, 1.0)


def ema_update(previous: float | None, sample: float, alpha: float) -> float:
    """Exponential moving average; the first sample starts it."""
    if previous is None:
        return sample
    return alpha * sample + (1.0 - alpha) * previous


@dataclass
class RuntimeStats:
    """Count, sum, min and max of task runtimes, in seconds."""

    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.minimum = seconds if self.minimum is None else min(self.minimum, seconds)
        self.maximum = seconds if self.maximum is None else max(self.maximum, seconds)

    @property
    def average(self) -> float | None:
        return self.total / self.count if self.count else None


def percent(part: float, whole: float) -> float | None:
    """``part`` as a percentage of ``whole`` with two decimals; None when ``whole`` is 0."""
    return round(100.0 * part / whole, 2) if whole else None


def runs_per_hour(runs: float, uptime_seconds: float) -> float | None:
    """Finished runs per hour of uptime; None before the first second."""
    return round(runs * 3600.0 / uptime_seconds, 2) if uptime_seconds >= 1 else None


def format_uptime(seconds: float) -> str:
    """``5025`` -> ``"1h 23m 45s"`` (days shown when there are any)."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes}m {secs}s"
    return f"{days}d {text}" if days else text
