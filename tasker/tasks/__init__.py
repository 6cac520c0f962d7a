"""tasker's own beat-scheduled tasks, loaded by Celery by name (``imports`` in
:mod:`tasker.celeryconfig`).

* :mod:`.fleet_sampler`: ``tasker.sample_fleet``, one sample round of the pure
  :mod:`tasker.sampler` into the node's scrape;
* the workflow tasks ``tasker.run_step`` and ``tasker.recover_steps`` live with
  the workflow engine (:mod:`tasker.workflows.engine`).

Task names are a public contract (beat schedules, routes): a module may move,
its tasks' names never change.
"""
