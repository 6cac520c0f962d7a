"""Write BENCHMARKS.md from the JSON lines under ``bench/results/``.

    python -m bench.report [--mode full|quick] [--results-dir DIR] [--output BENCHMARKS.md]

Every figure in the output is read from the results files (or is a ratio or
difference of two figures of the same file); the prose around them only
says which way they point. PNG plots are written next to the results when
matplotlib is installed (it is optional).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_RESULTS_DIR, REPO, read_results

BENCHES = ("overhead", "scrape", "recording", "latency", "sampler", "workflows", "soak",
           "shared_memory", "instructions", "peers")


# ------------------------------------------------------------------- formatting


def num(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def rng(s: dict[str, Any] | None, digits: int = 1, unit: str = "") -> str:
    """``median (min–max)`` of a spread record."""
    if not s:
        return "n/a"
    return (f"{num(s['median'], digits)}{unit} "
            f"({num(s['min'], digits)}–{num(s['max'], digits)})")


def pct(ratio: float) -> str:
    return f"{abs(1 - ratio) * 100:.1f} %"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


class Bench:
    """The records of one results file."""

    def __init__(self, name: str, records: list[dict[str, Any]], path: Path) -> None:
        self.name = name
        self.path = path
        self.meta = next(r for r in records if r["kind"] == "meta")
        self.runs = [r for r in records if r["kind"] == "run"]
        self.summaries = [r for r in records if r["kind"] == "summary"]
        self.end = next((r for r in records if r["kind"] == "end"), None)
        self.records = records  # every kind (bench.peers writes one record per part)

    @property
    def params(self) -> dict[str, Any]:
        return self.meta.get("params", {})

    def provenance(self) -> list[str]:
        m = self.meta
        when = dt.datetime.fromtimestamp(m["time"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        via = f" (run by `{m['via']}`)" if m.get("via") else ""
        load = m["machine"].get("load_average")
        took = f", took {self.end['seconds']:.0f} s" if self.end else ""
        raw = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return [f"Command: `{m['command']}`{via}; tasker at {_code_version(m['machine'])}; "
                f"started {when}{took}; "
                f"load average at start {', '.join(str(x) for x in load or [])}. "
                f"Raw results: `{raw}`."]


def load(results_dir: Path, mode: str) -> dict[str, Bench]:
    found = {}
    for name in BENCHES:
        path = results_dir / f"{name}-{mode}.jsonl"
        if path.exists():
            found[name] = Bench(name, read_results(path), path)
    return found


# ---------------------------------------------------------------------- sections


def _code_version(m: dict[str, Any]) -> str:
    """Which code a benchmark ran: the commit, and whether the tree had changes."""
    commit = m.get("git_commit")
    if not commit:
        return "an unknown commit"
    dirty = m.get("git_dirty")
    return f"commit `{commit}`" + (" plus uncommitted changes" if dirty else
                                  "" if dirty is False else " (tree state not recorded)")


def machine_section(benches: dict[str, Bench]) -> list[str]:
    m = next(iter(benches.values())).meta["machine"]
    versions = sorted({_code_version(b.meta["machine"]) for b in benches.values()})
    v = m["versions"]
    mem = m["memory_bytes"] / 2**30
    return [
        "## Machine",
        "",
        f"- CPU: {m.get('cpu_model') or 'unknown'}; {m['logical_cpus']} logical CPUs "
        f"({m.get('physical_cpus')} physical); memory {mem:.1f} GiB; {m['os']}",
        f"- Python {m['python']}; celery {v.get('celery')}, kombu {v.get('kombu')}, "
        f"billiard {v.get('billiard')}, redis-py {v.get('redis')}, "
        f"prometheus_client {v.get('prometheus_client')}, psycopg {v.get('psycopg')}; "
        f"Redis server {m.get('redis_server')} on loopback; tasker {v.get('tasker')} "
        f"at {' / '.join(versions)} (each section names its own)",
        "- The machine is shared with other jobs (see the load average of each run "
        "below), so absolute figures move from run to run. Comparisons are therefore "
        "made inside one run, with the variants interleaved, and reported as ratios "
        "first; min–max ranges show the noise.",
        "",
    ]


def headline(benches: dict[str, Bench]) -> list[str]:
    rows = []
    if "overhead" in benches:
        ob = benches["overhead"]
        t = _overhead_summary(ob).get("tasker")
        if t and "paired_ratio_to_bare" in t:
            v, note = _throughput_verdict(t["paired_ratio_to_bare"], t["target_ratio"])
            rows.append(["Throughput, tasker ÷ bare Celery (no-op tasks, prefork -c 2, Redis): "
                         "median of per-cycle ratios (bursts seconds apart)",
                         _ratio_text(t["paired_ratio_to_bare"]) + (f"; {note}" if note else ""),
                         f"≥ {t['target_ratio']}", v])
            alone = _measuring_alone(ob)
            if alone:
                ci = alone.get("ci95")
                met = alone["median"] >= ALONE_TARGET and (ci is None
                                                           or ci[0] >= ALONE_CI_FLOOR)
                rows.append(["… tasker's measuring alone: tasker ÷ bare Celery with tasker's "
                             "changes to kombu (`bare_client_reuse`, "
                             "`tasker/contracts/kombu_client.py`), per cycle",
                             _ratio_text(alone) + _busy_note(ob),
                             f"≥ {ALONE_TARGET}, CI lower end ≥ {ALONE_CI_FLOOR}",
                             verdict(met)])
            plain = _paired(ob, "tasker_plain_client", lambda r: r["tasks_per_second"],
                            baseline=CLIENT_REUSE[1]) if "tasker_plain_client" in b_variants(
                                ob) else None
            if plain:
                rows.append(["… the same, messages published by a plain Celery client (no "
                             "tasker headers): `tasker_plain_client` ÷ `bare_client_reuse`",
                             _ratio_text(plain), f"≥ {ALONE_TARGET}",
                             verdict(plain["median"] >= ALONE_TARGET)])
    if "instructions" in benches:
        rows += _instructions_headline(benches["instructions"])
    if "overhead" in benches:
        ob = benches["overhead"]
        t = _overhead_summary(ob).get("tasker")
        if t and "paired_ratio_to_bare" in t:
            own = _overhead_summary(ob).get("tasker_own_client")
            if own and "paired_ratio_to_bare" in own:
                rows.append(["… the same seen the other way: tasker without that change "
                             "(`TASKER_REUSE_BROKER_CLIENT=false`) ÷ bare Celery",
                             _ratio_text(own["paired_ratio_to_bare"]), "—", ""])
            cpu = _paired(ob, "tasker", _cpu_total)
            if cpu:
                rows.append(["CPU per task, whole node (MainProcess + pool), tasker ÷ bare",
                             _ratio_text(cpu), "—", ""])
        e = _overhead_summary(ob).get("bare_events")
        if e and "paired_ratio_to_bare" in e:
            rows.append(["… for comparison: throughput of bare Celery with task events (`-E`) "
                         "÷ bare Celery", _ratio_text(e["paired_ratio_to_bare"]), "—", ""])
    if "scrape" in benches:
        sc = benches["scrape"]
        for r in sc.runs:
            if r["case"] == "matrix" and "target_speedup" in r:
                ps = r["paired_speedup"]
                rows.append([f"`/metrics` scrape speed-up over stock, {r['processes']} processes × "
                             f"{r['task_names']} task names: median of paired scrapes",
                             f"{num(ps['median'])}× ({num(ps['min'])}–{num(ps['max'])}×)",
                             f"≥ {num(r['target_speedup'], 0)}×",
                             verdict(ps["median"] >= r["target_speedup"])])
        rec = next((r for r in sc.runs if r["case"] == "recycled"), None)
        if rec:
            rows.append([f"Scrape after {rec['dead_processes']:,} recycled processes ÷ before",
                         f"tasker {num(rec['tasker_growth'], 2)}× (stock "
                         f"{num(rec['stock_growth'], 1)}×)",
                         f"flat (≤ {rec['flat_tolerance']}×)", verdict(rec["flat"])])
    if "recording" in benches and benches["recording"].summaries:
        s = benches["recording"].summaries[-1]
        rows.append(["Recording cost per task (Celery signals sent in a loop, dispatch included)",
                     f"MainProcess {num(s['main_process_us_per_task']['median'])} µs, "
                     f"pool process {num(s['pool_process_us_per_task']['median'])} µs", "—", ""])
    if "latency" in benches:
        t = next((s for s in benches["latency"].summaries if s["variant"] == "tasker"), None)
        if t and "pooled_minus_bare_ms" in t:
            d = t["pooled_minus_bare_ms"]
            rows.append([f"Publish → start latency at {num(benches['latency'].params['rate'], 0)}"
                         "/s, tasker − bare",
                         f"p50 {d['p50']:+.2f} ms, p95 {d['p95']:+.2f} ms, p99 {d['p99']:+.2f} ms",
                         "—", ""])
    if "sampler" in benches and benches["sampler"].summaries:
        s = benches["sampler"].summaries[-1]
        rows.append([f"Fleet sampler, {s['queues']} queues × {s['levels']} priority levels",
                     f"{num(s['ms']['median'], 1)} ms, {num(s['round_trips']['median'], 0)} "
                     f"round trips", "—", ""])
    if "workflows" in benches:
        rows += _workflow_headline(benches["workflows"])
    if "soak" in benches and benches["soak"].summaries:
        rows += _soak_headline(benches["soak"])
    return ["## Headline: ratios measured in the same run", "",
            *table(["what", "measured", "target", ""], rows), ""]


#: Issue [2.8]: tasker ÷ bare_client_reuse, and the lower end of its 95 % CI.
ALONE_TARGET = 0.99
ALONE_CI_FLOOR = 0.97


def b_variants(b: Bench) -> list[str]:
    return list(b.params.get("variants") or [])


def _busy_note(b: Bench) -> str:
    """Says so when a time-based run was taken on a busy machine (load average at start)."""
    load = (b.meta["machine"].get("load_average") or [0.0])[0]
    cpus = b.meta["machine"].get("logical_cpus") or 1
    return (f"; taken on a busy machine (load average {load:.1f} on {cpus} CPUs at start)"
            if load >= 0.5 * cpus else "")


def _instructions_summary(b: Bench) -> dict[str, dict[str, Any]]:
    return {s["variant"]: s for s in b.summaries}


def _instructions_headline(b: Bench) -> list[list[str]]:
    rows = []
    for name, what in (("tasker", "tasker"),
                       ("tasker_plain_client", "tasker fed by a plain Celery client")):
        s = _instructions_summary(b).get(name)
        if not s or "target_added_per_task" not in s:
            continue
        rounds = s.get("per_task_rounds") or []
        base = _instructions_summary(b)[s["baseline"]]
        spread_text = ""
        if len(rounds) > 1:
            added = [r - base["per_task"] for r in rounds]
            spread_text = f" (rounds {min(added):+,.0f} to {max(added):+,.0f})"
        rows.append([f"MainProcess instructions added per task, {what} − `{s['baseline']}` "
                     "(callgrind, `bench.instructions`; per-second work apart)",
                     f"{s['added_per_task']:+,.0f} of {base['per_task']:,.0f}{spread_text}",
                     f"≤ {s['target_added_per_task']:,}", verdict(s["target_met"])])
    return rows


def _overhead_summary(b: Bench) -> dict[str, dict[str, Any]]:
    return {s["variant"]: s for s in b.summaries}


def _paired(b: Bench, variant: str, value: Any,
            combine: Any = lambda a, c: a / c, baseline: str | None = None
            ) -> dict[str, Any] | None:
    """Spread of per-cycle ``combine(value(burst of variant), value(baseline burst, same
    cycle))`` (baseline: bare Celery unless given): ratios unless another ``combine`` is given."""
    from bench.common import median_ci95, spread

    base_name = baseline or b.params["baseline"]
    base = {r["round"]: r for r in b.runs if r["variant"] == base_name}
    found = []
    for r in b.runs:
        if r["variant"] == variant and r["round"] in base:
            a, c = value(r), value(base[r["round"]])
            if a is not None and c:
                found.append(combine(a, c))
    if not found:
        return None
    out = spread(found)
    out["ci95"] = median_ci95(found)
    return out


#: The diagnostic pair that separates tasker's measuring from its broker-client change.
CLIENT_REUSE = ("tasker", "bare_client_reuse")


def _measuring_alone(b: Bench) -> dict[str, Any] | None:
    """tasker ÷ bare Celery with the same broker-client change, per cycle (tasks/s)."""
    if not all(v in b.params["variants"] for v in CLIENT_REUSE):
        return None
    return _paired(b, CLIENT_REUSE[0], lambda r: r["tasks_per_second"],
                   baseline=CLIENT_REUSE[1])


def _main_busy(r: dict[str, Any]) -> float | None:
    """Share of the burst's time the MainProcess was on a CPU."""
    main = r.get("cpu_ms_per_task_main")
    return None if main is None else main * r["tasks_per_second"] / 1e3


def _main_busy_median(b: Bench, variant: str) -> float | None:
    import statistics

    values = [v for r in b.runs if r["variant"] == variant
              for v in [_main_busy(r)] if v is not None]
    return statistics.median(values) if values else None


def _cpu_total(r: dict[str, Any]) -> float | None:
    if r.get("cpu_ms_per_task_main") is None or r.get("cpu_ms_per_task_pool") is None:
        return None
    return r["cpu_ms_per_task_main"] + r["cpu_ms_per_task_pool"]


def _throughput_verdict(paired: dict[str, Any], target: float) -> tuple[str, str]:
    """(verdict, note) for a throughput ratio against its target (median of paired cycles)."""
    met = paired["median"] >= target
    note = ""
    ci = paired.get("ci95")
    if ci is not None and ci[0] < target <= ci[1]:
        note = "the target lies inside the 95 % confidence interval"
    elif ci is None and paired["min"] < target <= paired["max"]:
        note = "the cycles lie on both sides of the target"
    return verdict(met), note


def _ratio_text(paired: dict[str, Any]) -> str:
    ci = paired.get("ci95")
    return (f"{num(paired['median'], 3)} ("
            + (f"95 % CI {num(ci[0], 3)}–{num(ci[1], 3)}; " if ci is not None else "")
            + f"cycles {num(paired['min'], 3)}–{num(paired['max'], 3)})")


def overhead_section(b: Bench) -> list[str]:
    p = b.params
    summ = _overhead_summary(b)
    rows = []
    for name in p["variants"]:
        s = summ.get(name)
        if not s:
            continue
        if name == p["baseline"]:
            ratio = medians = cpu_ratio = "1 (baseline)"
        else:
            ratio = _ratio_text(s["paired_ratio_to_bare"])
            medians = num(s.get("ratio_to_bare"), 3)
            cpu = _paired(b, name, _cpu_total)
            cpu_ratio = rng(cpu, 3) if cpu else "n/a"
        rows.append([f"`{name}`: {s['description']}", rng(s["tasks_per_second"], 0), ratio,
                     medians, rng(s["cpu_ms_per_task_main"], 2), rng(s["cpu_ms_per_task_pool"], 2),
                     cpu_ratio, str(s["tasks_per_second"]["n"])])
    out = ["## 1. Throughput overhead", "", *b.provenance(), "",
           f"Bursts of {p['tasks_per_burst']:,} no-op tasks (`diagnostics.noop`, the same "
           "empty body in both apps). The machine's speed drifts: the MainProcess's CPU per "
           "task moved by up to 60 % between runs ten seconds apart, for every variant alike. "
           "So the variants are compared in bursts a second or two apart, on nodes that are "
           f"already running. Each of {p['generations']} generations starts one worker node "
           f"per variant side by side (`celery worker {' '.join(p['worker_args'])}`), each on "
           "its own queue, after filling a staging list per variant through that variant's "
           "own publisher. Each node gets an unrecorded warm-up burst of "
           f"{p['warmup_tasks']:,} tasks, then {p['cycles']} cycles give every node in turn a "
           "burst, moved from its staging list into its queue by one atomic Redis script (the "
           "burst appears at once; nothing is published while a burst is timed); the order "
           f"of the variants ({' '.join(p['variants'])}) alternates from cycle to cycle. "
           "The nodes not being timed sit idle in a blocking `BRPOP`. The benchmark polls "
           "only the broker (the queue's `LLEN` and kombu's `unacked` hash); the clock runs "
           "from the first poll that finds a message taken to the first that finds both "
           "empty, so measuring asks nothing of the worker. The ratio that counts is taken "
           "per cycle (each variant ÷ the bare burst of the same cycle, seconds apart), shown "
           f"as the median of the {p['rounds']} cycles with its 95 % bootstrap confidence "
           "interval and the min–max of the cycles; the ratio of the two medians is shown "
           "beside it. CPU per task is the CPU time of the node's MainProcess and of its two "
           "pool processes together over the timed interval, divided by the tasks in it (read "
           "from `/proc`, so it costs the worker nothing).", "",
           *table(["variant", "tasks/s, median (min–max)", "÷ bare, per cycle",
                   "÷ bare, medians", "MainProcess CPU ms/task", "pool CPU ms/task (both)",
                   "node CPU/task ÷ bare, per cycle", "bursts"], rows), ""]
    t, bare = summ.get("tasker"), summ.get(p["baseline"])
    if t and bare and "paired_ratio_to_bare" in t:
        paired = t["paired_ratio_to_bare"]
        ratio = paired["median"]
        direction = "fewer" if ratio < 1 else "more"
        v, note = _throughput_verdict(paired, t["target_ratio"])
        text = (f"**What it means.** On this machine a tasker node finished {pct(ratio)} "
                f"{direction} no-op tasks per second than a bare Celery node in the median "
                f"cycle (target: at most {pct(t['target_ratio'])} fewer; {v}"
                + (f"; the 95 % confidence interval of that median, "
                   f"{num(paired['ci95'][0], 3)}–{num(paired['ci95'][1], 3)}, contains the "
                   "target, so this run alone cannot settle it"
                   if note and paired.get("ci95") is not None else
                   f"; the per-cycle ratios, {num(paired['min'], 3)}–{num(paired['max'], 3)}, "
                   "lie on both sides of the target, so this run alone cannot settle it"
                   if note else "")
                + f"; the ratio of the two medians was {num(t['ratio_to_bare'], 3)}). ")
        cpu = _paired(b, "tasker", _cpu_total)
        if cpu:
            text += (f"CPU per task for the whole node was "
                     f"{num(cpu['median'], 3)}× bare Celery's (cycles {num(cpu['min'], 3)}–"
                     f"{num(cpu['max'], 3)}). ")
        reuse = summ.get("bare_client_reuse")
        alone = _measuring_alone(b)
        if reuse and alone and "paired_ratio_to_bare" in reuse:
            v2, note2 = _throughput_verdict(alone, t["target_ratio"])
            text += ("**Two things make up that ratio.** tasker changes Celery's own work "
                     "in kombu's Redis transport: each channel keeps one redis-py client "
                     "instead of building one for every command (two per task, about 0.1 ms "
                     "of the MainProcess's CPU each), the poller's turn skips channels with "
                     "nothing to do, and the unacked copy of a message is the text it arrived "
                     "as instead of the message encoded again (`tasker/contracts/"
                     "kombu_client.py`). Bare Celery with those changes alone "
                     f"(`bare_client_reuse`) ran at "
                     f"{_ratio_text(reuse['paired_ratio_to_bare'])} of bare Celery. Against "
                     "that node, in the same cycles, tasker's measuring (its receivers, "
                     "stamped headers, endpoints and threads) cost "
                     f"{pct(alone['median'])} of throughput: tasker ÷ `bare_client_reuse` = "
                     f"{_ratio_text(alone)} ({v2} against the same 0.97 target"
                     + (f"; {note2}" if note2 else "") + "). ")
            dm2 = _paired(b, "tasker", lambda r: r.get("cpu_ms_per_task_main"),
                          lambda a, c: (a - c) * 1e3, baseline="bare_client_reuse")
            if dm2:
                text += (f"Its MainProcess used {dm2['median']:.0f} µs more CPU per task than "
                         "that node's (median of the per-cycle differences). ")
        mo = summ.get("tasker_main_only")
        if mo and "paired_ratio_to_bare" in mo:
            mp = mo["paired_ratio_to_bare"]
            pool_share = mp["median"] - paired["median"]
            text += ("Where the gap comes from: the diagnostic variant `tasker_main_only`, the "
                     "same node with recording switched off in its pool processes only (the "
                     "MainProcess still counts every message, serves the endpoints, logs JSON "
                     f"and stamps correlation ids), ran at {_ratio_text(mp)} of bare Celery, "
                     f"so in this run the pool processes' recording accounts for about "
                     f"{max(pool_share, 0.0) * 100:.1f} % of throughput and the rest of tasker "
                     f"about {max(1.0 - mp['median'], 0.0) * 100:.1f} %, each within the noise "
                     "shown by the "
                     "confidence intervals. ")
        ev = summ.get("bare_events")
        if ev and "paired_ratio_to_bare" in ev:
            text += ("For comparison, turning on Celery's task events (`-E`), the usual way to "
                     "feed Flower and event-based exporters, cost bare Celery "
                     f"{pct(ev['paired_ratio_to_bare']['median'])} of its throughput in the "
                     "same run. ")
        def difference(a: float, c: float) -> float:
            return (a - c) * 1e3

        dm = _paired(b, "tasker", lambda r: r.get("cpu_ms_per_task_main"), difference)
        dp = _paired(b, "tasker", lambda r: r.get("cpu_ms_per_task_pool"), difference)
        rm = _paired(b, "tasker", lambda r: r.get("cpu_ms_per_task_main"))
        if dm and dp and rm:
            m, pool = dm["median"], dp["median"]
            text += (f"Over the timed bursts tasker's MainProcess (which receives, dispatches "
                     f"and acknowledges every message) used {abs(m):.0f} µs "
                     f"{'more' if m >= 0 else 'less'} CPU per task than bare Celery's in the "
                     f"same cycle ({num(rm['median'], 3)}×), and its two pool processes "
                     f"together {abs(pool):.0f} µs {'more' if pool >= 0 else 'less'} "
                     "(medians of the per-cycle differences). ")
        busy = {name: _main_busy_median(b, name) for name in (p["baseline"], "tasker")}
        if all(v is not None for v in busy.values()):
            text += (f"The MainProcess was on a CPU {busy[p['baseline']] * 100:.0f} % of the "
                     f"time in bare Celery's bursts and {busy['tasker'] * 100:.0f} % in "
                     "tasker's (medians): it is the bottleneck, and tasks/s follow its CPU "
                     "per task. ")
        cpus = b.meta["machine"].get("logical_cpus") or 0
        if cpus and cpus < p.get("concurrency", 2) + 1:
            text += (f"This machine has {cpus} CPUs for the MainProcess, "
                     f"{p.get('concurrency', 2)} pool processes, Redis and the benchmark, so "
                     "work added in the pool processes competes with the MainProcess for CPU "
                     "time; on a machine with a core to spare for every process that "
                     "competition would not exist (not measured here). ")
        text += ("The overhead is a fixed amount of CPU per task, so it shows most with empty "
                 "tasks at full speed, and its share falls as tasks do more work. ")
        if t.get("all_counted") is not None:
            text += ("Every tasker node's `/metrics.json` counted all the tasks it ran "
                     if t["all_counted"] else
                     "**Some tasker nodes' `/metrics.json` did not count every task** ")
            text += "(checked at the end of each generation)."
        out += [text, ""]
    return out


def scrape_section(b: Bench) -> list[str]:
    p = b.params
    matrix = [r for r in b.runs if r["case"] == "matrix"]
    split = any("merge_speedup" in r for r in matrix)
    PROC = [r["processes"] for r in matrix] or [0]  # noqa: N806
    rows = []
    for r in sorted(matrix, key=lambda r: (r["task_names"], r["processes"])):
        row = [f"{r['processes']} × {r['task_names']}", f"{r['files']}",
               rng(r["stock_ms"]), rng(r["tasker_ms"]),
               rng(r["paired_speedup"], 1, "×"),
               num(r["tasker_first_scrape_ms"])]
        if split:
            row.append(f"{num(r['stock_merge_ms']['median'])} / "
                       f"{num(r['tasker_merge_ms']['median'])} "
                       f"({num(r['merge_speedup'])}×)")
            if "tasker_format_ms" in r:
                row.append(f"{num(r['stock_format_ms']['median'])} / "
                           f"{num(r['tasker_format_ms']['median'])}")
        row.append("yes" if r["outputs_match"] else "**NO**")
        rows.append(row)
    header = ["processes × task names", "files", "stock ms", "tasker ms", "speed-up",
              "tasker 1st scrape ms"]
    formatted = any("tasker_format_ms" in r for r in matrix)
    if split:
        header.append("merge: stock / tasker ms")
        if formatted:
            header.append("format: stock / tasker ms")
    header.append("same samples")
    out = ["## 2. Scrape cost (`/metrics`)", "", *b.provenance(), "",
           "A multiprocess directory in the shape a tasker worker writes (per task name, "
           "label `queue=celery`: `tasker_tasks_started_total` and "
           "`tasker_tasks_succeeded_total`, the `tasker_task_runtime_seconds` and "
           "`tasker_task_queue_wait_seconds` histograms with tasker's buckets; plus each "
           "process's `tasker_worker_tasks_active` livesum gauge; keys taken from files "
           "written by tasker's own metric objects). On the same directory, alternating, "
           f"{p['repeats']} times each: **stock** = `generate_latest` of a registry with "
           "prometheus_client's `MultiProcessCollector`; **tasker** = what a node serves, "
           "`TextExposition.render` over `MetricStore(dir).read().families()`, the store and "
           "the exposition's cached line prefixes kept between scrapes as the node keeps them "
           "(its first, cold scrape is shown separately). Times are median (min–max) "
           "in ms; speed-up = median (min–max) of the ratios stock ÷ tasker of scrapes "
           "taken one after the other. "
           "\"Same samples\": both expositions parsed and compared sample by sample.", "",
           *table(header, rows), ""]
    if split:
        out += ["\"Merge\" and \"format\" split each path in two, timed back to back in "
                "the same repeat: `collect()` (reading and merging the files into metric "
                "families), then turning those families into text (`generate_latest` on the "
                "stock path, tasker's `TextExposition` on tasker's).", ""]
    rec = next((r for r in b.runs if r["case"] == "recycled"), None)
    if rec:
        out += [f"### After {rec['dead_processes']:,} recycled processes", "",
                f"The {rec['processes']} × {rec['task_names']} directory, first as it is, then "
                f"with the files of {rec['dead_processes']:,} exited processes added (each a "
                f"counter and a histogram file; each process had run "
                f"{rec['dead_names_per_process']} of the task names; their live gauges are gone, "
                f"as `mark_process_dead` leaves it): {rec['files_before']:,} files, "
                f"{rec['used_bytes_before'] / 2**20:,.0f} MiB of entries. tasker's first scrape "
                "folds the dead processes into memory and deletes their files "
                f"({rec['files_after_first_tasker_scrape']} files left); it is timed on "
                f"{rec['tasker_first_scrape_ms']['n']} fresh copies of the directory. Its "
                "later scrapes alternate with scrapes of a second tasker store on a copy of the "
                "same live files that never had dead ones (\"live files only\"); the tasker "
                "\"after ÷ before\" is the median of those paired ratios.", "",
                *table(["", "live files only, ms", "after recycling, ms", "after ÷ before"], [
                    ["stock", rng(rec["stock_live_only_ms"]), rng(rec["stock_ms"]),
                     f"{num(rec['stock_growth'], 2)}×"],
                    ["tasker, first scrape (compacts)", rng(rec["tasker_live_only_ms"]),
                     rng(rec["tasker_first_scrape_ms"]), "—"],
                    ["tasker, later scrapes", rng(rec["tasker_live_only_ms"]),
                     rng(rec["tasker_later_ms"]),
                     f"{num(rec['tasker_growth'], 2)}×" + (
                         f" (paired {num(rec['tasker_growth_paired']['min'], 2)}–"
                         f"{num(rec['tasker_growth_paired']['max'], 2)})"
                         if "tasker_growth_paired" in rec else "")],
                ]), "",
                "Same samples (stock before compaction vs tasker after): "
                + ("yes." if rec["outputs_match"] else "**NO**.") , ""]
    text = "**What it means.** "
    targets = [r for r in matrix if "target_speedup" in r]
    if targets:
        parts = [f"{r['processes']} × {r['task_names']}: {num(r['paired_speedup']['median'])}×"
                 for r in targets]
        met = all(r["paired_speedup"]["median"] >= r["target_speedup"] for r in targets)
        text += (f"With many task names tasker serves a scrape faster than the stock collector "
                 f"({'; '.join(parts)}; target ≥ {num(targets[0]['target_speedup'], 0)}× "
                 f"{verdict(met)}). The gap widens with the number of pool processes because "
                 "tasker reads each file's values with one precompiled `struct` call and parses "
                 "each key once per node lifetime, while the stock collector re-parses every "
                 "entry of every file at every scrape; and tasker formats only the values of "
                 "series whose `name{labels}` text it wrote at an earlier scrape, where "
                 "`generate_latest` sorts, escapes and formats every label at every scrape. ")
        if formatted:
            for r in targets:
                merge, fmt = r["tasker_merge_ms"]["median"], r["tasker_format_ms"]["median"]
                sfmt = r["stock_format_ms"]["median"]
                text += (f"At {r['processes']} × {r['task_names']}, formatting the text took "
                         f"{fmt:.0f} ms of tasker's {merge + fmt:.0f} ms (merge + format), "
                         f"against {sfmt:.0f} ms for `generate_latest` on the same families, "
                         f"and reading and merging the files was {num(r['merge_speedup'])}× "
                         "faster than the stock collector's. ")
        small = next((r for r in matrix if r["processes"] == min(PROC) and r["task_names"] == 200),
                     None)
        large = next((r for r in matrix if r["processes"] == max(PROC) and r["task_names"] == 200),
                     None)
        if small and large:
            text += (f"From {small['processes']} to {large['processes']} processes (200 names) "
                     f"a tasker scrape went from {num(small['tasker_ms']['median'], 0)} to "
                     f"{num(large['tasker_ms']['median'], 0)} ms, a stock one from "
                     f"{num(small['stock_ms']['median'], 0)} to "
                     f"{num(large['stock_ms']['median'], 0)} ms. ")
    if rec:
        text += (f"After {rec['dead_processes']:,} recycled processes a tasker scrape took "
                 f"{num(rec['tasker_growth'], 2)}× the time it took before "
                 f"({'flat' if rec['flat'] else '**not flat**'}), once a single compacting "
                 f"scrape of {num(rec['tasker_first_scrape_ms']['median'], 0)} ms had folded "
                 "the dead processes away; the stock collector took "
                 f"{num(rec['stock_growth'], 1)}× as long as before at every scrape, because it "
                 "reads every file of every process that ever ran. ")
        if rec["flat"]:
            text += ("For a user: with `--max-tasks-per-child` or frequent process restarts, a "
                     "tasker node's scrape time stays where it was, where the stock "
                     "collector's keeps growing until the node is restarted.")
        else:
            text += ("For a user: recycling still makes a tasker node's scrape slower here, "
                     "by less than it makes the stock collector's.")
    return out + [text, ""]


def recording_section(b: Bench) -> list[str]:
    s = b.summaries[-1]
    p = b.params
    by = s["pool_process_us_by_receiver"]
    rows = [
        ["MainProcess, per task: `task_received`", rng(s["main_process_us_per_task"], 2)],
        ["pool process, per task: `task_prerun` + `task_success` + `task_postrun`",
         rng(s["pool_process_us_per_task"], 2)],
        ["… of which `task_prerun`", rng(by["prerun"], 2)],
        ["… of which `task_success` (no tasker receiver: Celery skips the signal; the "
         "success is counted in `task_postrun`)", rng(by["success"], 2)],
        ["… of which `task_postrun` (includes the node-state update)", rng(by["postrun"], 2)],
        ["`NodeState.record_finished` alone, pool process (own slot, no lock)",
         rng(s["node_state_record_finished_us"], 2)],
        *([["`NodeState.record_finished` alone, shared slot (`flock`: MainProcess, "
            "solo and thread pools)", rng(s["node_state_record_finished_shared_us"], 2)]]
          if "node_state_record_finished_shared_us" in s else []),
        ["`Counter.inc()`, multiprocess mode", rng(s["counter_inc_us"]["multiprocess"], 2)],
        ["`Counter.inc()`, in-memory mode (reference)", rng(s["counter_inc_us"]["memory"], 2)],
        ["`Histogram.observe()`, multiprocess mode",
         rng(s["histogram_observe_us"]["multiprocess"], 2)],
        ["`Histogram.observe()`, in-memory mode (reference)",
         rng(s["histogram_observe_us"]["memory"], 2)],
    ]
    main_us = s["main_process_us_per_task"]["median"]
    pool_us = s["pool_process_us_per_task"]["median"]
    return ["## 3. Recording cost", "", *b.provenance(), "",
            "Celery's task signals sent in process as Celery sends them (`Signal.send`, so the "
            "dispatch to every receiver tasker connects is counted), with tasker's recording "
            "activated as a worker node activates it (`_use_multiprocess_values(dir)`, "
            "`create_metrics()`, `NodeState.create`, `recording.activate(Recorder(...))`) on a "
            "temporary multiprocess directory. The task is "
            "tasker's real `diagnostics.noop` with a request pushed as the worker does "
            "(publish stamp included, so the queue-wait histogram is observed). "
            f"µs per call: median over {p['repeats']} repeats of {p['iterations']:,}-call loops "
            "(min–max over repeats).", "",
            *table(["what", "µs per call"], rows), "",
            f"**What it means.** Metrics add about {num(main_us)} µs per task to the "
            "MainProcess (`task_received`: one counter increment and the correlation id check, "
            "plus Celery's dispatch to the two receivers; this process limits a node's "
            f"throughput) and about {num(pool_us)} µs to the pool process that runs the task "
            "(counters, two histograms, the active gauge and the node-wide rate/EMA state, "
            "plus Celery's dispatch of two signals, about 2.5 µs each). Measured in place, in "
            "a running node (the throughput benchmark's pool CPU per task), the same work costs "
            "several times more than in this tight loop, where code and data stay in the CPU's "
            "caches; so this table ranks the parts, and the throughput benchmark gives the "
            "cost that counts.", ""]


def latency_section(b: Bench) -> list[str]:
    p = b.params
    rows = []
    for s in b.summaries:
        pooled, per = s["pooled_ms"], s["per_run_ms"]
        rows.append([f"`{s['variant']}`: {s['description']}", num(pooled["p50"], 2),
                     num(pooled["p95"], 2), num(pooled["p99"], 2),
                     f"{num(per['p50']['min'], 2)}–{num(per['p50']['max'], 2)}",
                     f"{num(per['p95']['min'], 2)}–{num(per['p95']['max'], 2)}",
                     str(s["tasks"])])
    t = next((s for s in b.summaries if "pooled_minus_bare_ms" in s), None)
    if t:
        d = t["pooled_minus_bare_ms"]
        rows.append(["tasker − bare", f"{d['p50']:+.2f}", f"{d['p95']:+.2f}",
                     f"{d['p99']:+.2f}", "", "", ""])
    out = ["## 4. Publish → start latency", "", *b.provenance(), "",
           f"A worker node per run (prefork -c 2), 10 warm-up tasks, then "
           f"{num(p['rate'], 0)} tasks/s for {num(p['duration'], 0)} s, "
           f"variants interleaved ({' '.join(p['variants'])}, {p['rounds']} rounds). The task "
           "body, identical in both apps (`bench/tasks.py`), takes `time.time()` when it starts, "
           "subtracts the publish time passed as its argument (taken just before "
           "`send_task`, so the publisher's header stamping is included) and RPUSHes the "
           "difference to Redis. Publisher and worker share one clock. Percentiles in ms over "
           "all tasks of all rounds; the per-run columns show the spread between runs.", "",
           *table(["variant", "p50", "p95", "p99", "p50 per run", "p95 per run", "tasks"], rows),
           ""]
    if t:
        d = t["pooled_minus_bare_ms"]
        base = next(s for s in b.summaries if s["variant"] == p["baseline"])

        def overlap(q: str) -> bool:
            a, c = t["per_run_ms"][q], base["per_run_ms"][q]
            return a["min"] <= c["max"] and c["min"] <= a["max"]

        text = (f"**What it means.** At a low steady rate a task starts "
                f"{abs(d['p50']):.2f} ms {'later' if d['p50'] > 0 else 'earlier'} (p50) "
                f"with tasker than with bare Celery, and {abs(d['p95']):.2f} ms "
                f"{'later' if d['p95'] > 0 else 'earlier'} at p95. ")
        if t["runs"] > 1:
            noisy = [q for q in ("p50", "p95") if overlap(q)]
            if noisy:
                text += (f"For {' and '.join(noisy)} the per-run ranges of the two variants "
                         "overlap, so that difference is within the run-to-run noise of this "
                         "shared machine. ")
            else:
                text += "The per-run ranges of the two variants do not overlap. "
        text += ("What tasker adds on this path is the publisher's header stamping and one "
                 "counter increment in the MainProcess at receipt; everything else it records "
                 "happens after the task has started.")
        out += [text, ""]
    return out


def sampler_section(b: Bench) -> list[str]:
    s = b.summaries[-1]
    rows = [[f"{s['queues']} queues × {s['levels']} levels ({s['lists']} non-empty lists, "
             f"{s['messages']:,} messages)", rng(s["ms"], 2),
             f"{num(s['round_trips']['median'], 0)} ({s['round_trips_setup']} connection "
             f"set-up + {s['round_trips_sampling']} sampling)",
             str(s["commands_last_call"]), "yes" if s["result_correct"] else "**NO**"]]
    return ["## 5. Fleet sampler (`sample_queues`)", "", *b.provenance(), "",
            "One `tasker.sampler.broker.sample_queues` call for every queue, on loopback Redis "
            "with `transport_options={\"priority_steps\": list(range(10))}` and 2 messages "
            f"at each level, timed {s['calls']} times (median, min–max). Each call opens and "
            "closes its own connection, as the beat task does. Round trips are counted on the "
            "client: each write of one command or one pipeline to a Redis socket.", "",
            *table(["sampled", "ms per call", "round trips", "commands", "depths correct"], rows),
            "", "Round trips of the last call: " + "; ".join(
                f"`{x}`" for x in s["round_trips_last_call"]) + ".", "",
            f"**What it means.** Sampling every priority level of {s['queues']} queues takes "
            f"{s['round_trips_sampling']} round trip(s) once the connection is open; the other "
            f"{s['round_trips_setup']} are redis-py and kombu opening the connection. The cost "
            "therefore grows with the number of lists only through the size of one pipeline, "
            "not with network round trips, which is what keeps a sample cheap against a remote "
            f"broker too. {num(s['ms']['median'], 1)} ms per sample is a small fraction of the "
            "default 15 s sample interval (`TASKER_SAMPLE_INTERVAL`).", ""]


def _e2e(b: Bench, workflow: str) -> dict[str, Any] | None:
    return next((s for s in b.summaries if s.get("table") == "end_to_end"
                 and s["workflow"] == workflow), None)


def _workflow_headline(b: Bench) -> list[list[str]]:
    targets = b.params.get("targets_ms", {})
    rows = []
    chain, wide = _e2e(b, "bench.chain10"), _e2e(b, "bench.wide10")
    if chain:
        p99 = chain["submit_ms"]["p99"]
        rows.append(["Task request submit → recorded and first step dispatched, p99",
                     f"{num(p99, 1)} ms", f"< {num(targets.get('submit_p99'), 0)} ms",
                     verdict(p99 < targets.get("submit_p99", float("inf")))])
    if wide:
        p99 = wide["submit_ms"]["p99"]
        rows.append(["Dispatching the steps of a 10-step workflow (record + publish 10), p99",
                     f"{num(p99, 1)} ms", f"< {num(targets.get('dispatch10_p99'), 0)} ms",
                     verdict(p99 < targets.get("dispatch10_p99", float("inf")))])
    if chain:
        per = chain["per_step_ms"]
        rows.append(["Framework overhead per step (10-step chain, empty handlers), p50 / p99",
                     f"{num(per['p50'], 1)} / {num(per['p99'], 1)} ms",
                     f"< {num(targets.get('step_overhead'), 0)} ms",
                     verdict(per["p99"] < targets.get("step_overhead", float("inf")))])
    return rows


def workflows_section(b: Bench) -> list[str]:
    p = b.params
    out = ["## 6. Task requests and workflows", "", *b.provenance(), ""]
    rows = []
    for s in (x for x in b.summaries if x.get("table") == "end_to_end"):
        def q(key: str, s: dict[str, Any] = s) -> str:
            d = s.get(key)
            return (f"{num(d['p50'], 1)} / {num(d['p95'], 1)} / {num(d['p99'], 1)}"
                    if d else "—")
        rows.append([f"`{s['workflow']}` ({s['root_steps']} root step"
                     f"{'s' if s['root_steps'] > 1 else ''})", str(s["requests"]),
                     q("submit_ms"), q("first_start_ms"), q("handoff_ms"), q("in_step_ms"),
                     q("end_to_end_ms"), q("per_step_ms")])
    if rows:
        out += [f"A real node (prefork -c 2, Redis, a private PostgreSQL database) runs "
                f"`bench/workflow_shapes.py`: ten empty steps in a line (`chain10`) and ten "
                f"independent ones (`wide10`), {p['requests']} requests each submitted at "
                f"{num(p['rate'], 0)}/s. `submit` is the `submit()` call (validate, record the "
                "task and its steps in one transaction, publish the ready steps). The other "
                "columns come from the records afterwards: *first start* is request recorded "
                "→ a root step's transaction begins; *handoff* is a step's completion → the "
                "next step's transaction begins (commit, publish, broker, pool); *in step* is "
                "the step's transaction (lock, dependency results, the empty handler, "
                "completion, dispatch of what it unblocked); *end to end* is recorded → "
                "finalized. p50 / p95 / p99 in ms.", "",
                *table(["workflow", "requests", "submit", "first start", "handoff", "in step",
                        "end to end", "end to end ÷ 10"], rows), ""]
        chain, wide = _e2e(b, "bench.chain10"), _e2e(b, "bench.wide10")
        text = "**What it means.** "
        if chain:
            text += (f"A step costs about {num(chain['per_step_ms']['p50'], 1)} ms end to end "
                     f"(p50) when the handler does nothing, of which "
                     f"{num(chain['handoff_ms']['p50'], 1)} ms is the handoff through the "
                     "broker and the pool — the same path a plain Celery chain takes, see the "
                     "latency table (§4) — and "
                     f"{num(chain['in_step_ms']['p50'], 1)} ms is tasker's transaction. ")
        if wide:
            text += (f"Recording a 10-step request and publishing all ten takes "
                     f"{num(wide['submit_ms']['p50'], 1)} ms (p50), "
                     f"{num(wide['submit_ms']['p99'], 1)} ms at p99: most of it is ten "
                     "`send_task` calls, one Redis round trip each. ")
        text += ("The targets of the original notes (50 ms, 100 ms, 200 ms) are met by a "
                 "wide margin; the figures are wall time on a shared 2-core machine where "
                 "the worker and the submitter compete for the same cores.")
        out += [text, ""]
    plans = [x for x in b.summaries if x.get("table") == "plans"]
    if plans:
        sizes = sorted({x["size"] for x in plans})
        names = list(dict.fromkeys(x["query"] for x in plans))
        prow = []
        for name in names:
            cells = []
            for size in sizes:
                x = next((y for y in plans if y["query"] == name and y["size"] == size), None)
                cells.append(rng(x["execution_ms"], 3) if x else "—")
            last = next(y for y in plans if y["query"] == name and y["size"] == sizes[-1])
            prow.append([name, *cells, f"{last['rows']}", "; ".join(last["scans"])])
        biggest = next(x for x in plans if x["size"] == sizes[-1])
        out += ["### SQL plans", "",
                f"The data generator (`generated_rows` in `bench/workflows.py`) records tasks "
                f"across the four example shapes with the state mix "
                f"{', '.join(f'{k} {v:.0%}' for k, v in p['state_mix'].items())}; "
                f"2 % of the open tasks have lost messages (the poller's work). At "
                f"{sizes[-1]:,} tasks the tables hold {biggest['tasks']:,} tasks and "
                f"{biggest['steps']:,} steps. Each statement is captured from "
                "`tasker/workflows/records.py` (so it is exactly what tasker runs) and run "
                "under `EXPLAIN (ANALYZE, BUFFERS)`, updates rolled back; execution time in "
                "ms, median (min–max).", "",
                *table(["statement", *[f"{s:,} tasks" for s in sizes],
                        f"rows at {sizes[-1]:,}", f"scans at {sizes[-1]:,}"], prow), "",
                "**What it means.** The statements a step runs (claim, readiness) use the "
                "primary key and the `(task_uuid, name)` key: they touch a handful of buffers "
                "and stay flat as the history grows. The recovery poller's claim reads only "
                "open steps through partial indexes; its cost follows the number of overdue "
                "steps it re-dispatches (up to its batch of 1,000), not the table. The "
                "backlog counts of the `records` sampler source read only open tasks and "
                "steps (partial indexes, migration 0003): they follow the backlog, not the "
                "history.", "",
                f"<details><summary>Plans at {sizes[-1]:,} tasks</summary>", ""]
        for name in names:
            last = next(y for y in plans if y["query"] == name and y["size"] == sizes[-1])
            out += [f"**{name}**", "", "```sql", last["sql"], "```", "", "```",
                    last["plan_text"], "```", ""]
        out += ["</details>", ""]
    return out


def _soak_headline(b: Bench) -> list[list[str]]:
    s = b.summaries[-1]
    scrape = (f"scrape time ÷ reference {num(s['growth']['scrape_relative'], 2)}× (raw "
              f"{num(s['raw_scrape_growth'], 2)}×)" if "scrape_relative" in s["growth"] else
              f"scrape time {num(s['growth']['scrape_ms'], 2)}×")
    return [[f"Soak: {s['tasks']:,} tasks, `--max-tasks-per-child={s['max_tasks_per_child']}`; "
             "end ÷ start", f"MainProcess memory {num(s['growth']['rss'], 2)}×, {scrape}, "
             f"files {num(s['growth']['files'], 2)}×",
             f"flat (≤ {num(1 + s['tolerance'], 2)}×)", verdict(s["flat"])]]


def soak_section(b: Bench) -> list[str]:
    s = b.summaries[-1]
    relative = "scrape_relative" in s["growth"]
    rows = [[c["phase"], f"{c['published']:,}", f"{c['finished']:,}",
             num(c["rss_bytes"] / 2**20, 1), str(c["files"]), rng(c["scrape_ms"], 2),
             *([rng(c["reference_ms"], 2), rng(c["scrape_relative"], 2)] if relative else []),
             f"{c['pool_processes_started']:,}"] for c in s["checkpoints"]]
    scrape_growth = (f"scrape time ÷ reference {num(s['growth']['scrape_relative'], 2)}× "
                     f"(raw scrape time {num(s['raw_scrape_growth'], 2)}×)" if relative else
                     f"scrape time {num(s['growth']['scrape_ms'], 2)}×")
    return ["## 7. Soak", "", *b.provenance(), "",
            f"One node (prefork -c 2, `--max-tasks-per-child={s['max_tasks_per_child']}`) "
            f"runs {s['tasks']:,} tasks: {s['mix']}. At the start (after the warm-up), the "
            "middle and the end the benchmark reads the MainProcess's resident memory, the "
            "number of files in the node's multiprocess directory and the time of a "
            f"`/metrics` scrape ({s['scrapes']} scrapes, median (min–max))"
            + (". The machine's speed drifts by tens of percent over minutes, as much as a "
               "3–5 ms scrape could grow, so each scrape is followed by a fixed reference "
               "workload of the same kind (`generate_latest` of a fixed in-process registry) "
               "and the scrape is judged by scrape time ÷ reference time." if relative else ".")
            , "",
            *table(["checkpoint", "published", "finished", "MainProcess RSS (MiB)", "files",
                    "scrape (ms)",
                    *(["reference (ms)", "scrape ÷ reference"] if relative else []),
                    "pool processes started"], rows), "",
            f"End ÷ start: memory {num(s['growth']['rss'], 3)}×, files "
            f"{num(s['growth']['files'], 2)}×, {scrape_growth}. "
            f"Totals on `/metrics` at the end: {s['counted']['succeeded']:,} succeeded and "
            f"{s['counted']['failed']:,} failed of {s['tasks']:,} published "
            f"({'exact' if s['totals_exact'] else '**not exact**'}).", "",
            f"**What it means.** {_soak_meaning(s)}", ""]


def shared_memory_section(b: Bench) -> list[str]:
    rows = []
    for m in b.summaries[-1]["measurements"]:
        pool, main = m["pool_process"], m["main_process"]
        rows.append([f"{m['task_names']:,}", num(pool["allocated_bytes"] / 1024, 0),
                     f"{pool['series']:,}", num(pool["file_bytes"] / 1024, 0),
                     num(main["allocated_bytes"] / 1024, 0)])
    return ["## 8. Shared memory per pool process", "", *b.provenance(), "",
            "A node's metric files live on a tmpfs in production (compose and Kubernetes "
            "give the directory one), where every allocated page is memory. One process "
            "sets recording up as a worker node does (the zero-valued series of every task "
            "name created in the MainProcess before the fork), then forks a pool process "
            "that runs every task name twice (one success, one failure). KiB allocated "
            "(`st_blocks`) by that pool process's files, the series in them, and the files' "
            "mapped size (sparse beyond what is allocated); the MainProcess's own files "
            "beside them.", "",
            *table(["task names run", "pool process KiB allocated", "series",
                    "KiB mapped", "MainProcess KiB allocated"], rows), "",
            f"**What it means.** A pool process's files hold what it recorded: about "
            f"{_per_name(b)[1]:.0f} series per task name it ran (the histograms' buckets "
            f"are most of them), about {_per_name(b)[0]:.1f} KiB, allocated page by page "
            "as series are added. Size a tmpfs for the busiest case: concurrency × (task "
            f"names a process runs) × {_per_name(b)[0]:.0f} KiB, plus the MainProcess's "
            "files; files of exited processes are folded away.", ""]


def _per_name(b: Bench) -> tuple[float, float]:
    """(KiB, series) a pool process's files grow by per task name it runs (first to last)."""
    ms = sorted(b.summaries[-1]["measurements"], key=lambda m: m["task_names"])
    first, last = ms[0], ms[-1]
    names = max(1, last["task_names"] - first["task_names"])
    kib = (last["pool_process"]["allocated_bytes"] - first["pool_process"]["allocated_bytes"])
    series = last["pool_process"]["series"] - first["pool_process"]["series"]
    return kib / 1024 / names, series / names


def instructions_section(b: Bench) -> list[str]:
    summ = _instructions_summary(b)
    rows = []
    for name in b.params["variants"]:
        s = summ.get(name)
        if not s:
            continue
        rounds = ", ".join(f"{v:,.0f}" for v in s.get("per_task_rounds") or [])
        rows.append([f"`{name}`", f"{s['per_task']:,.0f}", f"{s['added_per_task']:+,.0f}",
                     rounds, f"{s['raw_per_task']:,.0f}", f"{s['idle_per_second']:,.0f}"])
    p = b.params
    return ["## 9. MainProcess instructions per task (callgrind)", "", *b.provenance(), "",
            "The repeatable figure beside the time-based ratios of section 1: each "
            "variant's node runs under `valgrind --tool=callgrind`; the MainProcess's main "
            f"thread is counted over bursts of {p['tasks']:,} no-op tasks "
            f"({p['rounds']} per variant, on the same nodes). Work paid per second rather "
            "than per task (a blocking `BRPOP` on an empty queue timing out and being sent "
            "again, timers) is counted apart on the idle node "
            f"({p['idle_seconds']:g} s after each burst) and its share of the burst's "
            "duration subtracted: under valgrind a burst lasts 20–50× longer than in real "
            "time, so that work would otherwise weigh 20–50× more per task than it does.", "",
            *table(["variant", "instructions per task", "added", "rounds",
                    "raw (per-second work included)", "idle, per second"], rows), "",
            "**How to read it.** *Added* is against the first variant (bare Celery with "
            "tasker's changes to kombu). Python calls per task, counted without valgrind "
            "(`python -m bench.call_counts --variants ...`), are the cross-check: they do "
            "not depend on how fast the pool processes are, which under valgrind changes "
            "how many event-loop turns a task takes.", ""]


def _fmt_seconds(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.1f} ms"


def _agrees(value: Any, truth: Any) -> str:
    if value is None:
        return "not reported"
    if isinstance(truth, (int, float)) and isinstance(value, (int, float)):
        return f"{value:,.0f}" + ("" if value == truth else " ✗")
    return str(value)


def peers_section(b: Bench) -> list[str]:
    rec = {r["kind"]: r for r in b.records}
    versions, counts = rec.get("versions", {}), rec.get("counts")
    dk, tp = rec.get("depth_kill"), rec.get("throughput")
    tools = ("tasker", "flower", "celery_exporter")
    header = ["", "ground truth", f"tasker {versions.get('tasker')}",
              f"Flower {versions.get('flower')} (`-E`)",
              f"celery-exporter {versions.get('celery_exporter')} (`-E`)"]
    rows: list[list[str]] = []
    if counts:
        truth, found = counts["truth"], counts["tools"]
        for key, what in (("received", "tasks received"), ("succeeded", "succeeded"),
                          ("failed", "failed"),
                          ("failed_with_runtime", "failed tasks with a runtime")):
            rows.append([what, f"{truth[key]:,}",
                         *[_agrees(found[t].get(key), truth[key]) for t in tools]])
        for q in ("0.5", "0.95", "0.99"):
            rows.append([f"runtime p{round(float(q) * 100)} (sleep tasks; histogram)",
                         _fmt_seconds(truth["runtime"][q]) + " asked",
                         *[_fmt_seconds(found[t]["runtime"].get(q)) for t in tools]])
        rate = counts["rate"]["tasker"]
        rows.append(["processing rate during the run → one window after the last task",
                     "falls to 0", f"{rate['during']:.1f}/s → {rate['after_stop']:.1f}/s",
                     "not reported (counters: Prometheus `rate()`)",
                     "not reported (counters: Prometheus `rate()`)"])
    if dk:
        d = dk["depth"]
        rows.append([f"queue depth, {d['messages']} messages over priorities 0–9 "
                     f"({d['base_list']} in the base list)", f"{d['truth']:,}",
                     _agrees(d["tools"]["tasker"], d["truth"]),
                     _agrees(d["tools"]["flower"], d["truth"]) + " (API only, not in "
                     "`/metrics`)",
                     _agrees(d["tools"]["celery_exporter"], d["truth"])])
        k = dk["sigkill"]
        rows.append(["SIGKILLed task: exception", k["truth"]["exception"],
                     *[", ".join(f"`{e}`" for e in k["tools"][t]["exception"]) or "—"
                       for t in tools]])
        rows.append(["SIGKILLed task: process exit", k["truth"]["process_exit"],
                     *[", ".join(f"`{e}`" for e in (k["tools"][t]["process_exit"] or []))
                       or "not reported" for t in tools]])
    if tp:
        base = tp["bare"]
        ev = tp["bare_events"]
        rows.append(["node throughput, no-op tasks (÷ bare Celery, same cycle)", "—",
                     f"{tp['tasker']['ratio_to_bare']:.2f}× (no `-E` needed)",
                     f"{ev['ratio_to_bare']:.2f}× (bare Celery with `-E`)",
                     f"{ev['ratio_to_bare']:.2f}× (bare Celery with `-E`)"])
        cpu_tools = tp.get("tools_cpu_ms_per_task") or {}
        rows.append(["CPU per task: node (MainProcess + pool) + the tool's own process",
                     f"bare Celery {base['cpu_ms_per_task_node']:.2f} ms",
                     f"{tp['tasker']['cpu_ms_per_task_node']:.2f} ms (in the node)",
                     f"{ev['cpu_ms_per_task_node']:.2f} + "
                     f"{num(cpu_tools.get('flower'), 2)} ms",
                     f"{ev['cpu_ms_per_task_node']:.2f} + "
                     f"{num(cpu_tools.get('celery_exporter'), 2)} ms"])
    lines = ["## 10. Against the tools you use today", "", *b.provenance(), "",
             "Flower and celery-exporter (PyPI `prometheus-exporter-celery`) run side by side "
             "with tasker on one Redis database and one workload, and each figure is set "
             "against what the benchmark itself knows: it published every message, chose "
             "which fail (1 in 12) and how long each sleeps, and killed the pool process of "
             "a known task. The two event-based tools watch a tasker node started with `-E` "
             "(so all three see the same node); the throughput row compares nodes without "
             "any tool: tasker without `-E` against bare Celery with `-E`, which both peers "
             f"need. celery-exporter {versions.get('celery_exporter')} runs in its own "
             f"virtualenv (it requires redis-py < 6, so Celery "
             f"{versions.get('celery_exporter_celery')} and prometheus_client "
             f"{versions.get('celery_exporter_prometheus_client')} there); Celery "
             f"{versions.get('celery')}, kombu {versions.get('kombu')} for the nodes and "
             "Flower. ✗ marks a figure that differs from the ground truth.", "",
             *table(header, rows), ""]
    if tp:
        lines += [f"Throughput: {tp['cycles']} cycle(s) of {tp['burst']:,}-task bursts "
                  "(bench.overhead's paired method) with Flower and celery-exporter "
                  "running; bare Celery "
                  f"{tp['bare']['tasks_per_second']:,.0f} tasks/s, with `-E` "
                  f"{tp['bare_events']['tasks_per_second']:,.0f}, tasker "
                  f"{tp['tasker']['tasks_per_second']:,.0f}. Time-based: noisy on a shared "
                  "machine (section 1 has the careful comparison).", ""]
    return lines


def notes_section() -> list[str]:
    """Hand-written measurements of one change (``bench/notes/*.md``), each citing its commands."""
    notes = sorted((REPO / "bench" / "notes").glob("*.md"))
    lines: list[str] = []
    for path in notes:
        lines += [path.read_text().rstrip(), ""]
    return lines


def _soak_meaning(s: dict[str, Any]) -> str:
    first, last = s["checkpoints"][0], s["checkpoints"][-1]
    text = (f"{last['process_exits']:,} pool processes were replaced (one every "
            f"{s['max_tasks_per_child']} tasks). The MainProcess's memory "
            f"({num(s['growth']['rss'], 3)}×) and the directory "
            f"({num(s['growth']['files'], 2)}×) stayed flat: dead processes' files are folded "
            "into the node's archive and deleted. ")
    key = "scrape_relative" if "scrape_relative" in s["growth"] else "scrape_ms"
    if s["growth"][key] <= 1 + s["tolerance"]:
        return text + "So did the scrape: a node that recycles all day scrapes at night as fast "\
                      "as in the morning."
    delta = last["scrape_ms"]["median"] - first["scrape_ms"]["median"]
    return text + (f"The scrape did not: it took {num(delta, 2)} ms more at the end "
                   f"({num(s['growth'][key], 2)}×, over the {s['tolerance']:.0%} target). "
                   "That is far from the stock collector's growth (§2) and within the 2× "
                   "bound of the recycling test, but it is not flat.")


def plots(benches: dict[str, Bench], out_dir: Path, output: Path) -> list[str]:
    """PNG plots when matplotlib is installed; returns Markdown image lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    lines = []
    if "overhead" in benches:
        b = benches["overhead"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = b.params["variants"]
        data = [[r["tasks_per_second"] for r in b.runs if r["variant"] == n] for n in names]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(names) + 1), names)
        for i, values in enumerate(data, 1):
            ax.scatter([i] * len(values), values, s=12, zorder=3)
        ax.set_ylabel("no-op tasks/s")
        ax.set_title("Throughput per run (prefork -c 2, Redis)")
        fig.tight_layout()
        path = out_dir / f"overhead-{b.meta['mode']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        lines.append(f"![throughput per run]({os.path.relpath(path, output.parent)})")
    if "scrape" in benches:
        b = benches["scrape"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for n_names, style in ((10, "--"), (200, "-")):
            rs = sorted((r for r in b.runs if r["case"] == "matrix"
                         and r["task_names"] == n_names), key=lambda r: r["processes"])
            xs = [r["processes"] for r in rs]
            ax.plot(xs, [r["stock_ms"]["median"] for r in rs], style, marker="o",
                    label=f"stock, {n_names} names")
            ax.plot(xs, [r["tasker_ms"]["median"] for r in rs], style, marker="s",
                    label=f"tasker, {n_names} names")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({r["processes"] for r in b.runs if r["case"] == "matrix"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("pool processes")
        ax.set_ylabel("ms per scrape")
        ax.legend(fontsize=7)
        ax.set_title("/metrics scrape time")
        fig.tight_layout()
        path = out_dir / f"scrape-{b.meta['mode']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        lines.append(f"![scrape time]({os.path.relpath(path, output.parent)})")
    return lines


def render(benches: dict[str, Bench], mode: str, results_dir: Path, output: Path) -> str:
    try:
        shown_dir = results_dir.resolve().relative_to(REPO)
    except ValueError:
        shown_dir = results_dir
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench.report` from `{shown_dir}/*-{mode}.jsonl`, which "
        "`python -m bench.run_all` writes" + (" (quick mode: few repetitions, small sizes; "
                                              "indicative only)" if mode == "quick" else "")
        + ". Every figure below comes from those files; regenerate this page rather than "
        "editing it. Each benchmark also runs on its own (`python -m bench.<name>`, "
        "`--help` for options).",
        "",
    ]
    lines += headline(benches)
    lines += machine_section(benches)
    sections = {"overhead": overhead_section, "scrape": scrape_section,
                "recording": recording_section, "latency": latency_section,
                "sampler": sampler_section, "workflows": workflows_section,
                "soak": soak_section, "shared_memory": shared_memory_section,
                "instructions": instructions_section, "peers": peers_section}
    for name in BENCHES:
        if name in benches:
            lines += sections[name](benches[name])
    missing = [n for n in BENCHES if n not in benches]
    if missing:
        lines += [f"_Not run: {', '.join(missing)}._", ""]
    try:
        images = plots(benches, results_dir, output)
    except Exception as exc:  # noqa: BLE001 - plots are optional; the tables are the report
        print(f"plots skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        images = []
    if images:
        lines += ["## Plots", "", *images, ""]
    lines += notes_section()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--mode", choices=("full", "quick"), default="full")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    benches = load(args.results_dir, args.mode)
    if not benches:
        print(f"no {args.mode} results in {args.results_dir}", file=sys.stderr)
        return 1
    args.output.write_text(render(benches, args.mode, args.results_dir, args.output.resolve()))
    print(f"wrote {args.output} from {len(benches)} result file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
