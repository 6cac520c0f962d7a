"""The node's multiprocess directory: chosen, locked and emptied of tasker's files at start.

Two live worker nodes must never share a directory (each empties it when it
starts, and each folds the other's files). So a node holds an exclusive
``flock`` on ``node.lock`` inside its directory for its whole life: a second
node pointed at the same ``PROMETHEUS_MULTIPROC_DIR`` refuses to start, and a
default directory whose lock is free belongs to a node that is gone and can be
removed.

A configured directory is only ever emptied of files tasker itself creates
(:func:`foreign_entries` tells them apart). A directory that is not tasker's
(no ``node.lock``) and holds anything (a shared temporary directory, a data
directory set by mistake) is refused, and nothing in it is touched. In
tasker's own directory, a file tasker did not create is left where it is.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

__all__ = ["NodeDirectory", "DirectoryInUseError", "ForeignFilesError", "prepare_directory",
           "foreign_entries", "DEFAULT_PREFIX"]

logger = logging.getLogger("tasker.metrics")

#: Prefix of the default per-node directories under the system temp dir.
DEFAULT_PREFIX = "tasker-metrics-"
_LOCK_NAME = "node.lock"


#: Every name tasker creates in a node directory: the lock, the node state
#: (tasker/metrics/node_state.py), the fleet export and sampler locks
#: (tasker/sampler/), pool-process markers (tasker/metrics/node.py), and
#: value files (prometheus_client's format) named by tasker's process
#: identifier ``<pid>-<start ticks>`` (tasker/metrics/identity.py): ``counter_``,
#: ``gauge_livesum_``, ``native_``... A name not matched here is never deleted.
_TASKER_NAME = re.compile(
    r"""^(?:node\.lock|node_state\.bin(?:\.tmp)?|fleet\.json(?:\.\d+\.tmp)?|fleet\.lock
        |sampler\.lock|(?:proc|exit)_\d+-\d+
        |[a-z]+(?:_[a-z]+)?_\d+-\d+\.db)$""", re.VERBOSE)


class DirectoryInUseError(RuntimeError):
    """Another live worker node owns the directory."""


class ForeignFilesError(RuntimeError):
    """The configured directory holds files tasker did not create; nothing was touched."""


def foreign_entries(path: str) -> list[str]:
    """Names in ``path`` that tasker did not create (sorted; [] for a missing directory).

    Without ``node.lock`` (the first file a node creates, never removed while the
    directory is in use) nothing in the directory is tasker's: even files named like
    prometheus_client's may belong to another application using that library.
    """
    try:
        names = sorted(entry.name for entry in os.scandir(path))
    except FileNotFoundError:
        return []
    if _LOCK_NAME not in names:
        return names
    return [name for name in names if not _TASKER_NAME.match(name)
            or os.path.isdir(os.path.join(path, name))]


def refuse_foreign(path: str) -> None:
    """Raise :class:`ForeignFilesError` naming the variable if ``path`` is not tasker's
    directory (no ``node.lock``) and holds anything."""
    if os.path.exists(os.path.join(path, _LOCK_NAME)):
        return  # tasker's: only its own files are removed, the rest stays
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise ForeignFilesError(
            f"PROMETHEUS_MULTIPROC_DIR={path} holds files tasker did not create ({shown}); "
            "tasker empties its directory at every start, so point it at an empty or new "
            "directory (or unset it for a private one)")


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
        ForeignFilesError: ``configured`` holds files tasker did not create.
        OSError: the directory cannot be created or written.
    """
    if configured is None:
        _remove_abandoned(tempfile.gettempdir())
        path = tempfile.mkdtemp(prefix=f"{DEFAULT_PREFIX}{os.getpid()}-")
        fd = _try_lock(path)
        assert fd is not None  # nobody else knows this new directory yet
        return NodeDirectory(path, True, fd)
    os.makedirs(configured, exist_ok=True)
    # Checked before node.lock is created: that file would make a directory of
    # foreign files look like tasker's.
    refuse_foreign(configured)
    fd = _try_lock(configured)
    if fd is None:
        with open(os.path.join(configured, _LOCK_NAME)) as f:
            holder = f.read().strip() or "?"
        raise DirectoryInUseError(
            f"PROMETHEUS_MULTIPROC_DIR={configured} is in use by another live worker node "
            f"(pid {holder}); give each node its own directory"
        )
    # Only tasker's own files go: anything else is left where it is.
    for entry in os.scandir(configured):
        if entry.name == _LOCK_NAME or not _TASKER_NAME.match(entry.name):
            continue
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
    left = foreign_entries(configured)
    if left:
        logger.warning("metrics.directory_foreign_entries",
                       extra={"directory": configured, "entries": left[:10]})
    return NodeDirectory(configured, False, fd)
