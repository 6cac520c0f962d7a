"""Pure trackers: sliding-window rate, EMA, runtime stats and snapshot arithmetic (fake clock)."""

from __future__ import annotations

import pytest

from tasker.metrics.trackers import (
    SlidingWindowRate,
    ema_update,
    format_uptime,
    percent,
    runs_per_hour,
)

T0 = 1_700_000_000.0  # a whole second, like time.time() at some moment


def feed(tracker: SlidingWindowRate, start: float, seconds: float, per_second: int) -> float:
    """Record ``per_second`` evenly spaced events for ``seconds``; returns the last event's time."""
    last = start
    for k in range(int(seconds * per_second)):
        last = start + k / per_second
        tracker.record(last)
    return last


# -- SlidingWindowRate ----------------------------------------------------


def test_steady_load_for_two_windows_gives_the_event_rate() -> None:
    rate = SlidingWindowRate(10, started=T0)
    last = feed(rate, T0, 20, per_second=20)
    # Just after the last event, and exactly on a second boundary a little later.
    assert rate.rate(last + 0.01) == pytest.approx(20, rel=0.01)
    assert rate.rate(T0 + 20.0) == pytest.approx(20, rel=0.01)


def test_steady_load_reads_the_event_rate_at_every_moment_after_one_window() -> None:
    rate = SlidingWindowRate(10, started=T0)
    for k in range(20 * 20):
        now = T0 + k / 20
        rate.record(now)
        if now >= T0 + 10:
            # Wherever the clock stands inside the current second.
            assert rate.rate(now) == pytest.approx(20, rel=0.01), now


def test_before_a_full_window_the_rate_is_the_events_since_start_over_the_window() -> None:
    """What the help text says at every moment: events in the last window / window."""
    rate = SlidingWindowRate(60, started=T0)
    feed(rate, T0, 2, per_second=10)  # 20 events in the first two seconds
    assert rate.rate(T0 + 2.0) == pytest.approx(20 / 60)
    assert rate.rate(T0 + 4.0) == pytest.approx(20 / 60)


def test_the_first_window_climbs_to_the_load_rate() -> None:
    rate = SlidingWindowRate(60, started=T0)
    for k in range(44 * 10):  # 10 events a second for 44 s (the case)
        rate.record(T0 + k / 10)
    # 440 events in the last 60 s: 7.33/s, not 440 / 44 s = 10/s.
    assert rate.rate(T0 + 44.0) == pytest.approx(440 / 60, rel=0.001)


def test_the_window_is_the_whole_window_wherever_the_clock_stands() -> None:
    """A steady 20/s load: exactly 20/s at any fraction of a second, not 20 x 60/59.x."""
    for fraction in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        rate = SlidingWindowRate(60, started=T0)
        now = T0 + 100 + fraction
        k = 0
        while T0 + (k + 0.5) / 20 <= now:
            rate.record(T0 + (k + 0.5) / 20)
            k += 1
        assert rate.rate(now) == pytest.approx(20.0, rel=0.002), fraction


def test_rate_before_any_time_has_passed_is_zero() -> None:
    rate = SlidingWindowRate(10, started=T0)
    assert rate.rate(T0) == 0.0


def test_rate_falls_after_events_stop_and_is_zero_after_a_whole_window() -> None:
    rate = SlidingWindowRate(10, started=T0)
    last = feed(rate, T0, 20, per_second=20)
    readings = [rate.rate(last + dt) for dt in (0.01, 2.5, 5.5, 8.5)]
    assert readings == sorted(readings, reverse=True)
    assert readings[0] > readings[-1] > 0
    assert rate.rate(last + 8.5) < 20 * 0.25
    # A whole window after the last event's second ended: nothing is left in it.
    assert rate.rate(int(last) + 11.0) == 0.0
    assert rate.rate(last + 11.0) == 0.0
    assert rate.rate(last + 1000.0) == 0.0


def test_wrapped_bucket_is_reused_and_old_seconds_are_never_counted() -> None:
    rate = SlidingWindowRate(10, started=T0)
    assert rate.slots == 11
    rate.record(T0 + 0.5, n=100)
    assert rate.rate(T0 + 1.0) == pytest.approx(10.0)
    # 11 s later the same bucket index comes round again: its old count must go.
    rate.record(T0 + 11.5, n=3)
    assert rate.stamps.count(int(T0) + 11) == 1 and rate.stamps.count(int(T0)) == 0
    assert rate.rate(T0 + 12.0) == pytest.approx(3 / 10)
    # A stale bucket that was not overwritten is ignored too.
    rate2 = SlidingWindowRate(10, started=T0)
    rate2.record(T0 + 0.5, n=100)
    assert rate2.rate(T0 + 11.5) == 0.0
    rate2.record(T0 + 30.2)
    assert rate2.rate(T0 + 31.0) == pytest.approx(1 / 10)


def test_storage_as_memoryview_of_int64_works_like_a_list() -> None:
    window = 5
    as_list = SlidingWindowRate(window, started=T0)
    slots = as_list.slots
    raw_stamps = bytearray(8 * slots)
    raw_counts = bytearray(8 * slots)
    stamps = memoryview(raw_stamps).cast("q")
    counts = memoryview(raw_counts).cast("q")
    for i in range(slots):
        stamps[i] = -1
    as_view = SlidingWindowRate(window, started=T0, stamps=stamps, counts=counts)
    times = [T0 + k * 0.37 for k in range(60)]
    for t in times:
        as_list.record(t)
        as_view.record(t)
        assert as_view.rate(t + 0.1) == as_list.rate(t + 0.1)
    assert list(stamps) == list(as_list.stamps)
    assert list(counts) == list(as_list.counts)
    assert sum(counts) > 0  # the bytes really hold the buckets
    assert as_view.rate(times[-1] + 0.5) > 0


def test_storage_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="slots"):
        SlidingWindowRate(10, started=T0, stamps=[-1] * 5, counts=[0] * 5)


def test_fractional_window_is_rounded_up() -> None:
    assert SlidingWindowRate(2.5, started=T0).window == 3
    assert SlidingWindowRate(0, started=T0).window == 1


# -- ema_update -----------------------------------------------------------


def test_first_sample_starts_the_ema() -> None:
    assert ema_update(None, 0.25, 0.1) == 0.25


def test_ema_weights_new_samples_by_alpha() -> None:
    assert ema_update(1.0, 2.0, 0.1) == pytest.approx(1.1)
    assert ema_update(1.0, 0.0, 0.5) == pytest.approx(0.5)


def test_ema_converges_to_a_steady_value() -> None:
    ema = ema_update(None, 10.0, 0.1)
    for _ in range(200):
        ema = ema_update(ema, 2.0, 0.1)
    assert ema == pytest.approx(2.0, abs=1e-6)


def test_alpha_one_means_the_last_value() -> None:
    ema = None
    for sample in (5.0, 1.0, 7.5):
        ema = ema_update(ema, sample, 1.0)
    assert ema == 7.5


# -- snapshot arithmetic --------------------------------------------------


def test_percent_has_two_decimals_and_none_on_zero() -> None:
    assert percent(145, 150) == 96.67
    assert percent(5, 150) == 3.33
    assert percent(1, 3) == 33.33
    assert percent(3, 3) == 100.0
    assert percent(0, 0) is None
    assert percent(5, 0) is None


def test_runs_per_hour_matches_the_spec_example() -> None:
    assert runs_per_hour(150, 5025) == 107.46
    assert runs_per_hour(10, 3600) == 10.0
    assert runs_per_hour(10, 0.5) is None
    assert runs_per_hour(0, 0) is None


@pytest.mark.parametrize(("seconds", "text"), [
    (5025, "1h 23m 45s"),
    (0, "0h 0m 0s"),
    (59.9, "0h 0m 59s"),
    (86400, "1d 0h 0m 0s"),
    (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 3h 4m 5s"),
])
def test_format_uptime(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text
