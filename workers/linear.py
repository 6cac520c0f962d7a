"""Linear workflow: a mathematical sequence, each step feeding the next.

n -> n + 2 -> * 3 -> - 1 -> squared; e.g. n = 3 gives 196.
"""

from tasker.workflows import Step, StepContext, Workflow
from workers._steps import compute, require_n, value_of


def add_two(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + 2", ctx.context["n"])


def triple(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint * 3", value_of(ctx, "add_two"))


def minus_one(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint - 1", value_of(ctx, "triple"))


def square(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint * %s::bigint", value_of(ctx, "minus_one"),
                   value_of(ctx, "minus_one"))


sequence = Workflow("linear", "sequence", validate=require_n, steps=[
    Step("add_two", add_two),
    Step("triple", triple, after=["add_two"]),
    Step("minus_one", minus_one, after=["triple"]),
    Step("square", square, after=["minus_one"]),
])


def expected(n: int) -> int:
    return ((n + 2) * 3 - 1) ** 2
