"""`method=baseline`: one model, the task's configured prompt, the evaluation split. The reference every
distillation arm is compared against."""

from __future__ import annotations

from bench.context import RunContext
from bench.methods.base import Method, MethodResult, summary_row


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
                            rows=[summary_row(f"{self.config.model} ({ctx.model_config(self.config.model).name})",
                                              result.metrics)])
