"""Handler registry: the task names of ``workers/<namespace>.py``, by namespace.

``@handler`` (:func:`tasker.celery_app.handler`, exported as ``tasker.handler``)
turns a function into the Celery task ``<namespace>.<name>`` of tasker's app
and adds its name here; the node reports the counts per namespace.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import traceback
from collections import defaultdict

__all__ = ["registry", "HandlerRegistry", "discover_handler_modules", "HANDLER_PACKAGE",
           "describe_import_failure", "namespace_of"]

#: The package whose modules hold business handlers, one namespace per module.
HANDLER_PACKAGE = "workers"

class HandlerRegistry:
    """Every registered handler's task name, grouped by namespace."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, set[str]] = defaultdict(set)

    def add(self, namespace: str, task_name: str) -> None:
        self._by_namespace[namespace].add(task_name)

    def namespaces(self) -> dict[str, list[str]]:
        """Task names per namespace, sorted."""
        return {ns: sorted(names) for ns, names in sorted(self._by_namespace.items()) if names}

    def counts(self) -> dict[str, int]:
        """Number of handlers per namespace (the ``handlers`` of the snapshot)."""
        return {ns: len(names) for ns, names in sorted(self._by_namespace.items()) if names}

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_namespace.values())

    def __contains__(self, task_name: object) -> bool:
        return any(task_name in names for names in self._by_namespace.values())


registry = HandlerRegistry()


def namespace_of(module_name: str) -> str:
    """``workers.billing`` or ``workers.billing.invoices`` -> ``billing``."""
    parts = module_name.split(".")
    if len(parts) < 2 or parts[0] != HANDLER_PACKAGE:
        raise ValueError(
            f"handlers live in {HANDLER_PACKAGE}/<namespace>.py; "
            f"{module_name!r} is not such a module"
        )
    return parts[1]


def discover_handler_modules(package: str = HANDLER_PACKAGE) -> list[str]:
    """Every module (or sub-package) directly inside ``package``, sorted."""
    pkg = importlib.import_module(package)
    return sorted(
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if not info.name.startswith("_")
    )


def _handler_dirs(package: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    locations = (spec.submodule_search_locations or []) if spec else []
    return [os.path.realpath(p) for p in locations]


def describe_import_failure(exc: BaseException, package: str = HANDLER_PACKAGE) -> str | None:
    """One line naming the handler module, line and error when ``exc`` comes from
    importing a module of ``package``; ``None`` for any other exception.

    Why from the exception and not at the import: handler modules are imported
    by Celery's loader (worker, beat) and by the workflow registry (commands),
    and each of them must print the same one line instead of a traceback.
    """
    dirs = _handler_dirs(package)
    if not dirs:
        return None

    def where(filename: str | None) -> str | None:
        if not filename:
            return None
        path = os.path.realpath(filename)
        for d in dirs:
            if path.startswith(d + os.sep):
                return os.path.join(package, os.path.relpath(path, d))
        return None

    if isinstance(exc, SyntaxError):  # includes IndentationError
        module = where(exc.filename)
        if module is not None:
            return (f"handler module {module} line {exc.lineno}: "
                    f"{type(exc).__name__}: {exc.msg}")
    # An error raised while the module ran at import (not later, in a handler
    # called by the command): its deepest frame inside the package.
    frames = traceback.extract_tb(exc.__traceback__)
    if not any(f.filename.startswith("<frozen importlib") for f in frames):
        return None
    for frame in reversed(frames):
        module = where(frame.filename)
        if module is not None:
            message = " ".join(str(exc).split())
            return (f"handler module {module} line {frame.lineno}: "
                    f"{type(exc).__name__}: {message}")
    return None
