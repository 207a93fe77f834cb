"""The one interface a task's scorer offers: an example and a completion in, a `Verdict` out.

Tasks own their scorer (`Task.make_scorer`), so nothing outside a task's module needs to know which scorer
it uses or in which order that scorer's own methods take their arguments. The backends keep their own APIs
(`MathChecker.score(completion, reference)`, `CodeChecker.score(problem, completion)`) for the metrics in
bench/hf_metrics, the benchmarks and their tests; `MathScorer` and `CodeScorer` adapt them to this one.
Modelled on inspect_ai's scorers: a scorer sees the whole example, not a pre-chosen field of it.

A scorer may also offer `assess_many` (`AssessingScorer`), returning per completion an `Assessment`: the verdict
together with the per-mode outcomes and the extracted answer or program that evaluation records, all from one
reading of the text. New tasks need not: `Task.assess_many` completes a plain scorer's verdicts itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Assessment:
    """All a scorer read from one completion, from one reading of its text: the `verdict`, the outcome in each
    extraction mode (`scores`: {"strict": "passed", ...}) and what it extracted (`extracted`: the answer per mode,
    or the program it ran), so samples.jsonl can be audited without running the scorer again."""

    verdict: Verdict
    scores: dict[str, str] = field(default_factory=dict)
    extracted: dict[str, str | None] = field(default_factory=dict)


@runtime_checkable
class AssessingScorer(Scorer, Protocol):
    """A scorer that also reports what it read (`Assessment`s). Optional: evaluation reads each completion once
    through `assess_many` when a scorer has it, and otherwise asks the task (`Task.assess_many`)."""

    def assess_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                    ) -> list[Assessment]:
        ...


def check_lengths(examples: Sequence[Any], completions: Sequence[str]) -> None:
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")


class ExampleScorer:
    """Convenience base: implement `score`; `score_many` scores one pair at a time, `details` records nothing."""

    def score(self, example: Any, completion: str) -> Verdict:
        raise NotImplementedError

    def score_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                   ) -> list[Verdict]:
        check_lengths(examples, completions)
        return [self.score(example, completion) for example, completion in zip(examples, completions)]

    def details(self, example: Any, completion: str) -> dict[str, str]:
        """Extra per-sample outcomes worth recording beside the verdict (e.g. one per math extraction mode)."""
        return {}
