"""The node's multiprocess directory: chosen, locked and wiped at node start.

Two live worker nodes must never share a directory (each wipes it when it
starts, and each folds the other's files). So a node holds an exclusive
``flock`` on ``node.lock`` inside its directory for its whole life: a second
node pointed at the same ``PROMETHEUS_MULTIPROC_DIR`` refuses to start, and a
default directory whose lock is free belongs to a node that is gone and can be
removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

__all__ = ["NodeDirectory", "DirectoryInUseError", "prepare_directory", "DEFAULT_PREFIX"]

logger = logging.getLogger("tasker.metrics")

#: Prefix of the default per-node directories under the system temp dir.
DEFAULT_PREFIX = "tasker-metrics-"
_LOCK_NAME = "node.lock"


class DirectoryInUseError(RuntimeError):
    """Another live worker node owns the directory."""


@dataclass
class NodeDirectory:
    """A directory this node owns until :meth:`release`."""

    path: str
    owned: bool  # created by tasker (removed at release) rather than configured
    _lock_fd: int
    _owner_pid: int = field(default_factory=os.getpid)

    def release(self) -> None:
        """Unlock; remove the directory too when tasker created it (idempotent)."""
        if self._lock_fd < 0:
            return
        if os.getpid() != self._owner_pid:
            return  # a forked child: the directory belongs to its node
        os.close(self._lock_fd)
        self._lock_fd = -1
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def _try_lock(path: str) -> int | None:
    """An fd holding the exclusive lock on ``path``'s lock file, or None if taken."""
    fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _remove_abandoned(parent: str) -> None:
    """Remove default directories whose node is gone (their lock is free)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(DEFAULT_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = _try_lock(entry.path)
        except OSError:
            continue
        if fd is not None:
            os.close(fd)
            shutil.rmtree(entry.path, ignore_errors=True)


def prepare_directory(configured: str | None) -> NodeDirectory:
    """Create or claim the node's directory and empty it.

    Args:
        configured: ``PROMETHEUS_MULTIPROC_DIR`` if set; otherwise a fresh
            directory is made under the system temp dir.

    Raises:
        DirectoryInUseError: ``configured`` is held by another live node.
        OSError: the directory cannot be created or written.
    """
    if configured is None:
        _remove_abandoned(tempfile.gettempdir())
        path = tempfile.mkdtemp(prefix=f"{DEFAULT_PREFIX}{os.getpid()}-")
        fd = _try_lock(path)
        assert fd is not None  # nobody else knows this new directory yet
        return NodeDirectory(path, True, fd)
    os.makedirs(configured, exist_ok=True)
    fd = _try_lock(configured)
    if fd is None:
        with open(os.path.join(configured, _LOCK_NAME)) as f:
            holder = f.read().strip() or "?"
        raise DirectoryInUseError(
            f"PROMETHEUS_MULTIPROC_DIR={configured} is in use by another live worker node "
            f"(pid {holder}); give each node its own directory"
        )
    for entry in os.scandir(configured):
        if entry.name == _LOCK_NAME:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
    return NodeDirectory(configured, False, fd)
