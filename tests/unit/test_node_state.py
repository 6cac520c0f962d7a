"""The node-wide statistics file shared by a worker node's pool processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasker.metrics.node_state import FILE_NAME, NodeState

T0 = 1_700_000_000.0
N = 3000  # tasks per child: enough for the two children to overlap in time


@pytest.fixture
def state_path(tmp_path: Path) -> str:
    return str(tmp_path / FILE_NAME)


def test_fresh_state_reports_nothing_measured(state_path: str) -> None:
    state = NodeState.create(state_path, window=10, alpha=0.5, started=T0)
    try:
        reading = state.read(T0 + 5)
        assert reading.runs == 0
        assert reading.processing_rate == 0.0
        assert reading.latency_ema_seconds is None
        assert reading.average_seconds is None
        assert reading.min_seconds is None
        assert reading.max_seconds is None
        assert reading.last_run_time is None
    finally:
        state.close()


def test_recorded_runtimes_read_back(state_path: str) -> None:
    state = NodeState.create(state_path, window=10, alpha=0.5, started=T0)
    try:
        state.record_finished(0.1, now=T0 + 1.2)
        state.record_finished(0.3, now=T0 + 1.5)
        state.record_finished(0.2, now=T0 + 2.1)
        reading = state.read(T0 + 3.0)
        assert reading.runs == 3
        assert reading.average_seconds == pytest.approx(0.2)
        assert reading.min_seconds == pytest.approx(0.1)
        assert reading.max_seconds == pytest.approx(0.3)
        # alpha 0.5: 0.1 -> 0.2 -> 0.2
        assert reading.latency_ema_seconds == pytest.approx(0.2)
        assert reading.last_run_time == T0 + 2.1
        assert reading.processing_rate == pytest.approx(3 / 10)  # events in the window / window
        # The rate is a rate: it is 0 once a whole window has passed without tasks.
        assert state.read(T0 + 13.0).processing_rate == 0.0
        assert state.read(T0 + 13.0).runs == 3
    finally:
        state.close()


def test_a_second_handle_sees_the_same_numbers(state_path: str) -> None:
    writer = NodeState.create(state_path, window=10, alpha=1.0, started=T0)
    reader = NodeState(state_path)
    try:
        writer.record_finished(0.5, now=T0 + 2.0)
        writer.record_finished(0.7, now=T0 + 2.5)
        reading = reader.read(T0 + 4.0)
        assert reading.runs == 2
        assert reading.latency_ema_seconds == pytest.approx(0.7)  # alpha 1: the last value
        assert reading.processing_rate == pytest.approx(2 / 10)
    finally:
        writer.close()
        reader.close()


def test_create_replaces_an_existing_file(state_path: str) -> None:
    old = NodeState.create(state_path, window=10, alpha=0.5, started=T0)
    old.record_finished(1.0, now=T0 + 1)
    old.close()
    new = NodeState.create(state_path, window=10, alpha=0.5, started=T0 + 100)
    try:
        assert new.read(T0 + 101).runs == 0
    finally:
        new.close()


def _child(state: NodeState, runtimes: list[float], first_now: float,
           index: int | None = None) -> None:
    """Record ``runtimes`` and leave the process without running pytest's teardown.

    With ``index``, the child is a prefork pool process: billiard gives it an
    index before it starts, so it writes a slot of its own.
    """
    code = 1
    try:
        if index is not None:
            from billiard.process import current_process

            current_process().index = index
        for i, runtime in enumerate(runtimes):
            state.record_finished(runtime, now=first_now + i * 1e-5)
        code = 0
    finally:
        os._exit(code)


def _run_children(state: NodeState, work: list[tuple[int | None, list[float]]]) -> None:
    """Fork one child per (pool index or None, runtimes) and wait for them all."""
    pids = []
    for index, runtimes in work:
        pid = os.fork()
        if pid == 0:
            _child(state, runtimes, first_now=T0 + 5.0, index=index)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_forked_processes_record_into_one_file(state_path: str) -> None:
    state = NodeState.create(state_path, window=10, alpha=0.1, started=T0)
    try:
        state.record_finished(0.05, now=T0 + 1.0)
        state.record_finished(0.15, now=T0 + 2.0)
        before = state.read(T0 + 3.0)
        assert before.runs == 2

        runtimes_a = [0.01] * (N - 1) + [0.001]  # holds the minimum
        runtimes_b = [0.02] * (N - 1) + [9.0]  # holds the maximum
        # The children's inherited handles must reopen their own descriptors.
        _run_children(state, [(None, runtimes_a), (None, runtimes_b)])

        reading = state.read(T0 + 6.0)
        # Every task of both children counted: no update lost under the lock.
        assert reading.runs == 2 * N + 2
        total = 0.05 + 0.15 + sum(runtimes_a) + sum(runtimes_b)
        assert reading.average_seconds == pytest.approx(total / (2 * N + 2))
        assert reading.min_seconds == pytest.approx(0.001)
        assert reading.max_seconds == pytest.approx(9.0)
        assert reading.last_run_time is not None and reading.last_run_time >= T0 + 5.0
        # 2N + 2 tasks in the 10 s window (the node started 6 s ago).
        assert reading.processing_rate == pytest.approx((2 * N + 2) / 10)

        # The parent's own handle still works after its children closed theirs.
        state.record_finished(0.01, now=T0 + 6.5)
        after = state.read(T0 + 7.0)
        assert after.runs == 2 * N + 3
        assert after.last_run_time == T0 + 6.5
    finally:
        state.close()


@pytest.mark.parametrize("content", [
    b"hello world\n",  # not even a multiple of 8 bytes
    bytes(4096),  # right size, wrong magic
    b"",
], ids=["text", "zeros", "empty"])
def test_a_file_that_is_not_a_node_state_file_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        NodeState(str(path))


def test_a_truncated_node_state_file_is_rejected(state_path: str) -> None:
    NodeState.create(state_path, window=60, alpha=0.1, started=T0).close()
    os.truncate(state_path, 200)  # the header survives, the buckets do not
    with pytest.raises(ValueError, match="not a tasker node state file"):
        NodeState(state_path)


def test_pool_processes_write_their_own_slots_without_losing_a_count(state_path: str) -> None:
    state = NodeState.create(state_path, window=10, alpha=0.1, started=T0, pool_processes=2)
    try:
        state.record_finished(0.05, now=T0 + 1.0)  # the MainProcess: the shared slot
        # Index 5 is beyond the two slots made for this node: it shares slot 0 too.
        work = {0: [0.01] * (N - 1) + [0.001], 1: [0.02] * (N - 1) + [9.0], 5: [0.03] * N}
        _run_children(state, list(work.items()))

        reading = state.read(T0 + 6.0)
        assert reading.runs == 3 * N + 1
        total = 0.05 + sum(sum(r) for r in work.values())
        assert reading.average_seconds == pytest.approx(total / (3 * N + 1))
        assert reading.min_seconds == pytest.approx(0.001)
        assert reading.max_seconds == pytest.approx(9.0)
        assert reading.processing_rate == pytest.approx((3 * N + 1) / 10)
        assert reading.latency_ema_seconds is not None
        assert 0.001 <= reading.latency_ema_seconds <= 9.0
    finally:
        state.close()


def test_a_replacement_process_takes_over_the_slot_of_one_killed_mid_update(
        state_path: str) -> None:
    from billiard.process import current_process

    state = NodeState.create(state_path, window=10, alpha=0.5, started=T0, pool_processes=1)
    process = current_process()
    had_index = hasattr(process, "index")
    old_index = getattr(process, "index", None)
    try:
        process.index = 0
        writer = NodeState(state_path)
        writer.record_finished(0.2, now=T0 + 1.0)
        writer._own.fields[0] += 1  # noqa: SLF001 - killed between its two sequence steps
        writer.close()
        replacement = NodeState(state_path)  # the same index: the same slot
        # Its sequence is even again: readers are not left retrying a torn slot.
        assert replacement._own.fields[0] % 2 == 0  # noqa: SLF001
        replacement.record_finished(0.4, now=T0 + 2.0)
        assert replacement._own.fields[0] % 2 == 0  # noqa: SLF001
        reading = state.read(T0 + 3.0)
        assert reading.runs == 2
        assert reading.max_seconds == pytest.approx(0.4)
        replacement.close()
    finally:
        if had_index:
            process.index = old_index
        else:
            del process.index
        state.close()
