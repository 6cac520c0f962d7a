"""The MainProcess freezes its startup heap once the worker is ready."""

from __future__ import annotations

import gc

from celery.signals import worker_ready


def test_worker_ready_freezes_the_heap_and_later_objects_are_still_collected() -> None:
    import tasker.worker_process  # noqa: F401 - connects the receiver

    gc.unfreeze()
    try:
        worker_ready.send(sender=None)
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # everything alive at start-up, the imports included

        class Cycle:
            pass

        a, b = Cycle(), Cycle()
        a.other, b.other = b, a  # a reference cycle made after the freeze
        del a, b
        assert gc.collect() >= 2  # still found and freed by the collector
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
