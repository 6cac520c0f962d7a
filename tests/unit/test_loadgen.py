"""Diagnostic load: mix parsing, weighted round-robin and paced publishing (fake clock)."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from tasker.loadgen import DEFAULT_MIX, MixEntry, parse_mix, publish, weighted_cycle


class FakeTime:
    """A clock that only moves when slept on (or when told to)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


# -- parse_mix ------------------------------------------------------------


def test_parse_the_default_mix() -> None:
    assert parse_mix(DEFAULT_MIX) == [
        MixEntry("noop", (), 8),
        MixEntry("sleep", (0.05,), 1),
        MixEntry("fail", (), 1),
    ]


def test_parse_mix_details() -> None:
    entries = parse_mix(" noop , fail:boom=3, hold_db:2=2, sleep=0 ,")
    assert entries == [
        MixEntry("noop", (), 1),  # weight defaults to 1
        MixEntry("fail", ("boom",), 3),
        MixEntry("hold_db", (2.0,), 2),
    ]  # a zero weight drops the entry
    assert [e.task_name for e in entries] == ["diagnostics.noop", "diagnostics.fail",
                                              "diagnostics.hold_db"]
    assert [e.label for e in entries] == ["noop", "fail:boom", "hold_db:2.0"]


@pytest.mark.parametrize(("text", "message"), [
    ("bogus=1", "unknown task 'bogus'"),
    ("noop:1=1", "noop takes at most 0 argument"),
    ("sleep:1:2", "sleep takes at most 1 argument"),
    ("noop=x", "weight must be an integer"),
    ("noop=1.5", "weight must be an integer"),
    ("noop=-1", "weight must be >= 0"),
    ("sleep:abc", "sleep needs a number of seconds"),
    ("", "the mix is empty"),
    (" , ,", "the mix is empty"),
    ("noop=0,fail=0", "the mix is empty"),
])
def test_parse_mix_rejects_bad_input_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


# -- weighted_cycle -------------------------------------------------------


@pytest.mark.parametrize("mix", [DEFAULT_MIX, "noop=3,fail=2", "noop=1", "noop=5,sleep=7,fail=1"])
def test_weighted_cycle_gives_exact_proportions_over_every_full_cycle(mix: str) -> None:
    entries = parse_mix(mix)
    total = sum(e.weight for e in entries)
    cycle = weighted_cycle(entries)
    for _ in range(3):
        picked = Counter(e.kind for e in islice(cycle, total))
        assert picked == {e.kind: e.weight for e in entries}


def test_weighted_cycle_spreads_the_rare_entries() -> None:
    picks = [e.kind for e in islice(weighted_cycle(parse_mix(DEFAULT_MIX)), 10)]
    # Smooth: the two rare tasks are not next to each other.
    positions = [i for i, kind in enumerate(picks) if kind != "noop"]
    assert len(positions) == 2 and positions[1] - positions[0] > 1


# -- publish --------------------------------------------------------------


def test_paced_publish_sends_rate_times_duration_at_the_right_times() -> None:
    t = FakeTime()
    sent: list[tuple[float, str]] = []
    progress: list[int] = []
    counts = publish(lambda e: sent.append((t.now, e.label)), parse_mix(DEFAULT_MIX),
                     rate=10, duration=2, on_published=progress.append,
                     clock=t.clock, sleep=t.sleep)
    assert len(sent) == 20
    assert [when for when, _ in sent] == pytest.approx([1000.0 + i / 10 for i in range(20)])
    assert counts == {"noop": 16, "sleep:0.05": 2, "fail": 2}
    assert counts == Counter(label for _, label in sent)
    assert progress == list(range(1, 21))
    assert len(t.sleeps) == 19  # not before the first one


def test_paced_publish_does_not_sleep_when_sending_is_slow() -> None:
    t = FakeTime()

    def slow_send(_entry: MixEntry) -> None:
        t.now += 0.5  # slower than the 0.1 s pace

    counts = publish(slow_send, parse_mix("noop"), rate=10, duration=1,
                     clock=t.clock, sleep=t.sleep)
    assert counts == {"noop": 10}
    assert t.sleeps == []


def test_count_publish_goes_as_fast_as_possible() -> None:
    t = FakeTime()
    sent: list[str] = []
    counts = publish(lambda e: sent.append(e.kind), parse_mix("noop=3,fail=1"), count=8,
                     clock=t.clock, sleep=t.sleep)
    assert counts == {"noop": 6, "fail": 2}
    assert len(sent) == 8
    assert t.sleeps == []


@pytest.mark.parametrize("kwargs", [
    {},
    {"count": -1},
    {"rate": 10},
    {"rate": 10, "duration": 0},
    {"rate": 0, "duration": 5},
])
def test_publish_needs_a_count_or_a_rate_with_a_duration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        publish(lambda e: None, parse_mix("noop"), **kwargs)  # type: ignore[arg-type]
