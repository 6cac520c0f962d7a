"""The statistics the throughput benchmark's verdict rests on."""

from __future__ import annotations

import statistics

from bench.common import median_ci95, spread
from bench.overhead import round_order, summarize


def test_round_order_alternates_so_no_variant_always_runs_first() -> None:
    variants = ["bare", "bare_events", "tasker"]
    orders = [round_order(variants, rnd) for rnd in range(1, 5)]
    assert orders[0] == variants
    assert orders[1] == list(reversed(variants))
    assert orders[2] == variants
    # Over two rounds every variant runs once in each half.
    assert {orders[0][0], orders[1][0]} == {"bare", "tasker"}


def test_median_ci95_brackets_the_median_and_narrows_with_more_rounds() -> None:
    few = [0.80, 1.10, 0.95, 1.02, 0.88]
    many = few * 6
    lo_few, hi_few = median_ci95(few)
    lo_many, hi_many = median_ci95(many)
    assert lo_few <= statistics.median(few) <= hi_few
    assert lo_many <= statistics.median(many) <= hi_many
    assert hi_many - lo_many < hi_few - lo_few
    assert median_ci95(few) == (lo_few, hi_few)  # seeded: a rebuilt report is the same


def test_median_ci95_of_one_value_is_that_value() -> None:
    assert median_ci95([0.9]) == (0.9, 0.9)


def test_spread_has_quartiles() -> None:
    s = spread([1, 2, 3, 4, 5])
    assert (s["min"], s["p25"], s["median"], s["p75"], s["max"]) == (1, 2, 3, 4, 5)


def _run(variant: str, rnd: int, tps: float) -> dict:
    return {"variant": variant, "round": str(rnd), "tasks": 100, "tasks_per_second": tps,
            "cpu_ms_per_task_main": 1.0, "cpu_ms_per_task_pool": 0.3,
            "tasker_total_runs": 100 if variant == "tasker" else None}


def test_the_target_is_judged_on_the_median_of_per_round_ratios() -> None:
    # The machine speeds up from round to round; tasker is 5 % slower in each.
    runs = []
    for rnd, base in enumerate([500.0, 700.0, 900.0], start=1):
        runs += [_run("bare", rnd, base), _run("tasker", rnd, base * 0.95)]
    tasker = {s["variant"]: s for s in summarize(runs, ["bare", "tasker"])}["tasker"]
    paired = tasker["paired_ratio_to_bare"]
    assert abs(paired["median"] - 0.95) < 1e-9
    assert paired["ci95"][0] <= 0.95 <= paired["ci95"][1]
    assert tasker["target_met"] is False
    assert tasker["all_counted"] is True
