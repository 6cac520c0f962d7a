"""Correlation ids across chains, groups and nested work; JSON logs; traces."""

from __future__ import annotations

import json
from collections import defaultdict

from support import wait_for


def _by_task(node) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = defaultdict(list)
    for event in node.log_events():
        if event.get("task_id"):
            lines[event["task_id"]].append(event)
    return lines


def test_chain_group_and_nested_work_carry_correlation_ids(start_node, app, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    node = start_node(env={"TASKER_OTEL_ENABLED": "true", "TASKER_OTEL_FILE": str(spans_file)})
    spawn = app.send_task("diagnostics.spawn", kwargs={"chain_length": 3, "group_size": 2},
                          queue=node.queue)
    wait_for(lambda: node.snapshot()["succeeded"] == 1 + 3 + 2 + 1, timeout=60,
             message="spawn and its 6 children")

    # Every log line is valid JSON (non-JSON lines are Celery's banner only).
    for line in node.log().splitlines():
        if line.startswith("{"):
            json.loads(line)
    lines = _by_task(node)
    spawn_lines = lines.pop(spawn.id)
    cid = spawn_lines[0]["correlation_id"]
    assert all(e["correlation_id"] == cid for e in spawn_lines)
    assert {e["event"] for e in spawn_lines} >= {"task.received", "task.succeeded"}

    same = [tid for tid, evs in lines.items() if all(e.get("correlation_id") == cid for e in evs)]
    other = [tid for tid in lines if tid not in same]
    assert len(same) == 5, lines  # the chain of three and the group of two
    assert len(other) == 1
    nested = lines[other[0]]
    nested_cid = nested[0]["correlation_id"]
    assert nested_cid != cid and all(e["correlation_id"] == nested_cid for e in nested)
    assert all(e.get("parent_correlation_id") == cid for e in nested), nested
    for tid in same:
        assert {"task.received", "task.succeeded"} <= {e["event"] for e in lines[tid]}
        assert all(e.get("worker") == node.hostname for e in lines[tid]
                   if e["event"] == "task.succeeded")

    # Tracing: the pool processes exported spans; the spawn's work is one trace.
    def spans() -> list[dict]:
        if not spans_file.exists():
            return []
        return [json.loads(ln) for ln in spans_file.read_text().splitlines() if ln.strip()]
    wait_for(lambda: len([s for s in spans() if s["name"].startswith("run/")]) >= 7,
             timeout=30, message="consumer spans of all 7 tasks")
    all_spans = spans()
    run_spawn = next(s for s in all_spans if s["name"] == "run/diagnostics.spawn")
    trace_id = run_spawn["context"]["trace_id"]
    assert run_spawn["attributes"]["correlation_id"] == cid
    in_trace = [s for s in all_spans if s["context"]["trace_id"] == trace_id]
    producers = [s for s in in_trace if s["name"].startswith("apply_async/")]
    assert len(producers) >= 3, [s["name"] for s in in_trace]
    assert all(s["attributes"].get("correlation_id") in (cid, nested_cid) for s in in_trace)
    assert sum(1 for s in in_trace if s["attributes"].get("correlation_id") == cid) >= 4


def test_plain_celery_client_without_tasker_gets_an_id(start_node, tmp_path):
    from celery import Celery

    node = start_node()
    plain = Celery("plain", broker=node.env["TASKER_BROKER_URL"])  # no tasker receivers
    # tasker's before_task_publish receiver is connected in this test process,
    # so strip what it added to prove the worker copes with a bare message.
    from celery.signals import before_task_publish

    from tasker.correlation import _stamp_headers

    before_task_publish.disconnect(_stamp_headers)
    try:
        result = plain.send_task("diagnostics.noop", queue=node.queue)
    finally:
        before_task_publish.connect(_stamp_headers, weak=False)
    wait_for(lambda: node.snapshot()["succeeded"] == 1, timeout=30, message="plain message ran")
    events = _by_task(node)[result.id]
    assigned = [e for e in node.log_events() if e.get("event") == "correlation.assigned_at_receipt"]
    assert len(assigned) == 1 and assigned[0]["task_id"] == result.id
    cid = assigned[0]["correlation_id"]
    assert all(e["correlation_id"] == cid for e in events)
    assert any(e["event"] == "task.succeeded" for e in events)


def test_correlation_ids_are_not_metric_labels(start_node, app):
    node = start_node()
    app.send_task("diagnostics.spawn", queue=node.queue)
    wait_for(lambda: node.snapshot()["succeeded"] == 7, timeout=60, message="7 tasks")
    cid_like = [k for k in node.scrape() for _, v in k[1] if len(v) == 36 and v.count("-") == 4]
    assert not cid_like


def test_plain_client_messages_on_a_node_not_logging_task_received(start_node):
    """Without ``task.received`` (WARNING), the first message without an id is given one at
    receipt (and logged once); later ones get theirs in the pool process, each its own."""
    from celery import Celery
    from celery.signals import before_task_publish

    from tasker.correlation import _stamp_headers, is_valid_correlation_id

    node = start_node(extra_args=["--loglevel", "WARNING"], wait=False)

    def serving() -> bool:  # worker.ready is an INFO line: not logged here
        try:
            return node.snapshot() is not None
        except OSError:
            return False

    wait_for(serving, timeout=60, message="the node's endpoint")
    plain = Celery("plain", broker=node.env["TASKER_BROKER_URL"])
    before_task_publish.disconnect(_stamp_headers)
    try:
        sent = [plain.send_task("diagnostics.fail", args=["plain"], queue=node.queue)
                for _ in range(3)]
    finally:
        before_task_publish.connect(_stamp_headers, weak=False)
    wait_for(lambda: node.snapshot()["failed"] == 3, timeout=30, message="3 plain failures")
    events = node.log_events()
    assert not [e for e in events if e.get("event") == "task.received"]
    failed = {e["task_id"]: e.get("correlation_id") for e in events
              if e.get("event") == "task.failed"}
    assert set(failed) == {r.id for r in sent}
    assert all(is_valid_correlation_id(c) for c in failed.values())
    assert len(set(failed.values())) == 3
    assigned = [e for e in events if e.get("event") == "correlation.assigned_at_receipt"]
    assert len(assigned) == 1 and failed[assigned[0]["task_id"]] == assigned[0]["correlation_id"]
