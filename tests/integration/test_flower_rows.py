"""Flower's worker page shows the tasker snapshot row by row (issue 2.4, item 6).

Flower renders every ``inspect stats`` key it does not know in its "Other" tab
as ``str(value)``: the nested ``tasker`` snapshot came out as one raw Python
dict. The same values also come as one scalar per key.
"""

from __future__ import annotations


def test_inspect_stats_has_one_scalar_row_per_snapshot_value(start_node, app):
    node = start_node()
    app.send_task("diagnostics.noop", queue=node.queue)
    replies = app.control.inspect(destination=[node.hostname], timeout=10).stats() or {}
    stats = replies[node.hostname]
    assert isinstance(stats["tasker"], dict)  # the whole snapshot, for programs (SPEC)
    rows = {k: v for k, v in stats.items() if k.startswith("tasker.")}
    assert rows["tasker.worker"] == node.hostname
    assert "tasker.processing_rate" in rows and "tasker.db_pool.max" in rows
    for key, value in rows.items():
        assert value is None or isinstance(value, (str, int, float, bool)), (key, value)
