"""Through a real node: a wrongly typed queue key costs only that queue's series."""

from __future__ import annotations

import pytest
from support import SESSION, total, wait_for


@pytest.mark.timeout(120)
def test_a_wrongly_typed_queue_key_costs_only_its_series_and_is_counted(
        start_node, app, redis_client) -> None:
    bad = f"{SESSION}-wrongtype"
    node = start_node(env={"TASKER_SAMPLE_QUEUES": bad})
    redis_client.hset(bad, "field", "a hash where kombu keeps a list")
    try:
        app.send_task("tasker.sample_fleet", queue=node.queue)

        def sampled():
            s = node.scrape()
            return total(s, "tasker_sample_up", source="broker") == 1 and s
        s = wait_for(sampled, timeout=30, message="a broker sample")
        depth_queues = {dict(labels).get("queue") for name, labels in s
                        if name == "tasker_queue_depth"}
        assert bad not in depth_queues
        assert node.queue in depth_queues  # the other queues stay sampled
        wait_for(lambda: total(node.scrape(), "tasker_metrics_errors_total",
                               stage="sample_queue") >= 1,
                 timeout=15, message="the failed queue counted")
        failed = [e for e in node.log_events() if e.get("event") == "sample.queue_failed"]
        assert failed and failed[0]["queue"] == bad
    finally:
        redis_client.delete(bad)
