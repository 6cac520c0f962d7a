"""Pure trackers: sliding-window rate, latency EMA, snapshot arithmetic.

No Celery, no Prometheus, no clock of their own: callers pass ``now``, so tests
use a fake clock. The sliding window keeps its buckets in any mutable sequence
of ints, which lets :mod:`tasker.metrics.node_state` put them in shared memory
for every pool process of a node.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence

__all__ = [
    "SlidingWindowRate",
    "ema_update",
    "percent",
    "runs_per_hour",
    "format_uptime",
]


class SlidingWindowRate:
    """Events per second over the last ``window`` seconds, in one-second buckets.

    The rate is always the events in ``(now - window, now]`` divided by
    ``window``: what the metric's help text says, at every moment. It rises
    under load and falls to 0 once no event happened for a whole window: a
    rate, never a lifetime average. In the first window after ``started`` it
    counts the events since then over the whole window (nothing happened
    before), so it climbs to the load's rate as the first window fills.

    The window's oldest edge falls inside a one-second bucket; that bucket is
    counted in proportion to the part of its second inside the window (events
    taken as spread evenly over their second), so the window is ``window``
    seconds long wherever the clock stands, not ``window - 1`` and a bit.

    Args:
        window: seconds covered (rounded up to whole seconds).
        started: when counting began; no rate before it.
        stamps: storage for each bucket's second (defaults to a new list).
        counts: storage for each bucket's count (defaults to a new list).
    """

    def __init__(self, window: float, started: float,
                 stamps: MutableSequence[int] | None = None,
                 counts: MutableSequence[int] | None = None) -> None:
        self.window = max(1, math.ceil(window))
        # The window's whole seconds, plus the one its oldest edge falls into.
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
        if now <= self.started:
            return 0.0
        second = int(now)
        oldest = second - self.window + 1  # the oldest bucket wholly inside the window
        edge = oldest - 1  # the bucket the window's edge, now - window, falls into
        edge_share = 1.0 - (now - second)  # the part of the edge second inside the window
        events = 0.0
        for i in range(self.slots):
            stamp = self.stamps[i]
            if oldest <= stamp <= second:
                events += self.counts[i]
            elif stamp == edge:
                events += self.counts[i] * edge_share
        return events / self.window


def ema_update(previous: float | None, sample: float, alpha: float) -> float:
    """Exponential moving average; the first sample starts it."""
    if previous is None:
        return sample
    return alpha * sample + (1.0 - alpha) * previous


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
