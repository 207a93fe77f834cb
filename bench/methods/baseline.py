"""`method=baseline`: one model, the task's configured prompt, the evaluation split. The reference every
distillation arm is compared against.

Its arm is the role it evaluated (`student`), not the model's name: arm names are W&B keys and table pivots that
must match across runs and methods; the model is in metrics.json's `models` (the report's models column).
"""

from __future__ import annotations

from typing import Any

from bench.context import RunContext
from bench.methods.base import Headline, Method, MethodResult, best_arm, summary_row


class Baseline(Method):
    name = "baseline"

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.config.model,)

    @property
    def evaluated_roles(self) -> tuple[str, ...]:
        return (self.config.model,)

    def run(self, ctx: RunContext) -> MethodResult:
        split = ctx.config.task.eval_split
        examples = ctx.task.examples(split, limit=ctx.config.task.limit)
        result = ctx.evaluate(ctx.model(self.config.model), examples, split=split, name=self.config.model)
        return MethodResult(metrics={"evaluation": result.metrics, "split": split},
                            rows=[summary_row(self.config.model, result.metrics)])

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The evaluated model's test accuracy."""
        return best_arm(rows, lambda arm: arm == self.config.model)
