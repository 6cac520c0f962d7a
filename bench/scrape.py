"""Scrape cost: producing ``/metrics`` from a multiprocess directory, stock vs tasker.

    python -m bench.scrape [--quick] [--repeats R] [--dead N]

For 2, 8 and 32 processes x 10 and 200 task names, a directory of per-process
files in the shape a tasker worker writes: for each task name (label
``queue=celery``) the ``tasker_tasks_started``/``tasker_tasks_succeeded``
counters and the ``tasker_task_runtime_seconds``/``tasker_task_queue_wait_seconds``
histograms with tasker's buckets, plus each process's ``tasker_worker_tasks_active``
livesum gauge. The keys are taken from files written by tasker's real metric
objects (``create_metrics()``); the per-process files are then written in
prometheus_client's ``MmapedDict`` format with varied values.

On the same directory, in the same run, alternating, it times:

* stock: ``generate_latest`` of a registry holding ``MultiProcessCollector``;
* tasker: what a node serves, ``TextExposition.render`` over
  ``MetricStore(dir).read().families()``, with the store and the exposition
  (its cached line prefixes) kept between scrapes as the node keeps them. The
  first (cold) scrape is reported on its own.

and checks once per case that both expositions hold the same samples.

"After recycling": the 8 x 200 directory plus the files of N dead processes
(default 5,000; each a counter and a histogram file, each process having run
10 of the task names; live gauges are gone, as ``mark_process_dead`` leaves
it). Stock reads every dead file at every scrape; tasker's first scrape folds
them into memory and deletes them, later scrapes see live files only. Those
later scrapes alternate with scrapes by a second store on a copy of the same
live files that never had dead ones ("before"); "after / before" is the
median of those paired ratios.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import common
from bench.common import progress

BENCH = "scrape"
PROCESSES = (2, 8, 32)
TASK_NAMES = (10, 200)
RECYCLE_SHAPE = (8, 200)
DEAD_NAMES_PER_PROCESS = 10
QUEUE = "celery"
#: The issue's targets.
TARGET_SPEEDUP = 4.0
TARGET_SPEEDUP_CASES = ((8, 200), (32, 200))
#: "Flat after recycling": later scrapes within this factor of the same shape without dead files.
FLAT_TOLERANCE = 1.25

LIVE_BASE, DEAD_BASE = 100_000, 500_000


def live_ident(i: int) -> str:
    return f"{LIVE_BASE + i}-4242"


def dead_ident(i: int) -> str:
    return f"{DEAD_BASE + i}-4242"


# ----------------------------------------------------------------- directory shape


class Shape:
    """Exact file keys tasker writes, per file prefix and task name."""

    def __init__(self, task_names: list[str], scratch: str) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        from tasker.metrics.definitions import create_metrics
        from tasker.metrics.mmap_files import _use_multiprocess_values

        # Real metric objects write real keys (this process is only a generator).
        _use_multiprocess_values(scratch)
        metrics = create_metrics()
        for name in task_names:
            metrics.started.labels(name, QUEUE).inc()
            metrics.succeeded.labels(name, QUEUE).inc()
            metrics.runtime.labels(name, QUEUE).observe(0.004)
            metrics.queue_wait.labels(name, QUEUE).observe(0.002)
        metrics.tasks_active.labels("bench@localhost").set(0)

        self.keys: dict[str, dict[str | None, list[str]]] = {}
        for entry in sorted(os.listdir(scratch)):
            if not entry.endswith(".db"):
                continue
            prefix = entry.rsplit("_", 1)[0]  # counter, histogram, gauge_livesum
            by_task: dict[str | None, list[str]] = defaultdict(list)
            for key, _value, _ts, _pos in MmapedDict.read_all_values_from_file(
                    os.path.join(scratch, entry)):
                by_task[json.loads(key)[2].get("task")].append(key)
            self.keys[prefix] = dict(by_task)
        self._templates: dict[tuple[str, tuple[str, ...]], tuple[bytes, list[int], int]] = {}
        self._scratch = scratch

    def keys_for(self, prefix: str, names: tuple[str, ...]) -> list[str]:
        by_task = self.keys[prefix]
        if None in by_task:  # the gauge: no task label
            return list(by_task[None])
        return [k for n in names for k in by_task[n]]

    def template(self, prefix: str, names: tuple[str, ...]) -> tuple[bytes, list[int], int]:
        """(used bytes, value positions, file capacity) of a file holding these keys."""
        found = self._templates.get((prefix, names))
        if found is None:
            from prometheus_client.mmap_dict import MmapedDict, _read_all_values

            path = os.path.join(self._scratch, f"template-{len(self._templates)}.tmp")
            d = MmapedDict(path)
            for key in self.keys_for(prefix, names):
                d.write_value(key, 0.0, 0.0)
            d.close()
            data = Path(path).read_bytes()
            os.unlink(path)
            used = int.from_bytes(data[:4], "little", signed=True)
            positions = [pos for _k, _v, _t, pos in _read_all_values(data, used)]
            found = self._templates[(prefix, names)] = (data[:used], positions, len(data))
        return found

    def write(self, directory: str, prefix: str, ident: str, names: tuple[str, ...],
              rng: random.Random) -> None:
        import struct

        used_bytes, positions, capacity = self.template(prefix, names)
        data = bytearray(used_bytes)
        pack = struct.Struct("<dd").pack_into
        gauge = prefix.startswith("gauge")
        for pos in positions:
            value = float(rng.randint(0, 1)) if gauge else float(rng.randint(0, 400))
            pack(data, pos, value, 0.0)
        path = os.path.join(directory, f"{prefix}_{ident}.db")
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(capacity)  # preallocated like MmapedDict's (sparse) files


def build_live(directory: str, shape: Shape, processes: int, names: tuple[str, ...],
               seed: int) -> set[str]:
    rng = random.Random(seed)
    live = set()
    for i in range(processes):
        ident = live_ident(i)
        live.add(ident)
        for prefix in ("counter", "histogram", "gauge_livesum"):
            shape.write(directory, prefix, ident, names, rng)
    return live


def build_dead(directory: str, shape: Shape, dead: int, names: tuple[str, ...],
               seed: int) -> None:
    rng = random.Random(seed)
    per = DEAD_NAMES_PER_PROCESS
    for i in range(dead):
        start = (i * per) % len(names)
        subset = tuple(names[(start + j) % len(names)] for j in range(per))
        for prefix in ("counter", "histogram"):
            shape.write(directory, prefix, dead_ident(i), subset, rng)


# ------------------------------------------------------------------------ scrapes


class _Families:
    """What ``generate_latest`` needs from a registry: ``collect()``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> list[Any]:
        return self.store.read().families()


def stock_scraper(directory: str, merge_only: bool = False) -> Any:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    if merge_only:
        return lambda: list(registry.collect())
    return lambda: generate_latest(registry)


def tasker_scraper(directory: str, live: set[str]) -> Any:
    """A scrape function; ``.merge_only`` on it times the same store without the text,
    ``.render`` the same exposition without reading the files."""
    from tasker.metrics.exposition import TextExposition
    from tasker.metrics.store import MetricStore

    store = MetricStore(directory, is_alive=live.__contains__)
    families = _Families(store)
    exposition = TextExposition()

    def scrape() -> bytes:
        return exposition.render(families)

    scrape.merge_only = families.collect  # type: ignore[attr-defined]
    scrape.render = exposition.render  # type: ignore[attr-defined]
    return scrape


class _Static:
    """A registry whose ``collect()`` returns families built beforehand."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def timed_split(collect: Any, render: Any = None) -> tuple[float, float]:
    """(seconds to build the families, seconds for ``render`` to format them;
    prometheus_client's ``generate_latest`` unless another is given)."""
    from prometheus_client import generate_latest

    render = render or generate_latest
    gc.collect()
    t0 = time.perf_counter()
    families = list(collect())
    t1 = time.perf_counter()
    render(_Static(families))
    return t1 - t0, time.perf_counter() - t1


def timed(fn: Any) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def samples_of(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def same_samples(a: bytes, b: bytes) -> bool:
    sa, sb = samples_of(a), samples_of(b)
    if sa.keys() != sb.keys():
        return False
    return all(abs(sa[k] - sb[k]) <= 1e-9 * max(1.0, abs(sa[k])) for k in sa)


def file_stats(directory: str) -> dict[str, int]:
    files = [e for e in os.scandir(directory) if e.name.endswith(".db")]
    return {"files": len(files),
            "used_bytes": sum(int.from_bytes(open(e.path, "rb").read(4), "little")
                              for e in files)}


def ms(values: list[float]) -> dict[str, Any]:
    return common.spread(v * 1e3 for v in values)


# --------------------------------------------------------------------------- main


def run_matrix(results: common.Results, shape: Shape, names: list[str], repeats: int,
               workdir: str, split: bool) -> dict[tuple[int, int], dict[str, Any]]:
    out = {}
    for n_names in TASK_NAMES:
        for processes in PROCESSES:
            directory = tempfile.mkdtemp(prefix=f"p{processes}-n{n_names}-", dir=workdir)
            live = build_live(directory, shape, processes, tuple(names[:n_names]),
                              seed=processes * 1000 + n_names)
            stock, tasker = stock_scraper(directory), tasker_scraper(directory, live)
            first, tasker_out = timed(tasker)  # cold: parses every key once
            stock_times, tasker_times = [], []
            stock_merge, tasker_merge, stock_format, tasker_format = [], [], [], []
            stock_out = b""
            stock_collect = stock_scraper(directory, merge_only=True)
            for _ in range(repeats):
                t, stock_out = timed(stock)
                stock_times.append(t)
                t, tasker_out = timed(tasker)
                tasker_times.append(t)
                if split:
                    merge, fmt = timed_split(stock_collect)
                    stock_merge.append(merge)
                    stock_format.append(fmt)
                    merge, fmt = timed_split(tasker.merge_only, tasker.render)
                    tasker_merge.append(merge)
                    tasker_format.append(fmt)
            match = same_samples(stock_out, tasker_out)
            paired = [s / t for s, t in zip(stock_times, tasker_times)]
            record = {
                "case": "matrix", "processes": processes, "task_names": n_names,
                **file_stats(directory), "exposition_bytes": len(stock_out),
                "stock_ms": ms(stock_times), "tasker_ms": ms(tasker_times),
                "tasker_first_scrape_ms": first * 1e3,
                "speedup": statistics.median(stock_times) / statistics.median(tasker_times),
                "paired_speedup": common.spread(paired),
                "outputs_match": match,
            }
            if split:
                # Where the time goes: reading + merging the files (collect()) alone;
                # the rest of a scrape is generate_latest formatting the text.
                record["stock_merge_ms"] = ms(stock_merge)
                record["tasker_merge_ms"] = ms(tasker_merge)
                record["stock_format_ms"] = ms(stock_format)
                record["tasker_format_ms"] = ms(tasker_format)
                record["merge_speedup"] = (statistics.median(stock_merge)
                                           / statistics.median(tasker_merge))
            if (processes, n_names) in TARGET_SPEEDUP_CASES:
                record["target_speedup"] = TARGET_SPEEDUP
                record["target_met"] = record["paired_speedup"]["median"] >= TARGET_SPEEDUP
            results.write("run", record)
            out[(processes, n_names)] = record
            progress(BENCH, f"{processes:>2} processes x {n_names:>3} names: stock "
                            f"{record['stock_ms']['median']:.1f} ms, tasker "
                            f"{record['tasker_ms']['median']:.1f} ms "
                            f"({record['paired_speedup']['median']:.1f}x; "
                            f"outputs match: {match})")
            shutil.rmtree(directory)
    return out


def run_recycled(results: common.Results, shape: Shape, names: list[str], dead: int,
                 repeats: int, first_repeats: int, stock_after_repeats: int,
                 pair_repeats: int, workdir: str) -> dict[str, Any]:
    processes, n_names = RECYCLE_SHAPE
    task_names = tuple(names[:n_names])
    template = tempfile.mkdtemp(prefix="recycled-template-", dir=workdir)
    live = build_live(template, shape, processes, task_names, seed=7)
    # The same live files without any dead process, kept for the "before" side.
    live_only = os.path.join(workdir, "live-only")
    shutil.copytree(template, live_only)

    stock_before_times = [timed(stock_scraper(live_only))[0] for _ in range(repeats)]
    tasker_before = tasker_scraper(live_only, live)
    tasker_before()  # cold

    started = time.monotonic()
    build_dead(template, shape, dead, task_names, seed=11)
    progress(BENCH, f"wrote {dead} dead processes' files in {time.monotonic() - started:.1f}s")
    stats = file_stats(template)

    # Stock: every scrape reads every dead file (it never forgets them).
    stock = stock_scraper(template)
    stock_times, stock_out = [], b""
    for _ in range(stock_after_repeats):
        t, stock_out = timed(stock)
        stock_times.append(t)
    progress(BENCH, f"after {dead} recycled processes: stock "
                    f"{statistics.median(stock_times) * 1e3:.0f} ms per scrape")

    # tasker: the first scrape folds the dead files away (destructive), so each
    # repeat gets a fresh copy of the directory.
    first_times, match, files_after = [], None, None
    compacted = None
    for i in range(first_repeats):
        directory = os.path.join(workdir, f"recycled-{i}")
        shutil.copytree(template, directory)
        tasker = tasker_scraper(directory, live)
        t, out = timed(tasker)
        first_times.append(t)
        files_after = file_stats(directory)["files"]
        if i == 0:
            compacted = tasker
            match = same_samples(stock_out, compacted())
        else:
            shutil.rmtree(directory)
    shutil.rmtree(template)

    # Later scrapes vs the same live files without the history, alternating
    # (the two stores side by side, so machine noise hits both alike).
    before_times, later_times = [], []
    for _ in range(pair_repeats):
        before_times.append(timed(tasker_before)[0])
        later_times.append(timed(compacted)[0])
    paired = [a / b for a, b in zip(later_times, before_times)]

    record = {
        "case": "recycled", "processes": processes, "task_names": n_names,
        "dead_processes": dead, "dead_names_per_process": DEAD_NAMES_PER_PROCESS,
        "files_before": stats["files"], "used_bytes_before": stats["used_bytes"],
        "files_after_first_tasker_scrape": files_after,
        "stock_ms": ms(stock_times), "tasker_first_scrape_ms": ms(first_times),
        "tasker_later_ms": ms(later_times),
        "stock_live_only_ms": ms(stock_before_times),
        "tasker_live_only_ms": ms(before_times),
        "stock_growth": statistics.median(stock_times) / statistics.median(stock_before_times),
        "tasker_growth": statistics.median(paired),
        "tasker_growth_paired": common.spread(paired),
        "speedup_later": statistics.median(stock_times) / statistics.median(later_times),
        "outputs_match": match, "flat_tolerance": FLAT_TOLERANCE,
    }
    record["flat"] = record["tasker_growth"] <= FLAT_TOLERANCE
    results.write("run", record)
    progress(BENCH, f"tasker: first scrape {record['tasker_first_scrape_ms']['median']:.0f} ms "
                    f"(folds {dead} processes), later {record['tasker_later_ms']['median']:.1f}"
                    f" ms ({record['tasker_growth']:.2f}x the live-only scrape, paired); "
                    f"outputs match: {match}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.scrape", __doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help="scrapes per case (default 7; quick 2)")
    parser.add_argument("--dead", type=int,
                        help="dead processes in the recycling case (default 5000; quick 300)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)
    dead = args.dead if args.dead is not None else (300 if args.quick else 5000)
    first_repeats = 1 if args.quick else 3
    # Each stock scrape of the recycled directory reads every dead file (seconds each).
    stock_after_repeats = min(repeats, 3)
    # tasker before/after recycling, alternating: cheap, so more of them.
    pair_repeats = repeats if args.quick else max(repeats, 15)
    results = common.Results(BENCH, args, {
        "processes": PROCESSES, "task_names": TASK_NAMES, "repeats": repeats,
        "recycle_shape": RECYCLE_SHAPE, "dead_processes": dead,
        "dead_names_per_process": DEAD_NAMES_PER_PROCESS,
        "tasker_first_scrape_repeats": first_repeats,
        "stock_after_recycling_repeats": stock_after_repeats,
        "tasker_before_after_pairs": pair_repeats,
        "target_speedup": TARGET_SPEEDUP, "target_speedup_cases": TARGET_SPEEDUP_CASES,
        "queue_label": QUEUE, "merge_split": not args.quick,
    })
    workdir = tempfile.mkdtemp(prefix="tasker-bench-scrape-")
    ok = False
    try:
        scratch = os.path.join(workdir, "shape")
        os.mkdir(scratch)
        names = [f"bench_ns{i // 20}.task_{i:03d}" for i in range(max(TASK_NAMES))]
        shape = Shape(names, scratch)
        matrix = run_matrix(results, shape, names, repeats, workdir, split=not args.quick)
        recycled = run_recycled(results, shape, names, dead, repeats, first_repeats,
                                stock_after_repeats, pair_repeats, workdir)
        results.write("summary", {
            "matrix": [{k: r[k] for k in ("processes", "task_names", "speedup",
                                          "paired_speedup", "outputs_match")}
                       for r in matrix.values()],
            "targets": {f"{p}x{n}": matrix[(p, n)]["target_met"]
                        for p, n in TARGET_SPEEDUP_CASES},
            "recycled_flat": recycled["flat"],
            "all_outputs_match": all(r["outputs_match"] for r in matrix.values())
            and bool(recycled["outputs_match"]),
        })
        ok = True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
