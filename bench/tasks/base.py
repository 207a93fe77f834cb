"""What a task is: examples in fixed, recorded splits; how to prompt for one; how to score an answer; and the
domain text methods need (the teacher's description of the task, the reference a teacher sees, the target a
student is fine-tuned on). A task owns all of it, so adding one is a module here (registered with
`register_task`), a conf/task/<name>.yaml and its test: no method or scorer switches on which task it is."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from bench.config import ScoringConfig, TaskConfig
from bench.models.base import GenerationRequest, Message, SamplingParams
from bench.registry import Registry
from bench.scoring.scorer import AssessingScorer, Assessment, Scorer
from bench.scoring.verdict import Verdict

if TYPE_CHECKING:
    from bench.scoring.math import MathScorer

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    id: str  # stable whichever source (hub or local) the data came from
    question: str  # what the model is asked; for code, the function signature + docstring
    answer: str  # math: the gold final answer; code: the canonical solution body
    solution: str  # a worked reference solution, usable as a fine-tuning target
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Splits:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    seed: int
    source: str

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name in SPLITS:
            for example in self.get(name):
                if example.id in seen:
                    raise ValueError(f"example {example.id} is in both the {seen[example.id]} and the {name} split")
                seen[example.id] = name

    def get(self, name: str) -> tuple[Example, ...]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def ids(self) -> dict[str, list[str]]:
        return {name: [example.id for example in self.get(name)] for name in SPLITS}


def carve(pool: Sequence[Example], seed: int, sizes: Mapping[str, int]) -> dict[str, tuple[Example, ...]]:
    """Seeded split of one pool: sort by id (source order cannot matter), shuffle, cut in the order of `sizes`;
    the remainder goes to the split named with size -1."""
    ordered = sorted(pool, key=lambda example: example.id)
    random.Random(seed).shuffle(ordered)
    fixed = sum(size for size in sizes.values() if size >= 0)
    if fixed > len(ordered):
        raise ValueError(f"requested split sizes {dict(sizes)} exceed the {len(ordered)} available items")
    result, start = {}, 0
    rest = next((name for name, size in sizes.items() if size < 0), None)
    for name, size in sizes.items():
        if size >= 0:
            result[name] = tuple(ordered[start:start + size])
            start += size
    if rest:
        result[rest] = tuple(ordered[start:])
    return result


class Task(ABC):
    name: ClassVar[str]
    description: ClassVar[str]  # what the task is, for the CD teacher ("grade-school math word problems; ...")
    default_instruction: ClassVar[str]

    def __init__(self, config: TaskConfig, scorer: Scorer) -> None:
        self.config = config
        self.scorer = scorer

    @classmethod
    @abstractmethod
    def make_scorer(cls, scoring: ScoringConfig) -> Scorer:
        """The scorer this task's answers are judged by, built from the run's `scoring` config."""

    @abstractmethod
    def _load_splits(self) -> Splits:
        ...

    @cached_property
    def splits(self) -> Splits:
        return self._load_splits()

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        items = list(self.splits.get(split))
        if limit is not None:
            if limit < 1:
                raise ValueError(f"task.limit must be >= 1 (or null for all), got {limit}")
            items = items[:limit]
        return items

    def few_shot_examples(self) -> list[Example]:
        return self.examples("train", limit=self.config.few_shot) if self.config.few_shot else []

    def user_message(self, example: Example) -> str:
        instruction = self.config.instruction or self.default_instruction
        return f"{example.question}\n\n{instruction}" if instruction else example.question

    def request(self, example: Example, system_prompt: str | None = None, params: SamplingParams | None = None,
                few_shot: Sequence[Example] = ()) -> GenerationRequest:
        system = system_prompt if system_prompt is not None else self.config.system_prompt
        messages: list[Message] = [Message("system", system)] if system else []
        for shot in few_shot:
            messages += [Message("user", self.user_message(shot)), Message("assistant", shot.solution)]
        messages.append(Message("user", self.user_message(example)))
        return GenerationRequest(tuple(messages), params or SamplingParams(max_new_tokens=self.config.max_new_tokens))

    def score(self, example: Example, completion: str) -> Verdict:
        return self.scorer.score(example, completion)

    def score_many(self, examples: Sequence[Example], completions: Sequence[str], progress: bool = True
                   ) -> list[Verdict]:
        return self.scorer.score_many(examples, completions, progress=progress)

    def assess_many(self, examples: Sequence[Example], completions: Sequence[str], progress: bool = True
                    ) -> list[Assessment]:
        """Each completion's verdict with its per-mode scores and extracted fields, as evaluation records them.

        A scorer that assesses (`AssessingScorer`: the math and code scorers) reads each completion once for all
        three; a scorer that only scores gets its verdicts completed by `score_details` and `extracted`.
        """
        if isinstance(self.scorer, AssessingScorer):
            return self.scorer.assess_many(examples, completions, progress=progress)
        verdicts = self.score_many(examples, completions, progress=progress)
        return [Assessment(verdict, self.score_details(example, completion), self.extracted(example, completion))
                for example, completion, verdict in zip(examples, completions, verdicts)]

    def score_details(self, example: Example, completion: str) -> dict[str, str]:
        """Extra per-sample scores worth recording (e.g. strict and flexible math extraction)."""
        return {}

    def reference(self, example: Example) -> str:
        """What a completion is judged against, recorded beside each verdict."""
        return example.answer

    def reference_text(self, example: Example) -> str:
        """The correct answer as CD's teacher is shown it beside a student's mistake."""
        return example.solution

    def training_target(self, example: Example) -> str:
        """What the student learns to write (RP-KD's labels): the reference solution, in the format the task's
        instruction asks for."""
        return example.solution

    @abstractmethod
    def extracted(self, example: Example, completion: str) -> dict[str, str | None]:
        """What the scorer read out of a completion (the final answer per mode, or the program it ran), so an
        audit of samples.jsonl never needs to re-run the scorer."""


class MathTask(Task):
    """Shared by GSM8K and MultiArith: same checker, same answer format."""

    description = "grade-school math word problems; the final answer must be a single number."
    default_instruction = 'Solve the problem step by step. End with a line "The answer is N." where N is a number.'
    scorer: MathScorer

    @classmethod
    def make_scorer(cls, scoring: ScoringConfig) -> MathScorer:
        from bench.scoring.math import MathChecker, MathScorer

        return MathScorer(MathChecker(scoring.math_mode))  # type: ignore[arg-type]

    def score_details(self, example: Example, completion: str) -> dict[str, str]:
        return self.scorer.details(example, completion)

    def extracted(self, example: Example, completion: str) -> dict[str, str | None]:
        return self.scorer.assess(example, completion).extracted


def format_number(value: float | int | str) -> str:
    """39.0 -> "39", 2.5 -> "2.5": answers as people write them."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


# `task=<name>` selects the class registered under `name` (its `name` attribute); bench/registry.py finds every
# task module in bench/tasks, so a new task module registers itself with `@register_task`.
TASKS: Registry[type[Task]] = Registry("task", "bench.tasks")
register_task = TASKS.register()
