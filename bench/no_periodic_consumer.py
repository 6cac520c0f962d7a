"""Leaves out tasker's periodic-work consumer (``--include bench.no_periodic_consumer``).

Not a way to run tasker: the ``tasker_no_periodic`` diagnostic variant uses it
to show what a second consuming channel (``tasker.periodic``) costs the
MainProcess's event loop per task. ``--include`` modules are imported before
the worker builds its consumer blueprint, so the step is gone before it exists.
"""

from tasker.celery_app import app
from tasker.periodic import PeriodicWork

app.steps["consumer"].discard(PeriodicWork)
