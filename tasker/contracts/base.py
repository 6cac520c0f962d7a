"""What a touch is, the versions tested, and the one line said about each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

__all__ = ["Touch", "ContractBroken", "TESTED", "installed_version", "outside_tested"]

#: The versions tasker is tested with (.ci/run runs the unit and integration
#: tests on both ends): oldest and newest, as (major, minor). The bounds in
#: pyproject.toml are these; .ci/oldest-constraints.txt pins the oldest.
TESTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "celery": ((5, 7), (5, 7)),
    "kombu": ((5, 7), (5, 7)),
    "billiard": ((4, 3), (4, 3)),
    "redis": ((6, 4), (8, 1)),
    "prometheus-client": ((0, 26), (0, 26)),
}


class ContractBroken(RuntimeError):
    """A touch failed that has no fallback: its message is the one line to print."""


@dataclass(frozen=True)
class Touch:
    """One use of a library's private name or format, and how it is checked.

    Attributes:
        library: the distribution's name, as pip knows it.
        what: the private names or format touched, as a reader finds them.
        check: raises (any exception) when the installed version breaks the touch.
        fallback: what tasker does instead when the check fails (the check has
            switched to it), or None: tasker cannot go on, the node stops.
    """

    library: str
    what: str
    check: Callable[[], None]
    fallback: str | None


def installed_version(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        return "not installed"


def _minor(text: str) -> tuple[int, int] | None:
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def outside_tested(library: str) -> str | None:
    """One line when the installed ``library`` is outside the tested versions, else None."""
    low, high = TESTED[library]
    installed = installed_version(library)
    got = _minor(installed)
    if got is not None and low <= got <= high:
        return None
    return (f"tasker: {library} {installed} is outside the versions tested "
            f"({'.'.join(map(str, low))} to {'.'.join(map(str, high))}.x); "
            "every private touch checked out, going on")
