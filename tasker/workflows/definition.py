"""Declaring workflows: named steps with dependencies, checked at declaration."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tasker.registry import discover_handler_modules, registry

__all__ = ["Step", "StepContext", "Workflow", "WorkflowDefinitionError", "ContextError",
           "get_workflow", "workflows", "UnknownWorkflowError"]


class WorkflowDefinitionError(ValueError):
    """A workflow declaration is invalid (cycle, unknown dependency, duplicate...)."""


class UnknownWorkflowError(LookupError):
    """No workflow of that name is declared."""


class ContextError(ValueError):
    """A task request's context fails the workflow's validation."""


@dataclass(frozen=True)
class StepContext:
    """What a step handler receives.

    Attributes:
        context: the task request's context (JSON object).
        results: results of the steps this one depends on, by step name.
        conn: the connection of the step's transaction: changes made through
            it commit together with the step's completion, so a step that is
            run again after a crash applies its effects once.
        task_uuid, step_name, attempt, correlation_id: for logs and records.
    """

    context: Mapping[str, Any]
    results: Mapping[str, Any]
    conn: psycopg.Connection
    task_uuid: str
    step_name: str
    attempt: int
    correlation_id: str


@dataclass(frozen=True)
class Step:
    """One step: a handler and the steps it waits for."""

    name: str
    handler: Callable[[StepContext], Any]
    after: tuple[str, ...] = ()
    max_attempts: int = 3


@dataclass(frozen=True)
class Workflow:
    """A named DAG of steps, registered on creation as ``<namespace>.<name>``."""

    namespace: str
    name: str
    steps: tuple[Step, ...]
    version: str = "1"
    validate: Callable[[Mapping[str, Any]], None] | None = None
    _by_name: dict[str, Step] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        names = [s.name for s in self.steps]
        if not self.steps:
            raise WorkflowDefinitionError(f"workflow {self.full_name} has no steps")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise WorkflowDefinitionError(
                f"workflow {self.full_name}: duplicate step names {duplicates}")
        for s in self.steps:
            object.__setattr__(s, "after", tuple(s.after))
            unknown = [d for d in s.after if d not in names]
            if unknown:
                raise WorkflowDefinitionError(
                    f"workflow {self.full_name}: step {s.name!r} depends on unknown {unknown}")
            if s.max_attempts < 1:
                raise WorkflowDefinitionError(
                    f"workflow {self.full_name}: step {s.name!r} needs max_attempts >= 1")
        cycle = _find_cycle({s.name: s.after for s in self.steps})
        if cycle:
            raise WorkflowDefinitionError(
                f"workflow {self.full_name} has a cycle: {' -> '.join(cycle)}")
        self._by_name.update({s.name: s for s in self.steps})
        _register(self)
        for s in self.steps:  # step handlers count as the namespace's handlers
            registry.add(self.namespace, f"{self.full_name}.{s.name}")

    @property
    def full_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def step(self, name: str) -> Step:
        return self._by_name[name]

    def roots(self) -> list[Step]:
        return [s for s in self.steps if not s.after]

    def dependents(self, name: str) -> list[Step]:
        return [s for s in self.steps if name in s.after]

    def check_context(self, context: Any) -> None:
        """Raises ContextError when the context is not acceptable."""
        if not isinstance(context, dict):
            raise ContextError(f"context must be a JSON object, got {type(context).__name__}")
        if self.validate is not None:
            try:
                self.validate(context)
            except ContextError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                raise ContextError(f"{self.full_name}: {exc}") from None


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in ``step -> dependencies`` as a list of names, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


_registry: dict[str, Workflow] = {}  # filled as handler modules import (decorators get no handle)


def _register(wf: Workflow) -> None:
    existing = _registry.get(wf.full_name)
    if existing is not None and existing is not wf and existing.version == wf.version \
            and [s.name for s in existing.steps] != [s.name for s in wf.steps]:
        raise WorkflowDefinitionError(f"workflow {wf.full_name} v{wf.version} declared twice")
    _registry[wf.full_name] = wf


def workflows() -> dict[str, Workflow]:
    """Every declared workflow by ``<namespace>.<name>`` (imports ``workers/`` first)."""
    _import_handlers()
    return dict(_registry)


def get_workflow(full_name: str) -> Workflow:
    _import_handlers()
    try:
        return _registry[full_name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownWorkflowError(f"unknown workflow {full_name!r}; declared: {known}") from None


def _import_handlers() -> None:
    for module in discover_handler_modules():
        importlib.import_module(module)
