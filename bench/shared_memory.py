"""Shared memory per pool process: what one process's metric files take on the node's tmpfs.

    python -m bench.shared_memory [--quick] [--names 10,200]

For each number of task names, a fresh interpreter sets recording up the way a
worker node does (:mod:`tasker.metrics.bootstep`: tasker's value class, the
metric objects, the zero-valued series of every task name, created in the
MainProcess before the pool forks), registers that many tasks, then forks a
pool process that runs every task name twice (one success, one failure) through
Celery's signals. It reports the pool process's metric files: bytes allocated
(``st_blocks``: what a tmpfs holds in memory), the file sizes (the mapped,
mostly sparse, capacity) and the number of series in them. The MainProcess's
own files are reported beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from bench import common
from bench.common import progress

BENCH = "shared_memory"


def _files_of(directory: str, identity: str) -> dict[str, Any]:
    allocated = size = series = 0
    from prometheus_client.mmap_dict import MmapedDict

    for name in os.listdir(directory):
        if name.endswith(f"_{identity}.db"):
            path = os.path.join(directory, name)
            st = os.stat(path)
            allocated += st.st_blocks * 512
            size += st.st_size
            series += sum(1 for _ in MmapedDict.read_all_values_from_file(path))
    return {"allocated_bytes": allocated, "file_bytes": size, "series": series}


def measure(names: int) -> dict[str, Any]:
    """In this (fresh) process: one node's MainProcess and one forked pool process."""
    directory = tempfile.mkdtemp(prefix="tasker-bench-shm-")
    try:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.setdefault("TASKER_BROKER_URL", common.REDIS_URL)
        from tasker.settings import get_settings

        get_settings()
        from celery import signals

        from tasker import app
        from tasker.metrics import identity, recording
        from tasker.metrics.definitions import create_metrics
        from tasker.metrics.mmap_files import _use_multiprocess_values
        from tasker.metrics.node_state import FILE_NAME, NodeState
        from tasker.metrics.queue_names import queue_resolver
        from tasker.metrics.zero_series import create_zero_series

        _use_multiprocess_values(directory)
        app.loader.import_default_modules()
        for i in range(max(0, names - len(_user_tasks(app)))):
            app.task(name=f"bench.task{i:04d}")(_noop)
        metrics = create_metrics()
        state = NodeState.create(os.path.join(directory, FILE_NAME), 60.0, 0.1, time.time(),
                                 pool_processes=2)
        recorder = recording.Recorder(metrics, state, "bench@localhost",
                                      known_tasks=lambda: app.tasks,
                                      queue_names=queue_resolver(app),
                                      directory=directory)
        recording.activate(recorder)
        create_zero_series(recorder, app)  # before the fork, as a node does
        tasks = [app.tasks[name] for name in _user_tasks(app)]
        main = _files_of(directory, identity.process_identifier())
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the pool process
            try:
                from billiard.process import current_process

                current_process().index = 0
                info = {"exchange": "", "routing_key": "celery"}
                for task in tasks:
                    for state_name in ("SUCCESS", "FAILURE"):
                        task_id = str(uuid.uuid4())
                        task.push_request(id=task_id, delivery_info=info, args=(), kwargs={},
                                          tasker_published_at=time.time() - 0.004,
                                          headers=None, eta=None)
                        try:
                            signals.task_prerun.send(sender=task, task_id=task_id, task=task,
                                                     args=(), kwargs={})
                            if state_name == "FAILURE":
                                signals.task_failure.send(sender=task, task_id=task_id,
                                                          exception=ValueError("x"))
                            signals.task_postrun.send(sender=task, task_id=task_id, task=task,
                                                      args=(), kwargs={}, retval=None,
                                                      state=state_name)
                        finally:
                            task.pop_request()
                os.write(write_fd, json.dumps(
                    _files_of(directory, identity.process_identifier())).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        child = json.loads(os.read(read_fd, 65536))
        os.waitpid(pid, 0)
        return {"task_names": len(tasks), "pool_process": child, "main_process": main}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _noop() -> None:
    return None


def _user_tasks(app: Any) -> list[str]:
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def main() -> int:
    parser = common.base_parser("python -m bench.shared_memory", __doc__.split("\n")[0])
    parser.add_argument("--names", default="10,200",
                        help="numbers of task names, comma-separated (default 10,200)")
    parser.add_argument("--measure", type=int, help=argparse_hidden())
    args = parser.parse_args()
    if args.measure is not None:  # the fresh interpreter of one measurement
        print(json.dumps(measure(args.measure)))
        return 0
    results = common.Results(BENCH, args, {"names": args.names})
    ok = False
    measured: list[dict[str, Any]] = []
    try:
        for names in (int(n) for n in args.names.split(",")):
            out = subprocess.run([sys.executable, "-m", "bench.shared_memory", "--measure",
                                  str(names)], cwd=common.REPO, capture_output=True, text=True,
                                 check=True, timeout=300)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            results.write("run", found)
            measured.append(found)
            pool = found["pool_process"]
            progress(BENCH, f"{found['task_names']} task names: pool process "
                            f"{pool['allocated_bytes'] / 1024:.0f} KiB allocated "
                            f"({pool['series']} series, files {pool['file_bytes'] / 1024:.0f} "
                            f"KiB mapped); MainProcess "
                            f"{found['main_process']['allocated_bytes'] / 1024:.0f} KiB")
        results.write("summary", {"measurements": measured})
        ok = True
    finally:
        results.close(ok)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
