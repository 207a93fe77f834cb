"""The task extension point: a fourth task, defined entirely in this file, with its own scorer, description,
reference and training target, registered the way the real tasks are, then evaluated and run as a baseline
through the Hydra app. Nothing in bench/ names it, so if this passes, a new task needs no edit to bench/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from compose import compose_config, isolated, only_run_folder

from bench.config import ScoringConfig, TaskConfig
from bench.evaluation import evaluate
from bench.methods.cd_rules import Mistake, induction_prompt
from bench.models.base import Completion, GenerationRequest, SamplingParams
from bench.scoring import Scorer, Status, Verdict
from bench.tasks import TASKS, make_task, register_task
from bench.tasks.base import Example, Splits, Task


class AdditionScorer:
    """Exact integer match on the last number in the completion; `strict` (from scoring.math_mode) asks for
    the number alone."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def score(self, example: Example, completion: str) -> Verdict:
        numbers = re.findall(r"-?\d+", completion if not self.strict else completion.strip())
        if not numbers or (self.strict and not re.fullmatch(r"-?\d+", completion.strip())):
            return Verdict(Status.NO_ANSWER, f"no number found, expected {example.answer}")
        status = Status.PASSED if numbers[-1] == example.answer else Status.FAILED
        return Verdict(status, f"read {numbers[-1]}, expected {example.answer}")

    def score_many(self, examples: Sequence[Example], completions: Sequence[str], progress: bool = False
                   ) -> list[Verdict]:
        return [self.score(e, c) for e, c in zip(examples, completions, strict=True)]


def _example(split: str, a: int, b: int) -> Example:
    return Example(id=f"addition/{split}/{a}+{b}", question=f"What is {a} + {b}?", answer=str(a + b),
                   solution=f"{a} + {b} = {a + b}", extra={"terms": (a, b)})


class AdditionTask(Task):
    name = "addition"
    description = "adding two whole numbers; the answer is their sum."
    default_instruction = "Reply with the sum."

    @classmethod
    def make_scorer(cls, scoring: ScoringConfig) -> AdditionScorer:
        return AdditionScorer(strict=scoring.math_mode == "strict")

    def reference_text(self, example: Example) -> str:
        return f"The sum is {example.answer}."

    def training_target(self, example: Example) -> str:
        return f"<sum>{example.answer}</sum>"

    def _load_splits(self) -> Splits:
        return Splits(train=tuple(_example("train", a, 1) for a in range(4)),
                      validation=tuple(_example("validation", a, 2) for a in range(3)),
                      test=tuple(_example("test", a, a) for a in range(1, 6)), seed=self.config.seed, source="inline")

    def extracted(self, example: Example, completion: str) -> dict[str, str | None]:
        numbers = re.findall(r"-?\d+", completion)
        return {"sum": numbers[-1] if numbers else None}


@pytest.fixture
def addition() -> Iterator[type[AdditionTask]]:
    assert "addition" not in TASKS
    register_task(AdditionTask)
    yield AdditionTask
    TASKS.remove("addition")


class Adder:
    """A scripted model: right on every question whose first term is even, one too high otherwise."""

    backend = "scripted"
    model_id = "adder@1"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        self.requests += requests
        completions = []
        for request in requests:
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
            completions.append(Completion((f"It is {a + b + a % 2}",), 10, 3))
        return completions


def test_a_registered_task_gets_its_own_scorer_and_text(addition: type[AdditionTask]) -> None:
    task = make_task(TaskConfig(name="addition", hub_id="none"), ScoringConfig(math_mode="strict"))
    assert isinstance(task, AdditionTask) and isinstance(task.scorer, Scorer)
    assert task.scorer.strict  # built by the task's own factory from the scoring config
    example = task.examples("test")[0]
    assert task.reference_text(example) == "The sum is 2."
    assert task.training_target(example) == "<sum>2</sum>"
    mistake = Mistake(example.id, example.question, "3", task.reference_text(example), "failed", "read 3")
    assert "problems of this kind: adding two whole numbers" in induction_prompt([mistake], task.description, 2)
    assert task.score(example, "2").passed and not task.score(example, "It is 2").passed  # strict


def test_evaluate_scores_a_new_task_with_its_scorer(addition: type[AdditionTask]) -> None:
    task = make_task(TaskConfig(name="addition", hub_id="none"))  # default scoring: flexible
    model = Adder()
    result = evaluate(task, model, task.examples("test"), run_id="t", split="test", name="student",
                      params=SamplingParams(max_new_tokens=8), progress=False)
    # test items are a + a for a = 1..5: the scripted adder is right for a = 2 and 4 only
    assert [s.passed for s in result.samples] == [False, True, False, True, False]
    assert result.samples[0].detail == "read 3, expected 2"
    assert result.samples[1].extracted == {"sum": "4"}
    assert result.metrics["accuracy"]["mean"] == pytest.approx(0.4)
    assert model.requests[0].messages[-1].content == "What is 1 + 1?\n\nReply with the sum."


def test_a_baseline_runs_the_new_task_end_to_end(tmp_path: Path, addition: type[AdditionTask]) -> None:
    from bench.__main__ import execute

    # conf/task/gsm8k.yaml stands in for the task's own YAML: only its name and hub id matter here
    execute(compose_config(["task=gsm8k", "task.name=addition", "task.hub_id=none", "task.limit=2",
                            "task.max_new_tokens=4", "student=tiny", "teacher=tiny", "logger=none",
                            *isolated(tmp_path, "ext")]), progress=False)
    folder = only_run_folder(tmp_path, "ext")
    assert folder.name.startswith("baseline-addition-")
    samples = [json.loads(line) for line in (folder / "samples" / "student.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["addition/test/1+1", "addition/test/2+2"]
    assert all(s["detail"].endswith(("expected 2", "expected 4")) for s in samples)  # AdditionScorer's words
    assert json.loads((folder / "splits.json").read_text())["source"] == "inline"
