"""Process identity for multiprocess metric files, safe against pid reuse.

prometheus_client names each process's files after a process identifier
(default: the pid). A recycled pool process's pid can be reused by a new one,
which would then inherit the old process's live gauges. tasker's identifier is
``<pid>-<start time in clock ticks>``: unique for the life of the host, and the
parent can check from ``/proc`` whether the process that wrote a file is still
running. (It must not contain ``_``: prometheus_client splits file names on it.)
"""

from __future__ import annotations

import os

import psutil

__all__ = ["process_identifier", "identity_of", "is_alive", "parse_identifier"]

_cached_pid = -1
_cached_identity = ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return _start_ticks_psutil(pid)
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] == b"Z":  # a zombie has exited; it only waits to be reaped
        return None
    return int(fields[19])


def _start_ticks_psutil(pid: int) -> int | None:
    # Non-Linux fallback: create_time in centiseconds is just as unique.
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return int(proc.create_time() * 100)
    except (psutil.Error, OSError):
        return None


def identity_of(pid: int) -> str | None:
    """The identifier the process ``pid`` uses, or None if it no longer runs."""
    ticks = _start_ticks(pid)
    return None if ticks is None else f"{pid}-{ticks}"


def process_identifier() -> str:
    """This process's identifier; a cached string after the first call in each process.

    prometheus_client calls it on every metric update to notice a fork (several
    times per task), so it must not make a system call: the cache is cleared in
    the child at every fork instead of comparing ``os.getpid()`` each time.
    """
    global _cached_pid, _cached_identity  # per process; the at-fork hook (no arguments) resets it
    if _cached_pid < 0:
        pid = os.getpid()
        _cached_identity = identity_of(pid) or str(pid)
        _cached_pid = pid
    return _cached_identity


def _forget_after_fork() -> None:
    global _cached_pid  # see process_identifier()
    _cached_pid = -1


os.register_at_fork(after_in_child=_forget_after_fork)


def parse_identifier(identity: str) -> int | None:
    """The pid inside an identifier (None when it is not one of ours)."""
    head = identity.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def is_alive(identity: str) -> bool:
    """True while the process that wrote files under ``identity`` still runs."""
    pid = parse_identifier(identity)
    return pid is not None and identity_of(pid) == identity
