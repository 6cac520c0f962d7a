"""Diagnostic load: parse a mix, pick tasks in proportion, publish paced or in a burst."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["MixEntry", "parse_mix", "weighted_cycle", "publish", "DEFAULT_MIX", "KINDS"]

#: What ``tasker load`` and the demo publish unless told otherwise.
DEFAULT_MIX = "noop=8,sleep:0.05=1,fail=1"
#: Diagnostic handlers and how many arguments each accepts.
KINDS = {"noop": 0, "sleep": 1, "fail": 1, "hold_db": 1}


@dataclass(frozen=True)
class MixEntry:
    kind: str
    args: tuple[Any, ...]
    weight: int

    @property
    def task_name(self) -> str:
        return f"diagnostics.{self.kind}"

    @property
    def label(self) -> str:
        return self.kind + "".join(f":{a}" for a in self.args)


def parse_mix(text: str) -> list[MixEntry]:
    """``"noop=8,sleep:0.05=1,fail=1"`` -> entries; raises ValueError with a clear message."""
    entries = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        spec, _, weight_text = part.partition("=")
        kind, *raw_args = spec.split(":")
        if kind not in KINDS:
            raise ValueError(f"unknown task {kind!r} in mix; choose from {', '.join(KINDS)}")
        if len(raw_args) > KINDS[kind]:
            raise ValueError(f"{kind} takes at most {KINDS[kind]} argument(s): {part!r}")
        try:
            weight = int(weight_text) if weight_text else 1
        except ValueError:
            raise ValueError(f"weight must be an integer: {part!r}") from None
        if weight < 0:
            raise ValueError(f"weight must be >= 0: {part!r}")
        args: tuple[Any, ...] = tuple(raw_args)
        if kind in ("sleep", "hold_db") and raw_args:
            try:
                args = (float(raw_args[0]),)
            except ValueError:
                raise ValueError(f"{kind} needs a number of seconds: {part!r}") from None
        if weight:
            entries.append(MixEntry(kind, args, weight))
    if not entries:
        raise ValueError("the mix is empty")
    return entries


def weighted_cycle(entries: list[MixEntry]) -> Iterator[MixEntry]:
    """Smooth weighted round-robin: exact proportions over every full cycle."""
    current = [0] * len(entries)
    total = sum(e.weight for e in entries)
    while True:
        for i, e in enumerate(entries):
            current[i] += e.weight
        best = max(range(len(entries)), key=current.__getitem__)
        current[best] -= total
        yield entries[best]


def publish(send: Callable[[MixEntry], None], entries: list[MixEntry], *,
            count: int | None = None, rate: float | None = None, duration: float | None = None,
            on_published: Callable[[int], None] | None = None,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> Counter[str]:
    """Publish ``count`` tasks as fast as possible, or ``rate`` per second for ``duration``.

    Returns how many of each mix entry were published.
    """
    if rate is not None:
        if rate <= 0 or duration is None or duration <= 0:
            raise ValueError("--rate needs a positive rate and a positive --duration")
        count = int(rate * duration)
    if count is None or count < 0:
        raise ValueError("give --count, or --rate with --duration")
    published: Counter[str] = Counter()
    cycle = weighted_cycle(entries)
    started = clock()
    for i in range(count):
        if rate is not None:
            delay = started + i / rate - clock()
            if delay > 0:
                sleep(delay)
        entry = next(cycle)
        send(entry)
        published[entry.label] += 1
        if on_published is not None:
            on_published(i + 1)
    return published
