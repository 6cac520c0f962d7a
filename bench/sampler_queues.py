"""Fleet figures for docs/scaling.md: sampler cost by queue count, scrape size per node.

    python -m bench.sampler_queues [--quick] [--calls N] [--out results.json]

1. ``sample_queues`` for 10, 100 and 1,000 queues (``--quick``: 10 and 100),
   each call opening its own connection as the beat task does (median and
   min-max of ``--calls`` calls):
   * Redis: a private server (``tasker.cli.embedded_services``), kombu's default four
     priority levels, 3 messages per queue (levels 0 and 9); bytes moved are
     Redis's ``total_net_input_bytes`` + ``total_net_output_bytes`` per call.
   * RabbitMQ on 127.0.0.1:5672 (when it answers): classic and quorum queues
     of this run's own names, 3 messages each, deleted afterwards.
   Depths are checked against what was written.
2. A real worker node (``-c 2``, private Redis): series and bytes of one
   ``/metrics`` scrape, idle, after each of 3 task names, and after a sample
   round of 100 queues (what a node exporting the fleet sample adds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench import common

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _net_bytes(client: Any) -> int:
    stats = client.info("stats")
    return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])


def redis_rounds(url: str, counts: list[int], calls: int) -> list[dict[str, Any]]:
    import kombu
    import redis

    from tasker.sampler.broker import PUBLISHED_AT_HEADER, sample_queues

    client = redis.Redis.from_url(url)
    rows = []
    for n in counts:
        queues = [f"bench-sq-{n}-{i}" for i in range(n)]
        with kombu.Connection(url) as conn, conn.Producer() as producer:
            for q in queues:
                queue = kombu.Queue(q, kombu.Exchange(q, "direct"), q)
                for priority in (0, 0, 9):
                    producer.publish({}, exchange=queue.exchange, routing_key=q,
                                     declare=[queue], priority=priority,
                                     headers={PUBLISHED_AT_HEADER: str(time.time())})
        # INFO's own request and reply are counted too: measure them alone.
        first = _net_bytes(client)
        info_cost = _net_bytes(client) - first
        times, moved = [], []
        for _ in range(calls):
            before = _net_bytes(client)
            started = time.perf_counter()
            with kombu.Connection(url) as conn:
                samples = sample_queues(conn, queues)
            times.append((time.perf_counter() - started) * 1000)
            moved.append(_net_bytes(client) - before - info_cost)
        exact = all(samples[q].depth == 3 for q in queues)
        rows.append({"broker": "redis", "queues": n, "ms": _spread(times),
                     "bytes": statistics.median(moved), "depths_exact": exact})
        common.progress("sampler_queues", f"redis {n} queues: "
                        f"{statistics.median(times):.1f} ms, exact={exact}")
    return rows


def amqp_rounds(counts: list[int], calls: int) -> list[dict[str, Any]]:
    import kombu

    from tasker.sampler.broker import BrokerSampleError, sample_queues

    rows = []
    for kind in ("classic", "quorum"):
        for n in counts:
            tag = uuid.uuid4().hex[:6]
            queues = [f"bench-sq-{kind}-{tag}-{i}" for i in range(n)]
            with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
                try:
                    started = time.perf_counter()
                    with conn.Producer() as producer:
                        for q in queues:
                            queue = kombu.Queue(q, kombu.Exchange(q, "direct", durable=True),
                                                q, durable=True,
                                                queue_arguments={"x-queue-type": kind})
                            for _ in range(3):
                                producer.publish({}, exchange=queue.exchange, routing_key=q,
                                                 declare=[queue], delivery_mode=2)
                    setup = time.perf_counter() - started
                    # Let the broker finish what creating the queues started
                    # (quorum queues elect a leader and write their logs).
                    time.sleep(min(10.0, 2 + setup / 2))
                    # The same reads without the sampler's caps (3 s connect, 5 s
                    # I/O): what the broker itself needs to connect and answer.
                    # A new connection may not be answered at all: each quorum
                    # queue holds file descriptors, and a broker out of them
                    # accepts no socket (RabbitMQ's default limit is 1,024).
                    t0 = time.perf_counter()
                    connect_ms: float | None = None
                    with contextlib.suppress(kombu.exceptions.OperationalError), \
                            kombu.Connection(AMQP_URL, connect_timeout=30) as bare:
                        bare.ensure_connection(max_retries=1)
                        connect_ms = (time.perf_counter() - t0) * 1000
                    # The declares on the connection that is already open.
                    channel = conn.channel()
                    t0 = time.perf_counter()
                    for q in queues:
                        channel.queue_declare(queue=q, passive=True)
                    declare_ms = (time.perf_counter() - t0) * 1000
                    times, errors, exact = [], [], True
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        try:
                            with kombu.Connection(AMQP_URL) as sconn:
                                samples = sample_queues(sconn, queues)
                        except BrokerSampleError as exc:
                            # The sampler's 5 s I/O cap: recorded, not hidden.
                            errors.append(str(exc))
                            continue
                        finally:
                            times.append((time.perf_counter() - t0) * 1000)
                        exact = exact and all(samples[q].depth == 3 for q in queues)
                finally:
                    channel = conn.channel()
                    for q in queues:
                        try:
                            channel.queue_delete(q)
                            channel.exchange_delete(q)
                        except Exception:  # noqa: BLE001 - best-effort cleanup
                            channel = conn.channel()
            rows.append({"broker": f"rabbitmq-{kind}", "queues": n, "ms": _spread(times),
                         "bytes": None, "depths_exact": exact and not errors,
                         "failed_calls": len(errors), "errors": errors[:3],
                         "uncapped_connect_ms": connect_ms and round(connect_ms, 1),
                         "uncapped_declares_ms": round(declare_ms, 1),
                         "setup_seconds": round(setup, 1)})
            common.progress("sampler_queues", f"rabbitmq {kind} {n} queues: "
                            f"{statistics.median(times):.1f} ms, exact={exact}, "
                            f"failed calls {len(errors)}/{calls} {errors[:1]}; uncapped: "
                            f"connect {connect_ms} ms, declares {declare_ms:.0f} ms")
    return rows


def _scrape(port: int) -> tuple[int, int, float]:
    """(series, bytes, ms) of one /metrics scrape."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read()
    ms = (time.perf_counter() - started) * 1000
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return series, len(body), ms


def node_scrapes(url: str, work: Path) -> dict[str, Any]:
    from celery import Celery

    port = common.free_port()
    fleet = [f"bench-fleet-{i}" for i in range(100)]
    env = {**common.base_env(), "TASKER_BROKER_URL": url, "TASKER_METRICS_PORT": str(port),
           "TASKER_METRICS_INTERVAL": "0", "TASKER_SAMPLE_QUEUES": ",".join(fleet),
           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")}
    (work / "metrics").mkdir()
    log = open(work / "worker.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasker", "worker",
                             *common.COMMON_WORKER_ARGS, "-Q", "bench-node", "-n",
                             "bench-node@%h"], env=env, cwd=common.REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    app = Celery("bench-publisher", broker=url)
    out: dict[str, Any] = {"steps": []}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _scrape(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "worker.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        time.sleep(1.0)

        def allocated() -> int:
            # What the files hold in a tmpfs: allocated blocks, not their
            # (sparse, preallocated) length.
            return sum(p.stat().st_blocks * 512 for p in (work / "metrics").iterdir()
                       if p.is_file())

        def step(label: str) -> None:
            series, size, ms = _scrape(port)
            out["steps"].append({"after": label, "series": series, "bytes": size,
                                 "ms": round(ms, 1), "directory_bytes": allocated()})
            common.progress("sampler_queues", f"node scrape after {label}: {series} series, "
                            f"{size} bytes")

        def settle(predicate_series: int) -> None:
            end = time.monotonic() + 20
            while _scrape(port)[0] <= predicate_series and time.monotonic() < end:
                time.sleep(0.2)
            time.sleep(1.2)  # in-memory counts are folded in once a second

        step("idle")
        for i, (task, args) in enumerate((("diagnostics.noop", ()),
                                          ("diagnostics.sleep", (0.001,)),
                                          ("diagnostics.fail", ("bench",)))):
            before = out["steps"][-1]["series"]
            for _ in range(5):
                app.send_task(task, args=args, queue="bench-node")
            settle(before)
            step(f"{i + 1} task name(s)")
        before = out["steps"][-1]["series"]
        app.send_task("tasker.sample_fleet", queue="bench-node")
        settle(before)
        step("a sample round of 100 queues")
        # The node's resident memory (all its processes), as it reports it.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("tasker_worker_memory_bytes"):
                    out["node_memory_bytes"] = float(line.rsplit(" ", 1)[1])
        common.progress("sampler_queues",
                        f"node memory: {out.get('node_memory_bytes', 0) / 2**20:.0f} MiB")
        # Broker connections one idle node holds (the Redis server is this
        # run's own: every other client is the node, this one excepted).
        import redis

        clients = redis.Redis.from_url(url).client_list()
        out["redis_clients_per_node"] = len(clients) - 1
        common.progress("sampler_queues", f"redis clients of one node: {len(clients) - 1}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
    steps = out["steps"]
    names = [s for s in steps if "task name" in s["after"]]
    out["series_per_task_name"] = (names[-1]["series"] - names[0]["series"]) / (len(names) - 1)
    out["bytes_per_task_name"] = (names[-1]["bytes"] - names[0]["bytes"]) / (len(names) - 1)
    out["directory_bytes_per_task_name"] = (
        names[-1]["directory_bytes"] - names[0]["directory_bytes"]) / (len(names) - 1)
    out["series_per_sampled_queue"] = (steps[-1]["series"] - names[-1]["series"]) / 100
    out["bytes_per_sampled_queue"] = (steps[-1]["bytes"] - names[-1]["bytes"]) / 100
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 queues only")
    parser.add_argument("--calls", type=int, default=None, help="timed calls per row")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--counts", help="queue counts, comma-separated (default 10,100,1000)")
    parser.add_argument("--rabbitmq-only", action="store_true")
    parser.add_argument("--no-rabbitmq", action="store_true")
    args = parser.parse_args(argv)
    counts = [10, 100] if args.quick else [10, 100, 1000]
    if args.counts:
        counts = [int(c) for c in args.counts.split(",")]
    calls = args.calls or (5 if args.quick else 15)

    from tasker.cli.embedded_services import EmbeddedRedis

    results: dict[str, Any] = {"machine": common.machine_info(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-sampler-queues-") as tmp:
        work = Path(tmp)
        if not args.rabbitmq_only:
            with EmbeddedRedis(work / "redis") as server:
                url = f"redis://127.0.0.1:{server.port}/0"
                results["rows"] += redis_rounds(url, counts, calls)
                results["node"] = node_scrapes(url, work)
        try:
            import kombu

            if args.no_rabbitmq:
                raise RuntimeError("--no-rabbitmq")
            with kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:  # noqa: BLE001 - RabbitMQ is optional here
            common.progress("sampler_queues", f"RabbitMQ not measured: {exc}")
        else:
            results["rows"] += amqp_rounds(counts, calls)

    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    print("| broker | queues | ms per sample (median, min-max) | bytes moved | depths exact |")
    print("|---|--:|--:|--:|--:|")
    for row in results["rows"]:
        ms = row["ms"]
        moved = f"{row['bytes']:,.0f}" if row["bytes"] is not None else "-"
        failed = f" ({row['failed_calls']} calls failed)" if row.get("failed_calls") else ""
        print(f"| {row['broker']} | {row['queues']:,} | {ms['median']:.1f} "
              f"({ms['min']:.1f}-{ms['max']:.1f}) | {moved} | {row['depths_exact']}{failed} |")
    print()
    if "node" not in results:
        return 0
    for s in results["node"]["steps"]:
        print(f"node scrape after {s['after']}: {s['series']} series, {s['bytes']:,} bytes, "
              f"{s['ms']} ms; metrics directory {s['directory_bytes']:,} bytes allocated")
    node = results["node"]
    print(f"per task name: {node['series_per_task_name']:.1f} series, "
          f"{node['bytes_per_task_name']:,.0f} bytes; per sampled queue: "
          f"{node['series_per_sampled_queue']:.2f} series, "
          f"{node['bytes_per_sampled_queue']:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
