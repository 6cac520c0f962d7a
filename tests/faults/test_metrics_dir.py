"""The node's multiprocess directory becomes unwritable or full while the node runs.

With ``--max-tasks-per-child`` (1 or 2) new pool processes keep starting, and
each must create new metric files. When it cannot, the task still runs, the node
logs one error naming the directory (not one per task or per process),
``/metrics`` keeps answering, and nothing the node already counted is lost or
counted twice.

How the fault is made (the tests run as root in CI, where ``chmod`` stops
nothing):

* unwritable: ``chmod 0o500`` for an ordinary user; as root, ``chattr +i``
  (an immutable directory refuses new entries even to root, while the files
  already in it stay writable: exactly "no new files");
* full: a small tmpfs mounted on the directory and then filled (needs
  ``CAP_SYS_ADMIN``; skipped without it). The in-process test below makes the
  allocation fail with ENOSPC instead, and runs everywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import WorkerNode, http_get, total, wait_for

CONCURRENCY = 2
BEFORE, DURING = 5, 20


def _can_create(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


@contextmanager
def _unwritable(directory: Path) -> Iterator[str]:
    """Make ``directory`` refuse new files; yields how."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o500)
        try:
            yield "chmod 0o500"
        finally:
            os.chmod(directory, 0o700)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory unwritable")
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
    try:
        yield "chattr +i"
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@contextmanager
def _tmpfs(directory: Path, size: str) -> Iterator[None]:
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "test_allocation_failure_stops_recording_once covers ENOSPC")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(directory)]).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def _fill(directory: Path) -> None:
    """Write into ``directory`` until the file system is full."""
    chunk = b"\0" * 4096
    try:
        # Unbuffered: nothing is left to flush (and fail) at close.
        with open(directory / f"filler-{time.monotonic_ns()}", "ab", buffering=0) as f:
            while True:
                f.write(chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc


def _succeeded(node: WorkerNode) -> Counter[str]:
    return Counter(e["task_id"] for e in node.log_events() if e.get("event") == "task.succeeded")


def _publish(app: Any, queue: str, n: int) -> list[str]:
    return [app.send_task("diagnostics.noop", queue=queue).id for _ in range(n)]


def _wait_succeeded(node: WorkerNode, ids: list[str], during: Callable[[], None]) -> None:
    def done() -> bool:
        assert node.proc is not None and node.proc.poll() is None, (
            f"the node died:\n{node.log()[-3000:]}")
        during()
        return all(_succeeded(node)[i] for i in ids)
    wait_for(done, timeout=90, interval=0.5, message=f"{len(ids)} tasks succeeded")


def _answers(node: WorkerNode) -> None:
    """/metrics and /metrics.json answer (checked while the directory is broken)."""
    for path in ("/metrics", "/metrics.json"):
        status, _, body = http_get(f"{node.url}{path}")
        assert status == 200, (path, status, body[:300])


def _levels(node: WorkerNode, *levels: str) -> list[dict[str, Any]]:
    return [e for e in node.log_events() if e.get("level") in levels]


def _check_one_error(node: WorkerNode, directory: Path, reason: str) -> None:
    errors = _levels(node, "ERROR", "CRITICAL")
    assert [e["event"] for e in errors] == ["metrics.directory_unwritable"], errors
    assert errors[0]["directory"] == str(directory)
    assert reason in errors[0]["reason"], errors[0]
    # Warnings about processes that were running when the directory broke
    # (their files cannot be deleted, their exit markers not written) are
    # bounded by the pool size, never one per task.
    warnings = _levels(node, "WARNING")
    assert len(warnings) <= 4 * CONCURRENCY, Counter(e["event"] for e in warnings)
    assert "signal 7" not in node.log() and "SIGBUS" not in node.log()


def _stable_counters(node: WorkerNode) -> dict:
    """Counters read over three housekeeping sweeps: they must not move by themselves."""
    first = node.scrape()
    for _ in range(3):
        time.sleep(1.2)
        again = node.scrape()
        for name in ("tasker_tasks_succeeded_total", "tasker_tasks_received_total",
                     "tasker_task_runtime_seconds_count", "tasker_worker_process_exits_total"):
            assert total(again, name) == total(first, name), name
    return first


def _run_tasks_while_broken(node: Any, app: Any) -> list[str]:
    """Publish DURING tasks: all succeed, the node lives, stopped processes are counted."""
    during = _publish(app, node.queue, DURING)
    _wait_succeeded(node, during, lambda: _answers(node))
    assert node.proc.poll() is None, node.log()[-3000:]
    wait_for(lambda: total(node.scrape(), "tasker_metrics_errors_total", stage="directory") >= 1,
             timeout=30, message="processes that stopped recording counted")
    return during


@pytest.mark.timeout(180)  # 10-25 s
def test_unwritable_directory_one_error_tasks_go_on(start_node, app, tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    # Two tasks per process, not one: BEFORE is odd, so a process that has
    # recorded a run is still alive when the directory breaks. Its files then
    # cannot be deleted after it exits, and must not be folded in twice.
    max_tasks = 2
    node = start_node(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                      concurrency=CONCURRENCY, extra_args=[f"--max-tasks-per-child={max_tasks}"])
    assert node.directory() == directory
    before = _publish(app, node.queue, BEFORE)
    wait_for(lambda: node.snapshot()["total_runs"] == BEFORE, timeout=60,
             message=f"{BEFORE} recorded runs")

    def settled() -> bool:  # only the live pool's files: recycled ones are swept away
        owners = {p.name.rsplit("_", 1)[1][:-3] for p in directory.glob("*.db")}
        return (len(list(directory.glob("proc_*"))) == CONCURRENCY
                and not list(directory.glob("exit_*")) and len(owners) == CONCURRENCY + 1)
    wait_for(settled, timeout=30, message="the pool refilled and the directory swept")
    s_before = node.scrape()

    with _unwritable(directory) as how:
        assert not _can_create(directory), f"{how} did not make {directory} unwritable"
        during = _run_tasks_while_broken(node, app)
        s_during = _stable_counters(node)
        _check_one_error(node, directory, "Operation not permitted" if how == "chattr +i"
                         else "Permission denied")

    # Nothing lost, nothing counted twice.
    ids = before + during
    assert sorted(_succeeded(node).elements()) == sorted(ids)
    received = Counter(e["task_id"] for e in node.log_events() if e.get("event") == "task.received")
    assert sorted(received.elements()) == sorted(ids)
    # The MainProcess's own file was there before: it still counts every task.
    assert total(s_during, "tasker_tasks_received_total") == BEFORE + DURING
    # Runs of processes that could not record are missing, never invented.
    recorded = total(s_during, "tasker_tasks_succeeded_total")
    assert total(s_before, "tasker_tasks_succeeded_total") == BEFORE <= recorded < BEFORE + DURING
    for (name, labels), value in s_before.items():
        if name.endswith("_total") or name.endswith("_count"):
            assert s_during.get((name, labels), 0) >= value, (name, labels)
    assert total(s_during, "tasker_worker_tasks_active") == 0
    assert all(v >= 0 for v in s_during.values())

    # Writable again: processes started from now on record again (those
    # started while it was not run their remaining tasks unrecorded).
    unrecorded = max_tasks * CONCURRENCY
    after = _publish(app, node.queue, 2 * unrecorded)
    _wait_succeeded(node, after, lambda: None)
    wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total")
             >= recorded + unrecorded, timeout=30, message="recording resumed")
    assert len(_levels(node, "ERROR", "CRITICAL")) == 1


@pytest.mark.timeout(180)  # 10-25 s
def test_full_directory_one_error_no_crash(start_node, app, tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    with _tmpfs(directory, "4m"):
        node = start_node(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                          concurrency=CONCURRENCY, extra_args=["--max-tasks-per-child=1"])
        try:
            before = _publish(app, node.queue, BEFORE)
            wait_for(lambda: node.snapshot()["total_runs"] == BEFORE, timeout=60,
                     message=f"{BEFORE} recorded runs")
            s_before = node.scrape()
            # Keep it full: the node frees the files of exited processes.
            stop = threading.Event()

            def keep_full() -> None:
                while not stop.is_set():
                    _fill(directory)
                    stop.wait(0.05)
            _fill(directory)
            filler = threading.Thread(target=keep_full, daemon=True)
            filler.start()
            try:
                during = _run_tasks_while_broken(node, app)
            finally:
                stop.set()
                filler.join(timeout=10)
            s_during = node.scrape()
            errors = _levels(node, "ERROR", "CRITICAL")
            assert [e["event"] for e in errors] == ["metrics.directory_unwritable"], errors
            assert errors[0]["directory"] == str(directory)
            assert "No space left on device" in errors[0]["reason"]
            log = node.log()
            assert "signal 7" not in log and "SIGBUS" not in log, log[-3000:]
            ids = before + during
            assert sorted(_succeeded(node).elements()) == sorted(ids)
            assert total(s_during, "tasker_tasks_received_total") == BEFORE + DURING
            assert BEFORE <= total(s_during, "tasker_tasks_succeeded_total") <= BEFORE + DURING
            for (name, labels), value in s_before.items():
                if name.endswith("_total") or name.endswith("_count"):
                    assert s_during.get((name, labels), 0) >= value, (name, labels)
            assert all(v >= 0 for v in s_during.values())
        finally:
            node.stop()  # before the unmount: the node's files are open on it


def test_allocation_failure_stops_recording_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """In-process: a "pool process" whose metric files cannot get space (ENOSPC).

    The process identity is injected and a fork is simulated (the fork hook
    of tasker's value class), so each "pool process" opens files of its own.
    """
    from prometheus_client import values

    from tasker import db
    from tasker.contracts import mmap_values as tasker_values
    from tasker.metrics import mmap_files, pool_processes, recording
    from tasker.metrics.definitions import create_metrics
    from tasker.metrics.node_state import NodeState

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.setattr(db, "_observer", db.current_observer())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    process = ["1000-1"]
    values.ValueClass = tasker_values.multiprocess_value_class(
        lambda: process[0], mmap_files.AllocatedMmapedDict)

    def fork_as(identity: str) -> None:
        process[0] = identity
        tasker_values._after_fork_in_child()

    # The "MainProcess": its files are made while there is space.
    metrics = create_metrics()
    state = NodeState.create(str(tmp_path / "node_state.bin"), 60, 0.1, time.time())
    recorder = recording.Recorder(metrics, state, "w@h",
                                  known_tasks=lambda: {"diagnostics.noop": None},
                                  queue_names=lambda exchange, key: key or "q",
                                  directory=str(tmp_path),
                                  stopped_processes=recording.SharedCount())
    recorder.child(metrics.received, "diagnostics.noop", "q").inc()
    recorder.main_pid = -1  # from here on this process plays the pool processes
    main_files = sorted(p.name for p in tmp_path.glob("*.db"))
    assert main_files

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    task = types.SimpleNamespace(name="diagnostics.noop", request=types.SimpleNamespace(
        id="t1", delivery_info={"exchange": "", "routing_key": "q"}, eta=None))
    recording.activate(recorder)
    try:
        monkeypatch.setattr(os, "posix_fallocate", no_space)
        caplog.set_level(logging.DEBUG, logger="tasker.metrics")
        # Pool process 1 starts: its files get no space at worker_process_init.
        fork_as("1001-1")
        pool_processes._pool_process_started()
        assert recording.current() is None  # recording stopped in this process
        assert type(db.current_observer()) is db.PoolObserver
        # Its task runs: the receivers do nothing, and raise nothing.
        recording._on_prerun(sender=task, task_id="t1", task=task)
        recording._on_postrun(sender=task, task_id="t1", task=task, state="SUCCESS")

        # Pool process 2 passed its start, then fails in a task's receiver.
        fork_as("1002-1")
        recording.activate(recorder)
        recording._on_prerun(sender=task, task_id="t2", task=task)  # must not raise
        assert recording.current() is None
        recording._on_postrun(sender=task, task_id="t2", task=task)
    finally:
        recording.deactivate()

    records = [r for r in caplog.records if r.getMessage() == "metrics.directory_unwritable"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]
    assert records[0].directory == str(tmp_path)
    assert "No space left on device" in records[0].reason
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r not in records]
    assert recorder.stopped_processes.value == 2
    # No empty files were left behind for the processes that got no space.
    assert sorted(p.name for p in tmp_path.glob("*.db")) == main_files

    # The MainProcess (which forks every pool process) never stops recording:
    # its failure is logged and counted like any other.
    recorder.main_pid = os.getpid()
    fork_as("1003-1")
    request = types.SimpleNamespace(name="diagnostics.noop",
                                    delivery_info={"exchange": "", "routing_key": "q"})
    recording.activate(recorder)
    try:
        recording.record_received(request)  # counted in memory
        recorder.flush_received()  # writing it fails: must not raise (a scrape calls this)
        assert recording.current() is recorder
        # The count is kept in memory, to be written by a later flush.
        assert [entry.counted - entry.folded for entry in recorder._received.values()] == [1]
    finally:
        recording.deactivate()
    assert [r for r in caplog.records if r.getMessage() == "metrics.record_failed"
            and getattr(r, "stage", None) == recording.DIRECTORY_STAGE]


# -- a configured directory that holds files tasker did not create -------------


def _others_files(directory: Path) -> dict[Path, bytes]:
    (directory / "sub").mkdir(parents=True)
    files = {directory / "precious.txt": b"keep me\n", directory / "sub" / "notes.txt": b"me too\n",
             # Named like prometheus_client's files, but of another application.
             directory / "counter_4242.db": b"\0" * 16}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def _intact(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, f"{path} was changed or deleted"


def test_prepare_directory_never_deletes_files_it_did_not_create(tmp_path: Path) -> None:
    from tasker.metrics import directory as node_directory

    shared = tmp_path / "shared"
    files = _others_files(shared)
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR=.*precious.txt"):
        node_directory.prepare_directory(str(shared))
    _intact(files)
    assert not (shared / "node.lock").exists()


def test_a_directory_left_by_a_dead_node_loses_only_tasker_files(tmp_path: Path) -> None:
    from tasker.metrics import directory as node_directory

    left = tmp_path / "left"
    first = node_directory.prepare_directory(str(left))
    for name in ("counter_11-22.db", "gauge_livesum_11-22.db", "native_11-22.db",
                 "proc_11-22", "fleet.json"):
        (left / name).write_bytes(b"x")
    first.release()  # the node is gone; its files stay (a configured directory is kept)
    second = node_directory.prepare_directory(str(left))
    try:
        assert sorted(p.name for p in left.iterdir()) == ["node.lock"]
    finally:
        second.release()
    # Someone then puts files of theirs in tasker's directory: the next start
    # removes tasker's files only.
    (left / "counter_11-22.db").write_bytes(b"x")
    (left / "mine.csv").write_bytes(b"1,2\n")
    (left / "counter_4242.db").write_bytes(b"y")  # not named by tasker's identity
    third = node_directory.prepare_directory(str(left))
    try:
        assert sorted(p.name for p in left.iterdir()) == ["counter_4242.db", "mine.csv",
                                                           "node.lock"]
        assert (left / "mine.csv").read_bytes() == b"1,2\n"
    finally:
        third.release()


@pytest.mark.timeout(120)
def test_worker_refuses_a_directory_of_foreign_files_with_one_line_and_exit_2(
        start_node, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    files = _others_files(shared)
    node = start_node(env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}, wait=False)
    try:
        node.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    _intact(files)
    assert node.proc.returncode == 2, node.log()[-3000:]
    lines = node.log().strip().splitlines()
    assert len(lines) == 1 and "PROMETHEUS_MULTIPROC_DIR" in lines[0], node.log()[-3000:]
