"""Leaves out tasker's periodic-work reader (``--include bench.no_periodic_consumer``).

Not a way to run tasker: the ``tasker_no_periodic`` diagnostic variant uses it
to show what reading ``tasker.periodic`` costs the MainProcess per task (it
was a second consuming channel, about 14,000 instructions per task; it is now
read once a second on a connection of its own, which costs the node per
second, not per task). ``--include`` modules are imported before
the worker builds its consumer blueprint, so the step is gone before it exists.
"""

from tasker.celery_app import app
from tasker.periodic import PeriodicWork

app.steps["consumer"].discard(PeriodicWork)
