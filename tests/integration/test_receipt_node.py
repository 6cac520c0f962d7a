"""Received counts on a real node, now that they are counted around Celery's handler.

A message Celery discards at receipt (revoked before it arrived) is counted
received and revoked; an unknown task name is not counted received (rejected).
"""

from __future__ import annotations

import time
import uuid

from support import total, wait_for


def test_a_message_revoked_before_it_arrives_is_received_and_revoked(start_node, app):
    node = start_node()
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id, destination=[node.hostname])
    time.sleep(1.0)  # the node takes the broadcast before the message
    app.send_task("diagnostics.noop", queue=node.queue, task_id=task_id)
    app.send_task("diagnostics.noop", queue=node.queue)
    app.send_task("no.such.task", queue=node.queue)

    def settled() -> dict | None:
        s = node.scrape()
        done = (total(s, "tasker_tasks_revoked_total") == 1
                and total(s, "tasker_tasks_succeeded_total") == 1
                and total(s, "tasker_tasks_rejected_total", reason="unknown_task") == 1)
        return s if done else None

    samples = wait_for(settled, timeout=30, message="one revoked, one run, one unknown")
    assert total(samples, "tasker_tasks_received_total", queue=node.queue,
                 task="diagnostics.noop") == 2
    assert total(samples, "tasker_tasks_received_total") == 2
    assert total(samples, "tasker_tasks_started_total") == 1
