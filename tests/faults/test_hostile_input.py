"""Hostile input against a real prefork worker node: it counts, stays valid and goes on.

Already covered elsewhere (not repeated here):

* ``tests/integration/test_worker_node.py``
  - undecodable message bodies (``tasker_tasks_rejected_total{reason="decode_error"}``) and
    unknown task names (``reason="unknown_task"``), the node goes on:
    ``test_malformed_and_unknown_messages_are_counted_and_the_node_goes_on``;
  - 40 slow clients holding half-sent requests, the endpoint still answers and the
    MainProcess thread count stays bounded: ``test_slow_clients_do_not_stop_the_endpoint``;
  - missing/wrong bearer token (401), unknown path (404), wrong method (405):
    ``test_endpoint_auth_paths_and_methods``;
  - a bad setting stops start-up with one redacted line:
    ``test_bad_setting_stops_startup_with_one_redacted_line``.
* ``tests/integration/test_correlation_flow.py``
  - a message without any ``tasker_correlation_id`` header (plain Celery client) gets an id
    at receipt, logged once: ``test_plain_celery_client_without_tasker_gets_an_id``;
  - correlation ids are never metric labels: ``test_correlation_ids_are_not_metric_labels``.
* ``tests/integration/test_workflows.py``
  - unknown workflow, a context failing the workflow's validation, a context over a
    lowered ``TASKER_MAX_CONTEXT_BYTES`` via the Python API, and ``--context`` that is not
    JSON: ``test_bad_requests_are_refused_and_nothing_is_written``.

Added here:

* wrong arguments to known tasks: failures labelled ``exception="TypeError"``;
* a context over the *default* limit, via the Python API and ``tasker submit --context``;
* task names, queue names and exception messages with quotes, backslashes, newlines and
  non-ASCII: ``/metrics`` parses, ``/metrics.json`` and every log line are valid JSON;
* 10,000 distinct unknown task names: the ``task`` label stays bounded, the node goes on;
* an invalid and an oversized (10 kB) ``tasker_correlation_id`` header from a plain client:
  replaced by a fresh UUIDv7 that the task sees, logged once, never echoed.

Two product bugs this module found, now fixed: forged ``delivery_info`` routing keys
minted one ``queue`` label value per message (now all ``other``); task
failures were logged as ``task.internal_error`` instead of ``task.failed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from support import REPO, SESSION, http_get, parse_metrics, total, wait_for

#: Characters that must be escaped or encoded somewhere between a task and a scrape.
NASTY = 'q"uote \\back\\slash \\n new\nline tab\t üñíçødé ✓ 日本 \U0001f525 a://u:p"@h'


def _log_lines_are_json(node: Any) -> int:
    """Every line the node logged after its banner is one JSON object; returns how many."""
    count = 0
    for line in node.log().splitlines():
        if line.startswith("{"):
            json.loads(line)  # raises on a broken line
            count += 1
    return count


def _registered(app: Any) -> set[str]:
    """Task names a node of this repo registers (every ``workers/`` module imported)."""
    from tasker.workflows.definition import workflows

    workflows()  # imports every workers/ module, as the worker does
    app.loader.import_default_modules()  # and tasker's own task modules
    return set(app.tasks)


def _failure_lines(node: Any) -> list[dict[str, Any]]:
    """Celery's per-task failure lines (ERROR from ``celery.app.trace`` with the exception).

    Selected by logger, not by event name: ``tasker/logs.py`` maps Celery's LOG_FAILURE
    and LOG_INTERNAL_ERROR format strings, which are the same string, so today an ordinary
    failure is named ``task.internal_error`` instead of the documented ``task.failed``.
    """
    return [e for e in node.log_events() if e.get("logger") == "celery.app.trace"
            and e.get("level") == "ERROR" and e.get("task_id")]


def _task_label_values(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["task"] for family in text_string_to_metric_families(text)
            for s in family.samples if "task" in s.labels}


@contextmanager
def _plain_client() -> Iterator[None]:
    """Publish as a client without tasker: no publish-side header stamping."""
    from celery.signals import before_task_publish

    from tasker.correlation import _stamp_headers

    before_task_publish.disconnect(_stamp_headers)
    try:
        yield
    finally:
        before_task_publish.connect(_stamp_headers, weak=False)


def _table_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT (SELECT count(*) FROM tasker_tasks) +"
                            " (SELECT count(*) FROM tasker_steps)").fetchone()[0]


def test_wrong_arguments_are_failures_labelled_type_error(start_node, app):
    node = start_node()
    q = node.queue
    app.send_task("diagnostics.sleep", args=(0.01, 2, 3), queue=q)  # too many
    app.send_task("diagnostics.sleep", kwargs={"bogus": 1}, queue=q)  # unexpected keyword
    app.send_task("diagnostics.noop", args=("surplus",), queue=q)
    app.send_task("diagnostics.fail", args=("a", "b"), queue=q)  # TypeError, not its own failure
    app.send_task("diagnostics.sleep", args=("not a number",), queue=q)  # ValueError (checked)

    def failed() -> Any:
        s = node.scrape()
        return s if total(s, "tasker_tasks_failed_total") == 5 else None
    s = wait_for(failed, timeout=45, message="5 failed tasks")
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.sleep",
                 exception="TypeError") == 2
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.noop",
                 exception="TypeError") == 1
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.fail",
                 exception="TypeError") == 1
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.sleep",
                 exception="ValueError") == 1
    assert total(s, "tasker_tasks_succeeded_total") == 0
    # Every failed execution was also started and timed (the outcome does not matter).
    assert total(s, "tasker_tasks_started_total", queue=q) == 5
    assert total(s, "tasker_task_runtime_seconds_count") == 5

    # The node goes on: the same pool processes run good work afterwards.
    for _ in range(4):
        app.send_task("diagnostics.sleep", args=(0.01,), queue=q)
    wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total",
                           task="diagnostics.sleep") == 4, timeout=30, message="4 good sleeps")
    snap = node.snapshot()
    assert snap["total_runs"] == 9 and snap["failed"] == 5 and snap["succeeded"] == 4
    failures = _failure_lines(node)
    assert len(failures) == 5 and sum("TypeError" in e.get("exception", "")
                                      for e in failures) == 4
    assert node.proc.poll() is None


def test_oversized_context_is_refused_with_the_limit_and_nothing_is_written(database_url):
    from tasker.settings import get_settings, reset_settings
    from tasker.workflows.definition import ContextError
    from tasker.workflows.engine import submit

    reset_settings()
    limit = get_settings().max_context_bytes
    assert limit == 65536  # the default: nothing in this session lowered it
    context = {"n": 3, "pad": "x" * (limit + 10)}
    before = _table_rows(database_url)

    with pytest.raises(ContextError) as refused:
        submit("diamond.fan_out_in", context)
    message = str(refused.value)
    assert "TASKER_MAX_CONTEXT_BYTES" in message and str(limit) in message, message
    # Multi-byte characters count as bytes, not as characters.
    with pytest.raises(ContextError, match="TASKER_MAX_CONTEXT_BYTES"):
        submit("diamond.fan_out_in", {"n": 3, "pad": "日" * (limit // 3 + 10)})

    cli = subprocess.run([sys.executable, "-m", "tasker.cli.main", "submit",
                          "diamond.fan_out_in", "--context", json.dumps(context)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2, (cli.returncode, cli.stdout, cli.stderr[-2000:])
    lines = [ln for ln in cli.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, cli.stderr[-2000:]  # one clear line, no traceback
    assert "TASKER_MAX_CONTEXT_BYTES" in lines[0] and str(limit) in lines[0], lines
    assert len(lines[0]) < 500  # names the limit without echoing the context back
    assert cli.stdout == ""
    assert _table_rows(database_url) == before


def test_nasty_names_and_messages_keep_exposition_and_json_valid(start_node, app):
    # The queue name reaches a label (``queue``): quotes, backslashes and non-ASCII in it.
    queue = f'{SESSION}-q"\\ü✓日-{uuid.uuid4().hex[:6]}'
    node = start_node(queue=queue)
    names = [f"{SESSION}.{NASTY}", 'x"}\n# HELP injected counter\ninjected_total 1',
             "\\", "ü" * 300, ""]
    for name in names:
        app.send_task(name, queue=queue)
    for _ in range(3):
        app.send_task("diagnostics.fail", args=(NASTY,), queue=queue)
    app.send_task("diagnostics.fail", args=("\x00\x1b[31m\udcff" * 3,), queue=queue)
    app.send_task("diagnostics.noop", queue=queue)

    def settled() -> Any:
        s = node.scrape()
        done = (total(s, "tasker_tasks_failed_total") == 4
                and total(s, "tasker_tasks_succeeded_total") == 1
                and total(s, "tasker_tasks_rejected_total", reason="unknown_task") == len(names))
        return s if done else None
    s = wait_for(settled, timeout=45, message="nasty messages handled")
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.fail", queue=queue,
                 exception="DiagnosticFailure") == 4
    assert total(s, "tasker_tasks_succeeded_total", task="diagnostics.noop", queue=queue) == 1

    status, headers, body = http_get(f"{node.url}/metrics")
    assert status == 200
    text = body.decode("utf-8")  # valid UTF-8
    parse_metrics(text)  # valid exposition (raises otherwise)
    assert "injected_total" not in {ln.split("{")[0].split(" ")[0] for ln in text.splitlines()}
    assert _task_label_values(text) <= _registered(app) | {"unregistered"}
    assert queue in {v for (_, ls) in parse_metrics(text) for k, v in ls if k == "queue"}

    status, headers, body = http_get(f"{node.url}/metrics.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    snap = json.loads(body.decode("utf-8"))
    assert snap["failed"] == 4 and snap["succeeded"] == 1

    # Logs: every line is one JSON object, and the message round-trips intact.
    assert _log_lines_are_json(node) > 10
    failed = _failure_lines(node)
    assert len(failed) == 4
    texts = [str(e.get("error", "")) + str(e.get("exception", "")) for e in failed]
    # The URL-looking part is redacted; everything else arrives as sent.
    visible = NASTY.replace('a://u:p"@h', "")
    assert sum(visible in t for t in texts) == 3, texts[:1]
    assert node.proc.poll() is None


@pytest.mark.slow
def test_ten_thousand_unknown_task_names_keep_labels_bounded(start_node, app):
    node = start_node()
    queue = node.queue
    count = 10_000
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task(f"{SESSION}.unknown.{i}.{uuid.uuid4().hex}", queue=queue,
                          producer=producer)
    app.send_task("diagnostics.noop", queue=queue)

    def rejected() -> Any:
        status, _, body = http_get(f"{node.url}/metrics", timeout=30)
        assert status == 200
        text = body.decode()
        s = parse_metrics(text)
        if total(s, "tasker_tasks_rejected_total", reason="unknown_task") < count:
            return None
        return text if total(s, "tasker_tasks_succeeded_total") == 1 else None
    text = wait_for(rejected, timeout=90, interval=1.0, message="10,000 unknown tasks rejected")
    s = parse_metrics(text)
    assert total(s, "tasker_tasks_rejected_total", reason="unknown_task") == count
    labels = _task_label_values(text)
    registered = _registered(app)
    assert labels <= registered | {"unregistered"}, sorted(labels - registered)[:5]
    assert len(labels) <= len(registered) + 1
    assert len(s) < 2000, len(s)  # the exposition does not grow with the names
    # The node still processes work after the flood.
    for _ in range(5):
        app.send_task("diagnostics.noop", queue=queue)
    wait_for(lambda: node.snapshot()["succeeded"] == 6, timeout=30, message="6 noops")
    assert node.proc.poll() is None


@pytest.mark.parametrize("header", ["not-a-uuid", "0" * 10_240],
                         ids=["invalid", "oversized-10kB"])
def test_bad_correlation_header_is_replaced_and_logged_once(start_node, app, header):
    node = start_node()
    with _plain_client():
        first = app.send_task("diagnostics.noop", queue=node.queue,
                              headers={"tasker_correlation_id": header})
        second = app.send_task("diagnostics.noop", queue=node.queue,
                               headers={"tasker_correlation_id": header})
    wait_for(lambda: node.snapshot()["succeeded"] == 2, timeout=30, message="2 noops")

    assigned = [e for e in node.log_events()
                if e.get("event") == "correlation.assigned_at_receipt"]
    assert len(assigned) == 1, assigned  # logged once, not once per message
    assert assigned[0]["task_id"] == first.id and assigned[0]["reason"] == "invalid header"
    seen: dict[str, str] = {}
    for task_id in (first.id, second.id):
        events = [e for e in node.log_events() if e.get("task_id") == task_id]
        ran = [e for e in events if e["event"] == "task.succeeded"]
        assert len(ran) == 1, events
        cid = ran[0]["correlation_id"]  # what the pool process saw while the task ran
        assert uuid.UUID(cid).version == 7 and str(uuid.UUID(cid)) == cid
        assert all(e["correlation_id"] == cid for e in events), events
        seen[task_id] = cid
    assert seen[first.id] == assigned[0]["correlation_id"]
    assert seen[first.id] != seen[second.id]  # fresh per message, not one shared id
    assert header not in node.log()  # never echoed (10 kB in every line otherwise)
    assert len(max(node.log().splitlines(), key=len)) < 5000


def test_forged_routing_keys_keep_the_queue_label_bounded(start_node, app, redis_client):
    """A producer writing kombu's Redis message format itself chooses ``delivery_info``."""
    node = start_node()
    holding = f"{node.queue}-holding"
    app.send_task("diagnostics.noop", queue=holding)  # a real message, to forge from
    raw = json.loads(wait_for(lambda: redis_client.lpop(holding), timeout=10,
                              message="template message"))
    count = 200
    for i in range(count):
        raw["properties"]["delivery_info"].update(routing_key=f'forged-{i}"\\\n',
                                                  exchange=f"forged-{i}")
        raw["headers"]["id"] = raw["properties"]["correlation_id"] = str(uuid.uuid4())
        redis_client.lpush(node.queue, json.dumps(raw))
    wait_for(lambda: node.snapshot()["succeeded"] == count, timeout=45,
             message=f"{count} forged messages ran")
    status, _, body = http_get(f"{node.url}/metrics")
    assert status == 200
    from tasker.metrics.queue_names import UNMATCHED_QUEUE

    queues = {v for (_, ls) in parse_metrics(body.decode()) for k, v in ls if k == "queue"}
    # Routing keys that match no declared queue all become one label value.
    assert UNMATCHED_QUEUE in queues
    assert len(queues) <= 3, sorted(queues)[:5]


def test_a_failing_task_is_logged_as_task_failed(start_node, app):
    node = start_node()
    app.send_task("diagnostics.sleep", args=(0.01, 2, 3), queue=node.queue)
    app.send_task("diagnostics.fail", args=(NASTY,), queue=node.queue)
    wait_for(lambda: len(_failure_lines(node)) == 2, timeout=30, message="2 failure lines")
    assert {e["event"] for e in _failure_lines(node)} == {"task.failed"}
