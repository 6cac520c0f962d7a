"""Workflows the workflow benchmark runs (``--include bench.workflow_shapes``).

Their handlers do nothing, so what a step costs end to end is the framework:
recording, locking, dispatching, the broker round trip and the pool. They live
in ``bench/`` rather than ``workers/`` so a production fleet never registers
them.
"""

from __future__ import annotations

from typing import Any

from tasker.workflows import Step, StepContext, Workflow

STEPS = 10


def nothing(ctx: StepContext) -> dict[str, Any]:
    """An empty handler: the step's cost is tasker's alone."""
    return {"step": ctx.step_name}


#: Ten independent steps: submitting it records and dispatches all ten at once.
wide10 = Workflow("bench", "wide10", steps=[Step(f"s{i}", nothing) for i in range(STEPS)])

#: Ten steps in a line: each completion dispatches the next one.
chain10 = Workflow("bench", "chain10", steps=[
    Step("s0", nothing),
    *(Step(f"s{i}", nothing, after=[f"s{i - 1}"]) for i in range(1, STEPS)),
])
