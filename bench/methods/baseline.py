"""`method=baseline`: one model, the task's configured prompt, the evaluation split. The reference every
distillation arm is compared against.

Its arm is the role it evaluated (`student`), not the model's name: arm names are W&B keys and table pivots that
must match across runs and methods; the model is in metrics.json's `models` (the report's models column).
"""

from __future__ import annotations

from typing import Any

from bench.config import BaselineConfig
from bench.context import RunContext
from bench.methods.base import Headline, Method, MethodResult, best_arm, register_method, summary_row


@register_method
class Baseline(Method):
    name = "baseline"
    config_class = BaselineConfig

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.config.model,)

    @property
    def evaluated_roles(self) -> tuple[str, ...]:
        return (self.config.model,)

    def run(self, ctx: RunContext) -> MethodResult:
        split, examples = ctx.test_examples()
        role = self.config.model
        result = ctx.evaluate(ctx.model(role), examples, split=split, name=role, role=role)  # sampled as configured
        return MethodResult(metrics={"evaluation": result.metrics, "split": split},
                            rows=[summary_row(self.config.model, result.metrics)])

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The evaluated model's test accuracy."""
        return best_arm(rows, lambda arm: arm == self.config.model)
