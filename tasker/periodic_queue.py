"""The queue of tasker's periodic work: one name, no imports.

Beat's routes (:mod:`tasker.celeryconfig`), the node's periodic consumer
(:mod:`tasker.periodic`) and the schedule store (:mod:`tasker.schedule_monitor`)
all derive it from the step queue; it lives at the bottom so that each of them
can import it without importing the others.
"""

__all__ = ["PERIODIC_QUEUE", "periodic_queue_name"]

#: The queue of tasker's periodic work when ``TASKER_STEP_QUEUE`` is the default.
PERIODIC_QUEUE = "tasker.periodic"


def periodic_queue_name(step_queue: str) -> str:
    """``tasker.periodic``, or ``<step queue>.periodic`` for a fleet with its own step queue.

    Why: several fleets that share one broker database set their own step
    queue; deriving the periodic queue from it keeps one fleet's nodes from
    running another fleet's sampler and recovery (against the wrong database).
    """
    return PERIODIC_QUEUE if step_queue == "celery" else f"{step_queue}.periodic"
