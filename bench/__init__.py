"""Benchmarks that compare tasker with bare Celery in the same run.

Each benchmark is a module runnable on its own (``python -m bench.overhead``,
``bench.recording``, ``bench.scrape``, ``bench.latency``, ``bench.sampler``);
``python -m bench.run_all [--quick]`` runs them all, each in its own process,
and ``python -m bench.report`` turns the JSON lines under ``bench/results/``
into ``BENCHMARKS.md``.

This package must not import tasker at import time: the bare Celery app in
:mod:`bench.bare_app` lives here, and importing tasker connects publish-side
signal receivers that would stamp tasker headers on bare Celery's messages.
"""
