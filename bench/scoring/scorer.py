"""The one interface a task's scorer offers: an example and a completion in, a `Verdict` out.

Tasks own their scorer (`Task.make_scorer`), so nothing outside a task's module needs to know which scorer
it uses or in which order that scorer's own methods take their arguments. The backends keep their own APIs
(`MathChecker.score(completion, reference)`, `CodeChecker.score(problem, completion)`) for the metrics in
bench/hf_metrics, the benchmarks and their tests; `MathScorer` and `CodeScorer` adapt them to this one.
Modelled on inspect_ai's scorers: a scorer sees the whole example, not a pre-chosen field of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from bench.scoring.verdict import Verdict


@runtime_checkable
class Scorer(Protocol):
    """`example` is whatever the task's examples are (bench's `Example`: id, question, answer, solution,
    extra); `score_many` lets a scorer batch (the code scorer runs programs in parallel sandboxes)."""

    def score(self, example: Any, completion: str) -> Verdict:
        ...

    def score_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                   ) -> list[Verdict]:
        ...


class ExampleScorer:
    """Convenience base: implement `score`; `score_many` scores one pair at a time, `details` records nothing."""

    def score(self, example: Any, completion: str) -> Verdict:
        raise NotImplementedError

    def score_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                   ) -> list[Verdict]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        return [self.score(example, completion) for example, completion in zip(examples, completions)]

    def details(self, example: Any, completion: str) -> dict[str, str]:
        """Extra per-sample outcomes worth recording beside the verdict (e.g. one per math extraction mode)."""
        return {}
