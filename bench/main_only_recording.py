"""Turns recording off in a tasker node's pool processes (``--include bench.main_only_recording``).

Not a way to run tasker: the throughput benchmark's ``tasker_main_only``
variant uses it to show how much of tasker's overhead is the recording done
in the pool processes (the MainProcess still counts every message received,
and the node still serves its endpoints, logs JSON and stamps correlation ids).
"""

from typing import Any

from celery.signals import worker_process_init

from tasker.metrics import recording


@worker_process_init.connect(weak=False)
def _no_recording_in_pool_processes(**_: Any) -> None:
    recording.deactivate()
