"""Declaring workflows: bad declarations fail at once with a clear message."""

from __future__ import annotations

import pytest

from tasker.workflows.definition import (
    ContextError,
    Step,
    UnknownWorkflowError,
    Workflow,
    WorkflowDefinitionError,
    get_workflow,
)
from tasker.workflows.engine import retry_delay


def _noop(ctx):  # noqa: ANN001, ANN202
    return None


def test_cycle_is_rejected_with_the_path():
    with pytest.raises(WorkflowDefinitionError, match=r"cycle: a -> c -> b -> a|cycle: a -> b"):
        Workflow("unit", "cyclic", steps=[Step("a", _noop, after=["b"]),
                                          Step("b", _noop, after=["c"]),
                                          Step("c", _noop, after=["a"])])


def test_unknown_dependency_duplicate_and_empty_are_rejected():
    with pytest.raises(WorkflowDefinitionError, match="unknown"):
        Workflow("unit", "unknown_dep", steps=[Step("a", _noop, after=["zzz"])])
    with pytest.raises(WorkflowDefinitionError, match="duplicate"):
        Workflow("unit", "dup", steps=[Step("a", _noop), Step("a", _noop)])
    with pytest.raises(WorkflowDefinitionError, match="no steps"):
        Workflow("unit", "empty", steps=[])
    with pytest.raises(WorkflowDefinitionError, match="max_attempts"):
        Workflow("unit", "zero", steps=[Step("a", _noop, max_attempts=0)])


def test_shape_helpers_and_context_validation():
    def validate(ctx):  # noqa: ANN001, ANN202
        if "n" not in ctx:
            raise ValueError("needs n")

    wf = Workflow("unit", "diamond", validate=validate, steps=[
        Step("s", _noop), Step("l", _noop, after=["s"]), Step("r", _noop, after=["s"]),
        Step("j", _noop, after=["l", "r"])])
    assert [s.name for s in wf.roots()] == ["s"]
    assert sorted(s.name for s in wf.dependents("s")) == ["l", "r"]
    assert get_workflow("unit.diamond") is wf
    wf.check_context({"n": 1})
    with pytest.raises(ContextError, match="needs n"):
        wf.check_context({})
    with pytest.raises(ContextError, match="JSON object"):
        wf.check_context([1, 2])


def test_unknown_workflow_names_the_known_ones():
    with pytest.raises(UnknownWorkflowError, match="diamond.fan_out_in"):
        get_workflow("nope.nothing")


def test_shipped_example_workflows_compute_what_they_promise():
    from workers import diamond, linear, mixed, tree

    assert linear.expected(3) == 196
    assert diamond.expected(3) == 19
    assert tree.expected(3) == 65
    assert mixed.expected(3) == 32


def test_retry_backoff_doubles_and_is_capped():
    assert [retry_delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_delay(50) == 60.0
