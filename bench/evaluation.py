"""Evaluate one model with one system prompt on a list of task examples: generate, score, summarise.

Every method evaluates through this one function, so CD's prompts, RP-KD's adapters and plain baselines are
scored by the same code, with the same records and the same statistics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.models.base import ChatModel, SamplingParams
from bench.scoring.metrics import PairedComparison, estimate, paired_test
from bench.tasks.base import Example, Task


@dataclass
class SampleRecord:
    """One line of samples.jsonl: everything needed to audit or re-score an item without re-running it."""

    run_id: str
    evaluation: str
    task_id: str
    split: str
    model_id: str
    messages: list[dict[str, str]]
    completion: str
    status: str
    passed: bool
    detail: str
    scores: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    name: str
    samples: list[SampleRecord]
    metrics: dict[str, Any]

    @property
    def outcomes(self) -> list[bool]:
        return [sample.passed for sample in self.samples]

    @property
    def task_ids(self) -> list[str]:
        return [sample.task_id for sample in self.samples]


def summarise(samples: Sequence[SampleRecord], generation_s: float = 0.0, scoring_s: float = 0.0,
              seed: int = 0) -> dict[str, Any]:
    """n, accuracy with a 95% bootstrap CI, per-mode accuracies, status counts, tokens, cost and timings."""
    if not samples:
        raise ValueError("cannot summarise an evaluation with no samples (is the split or task.limit empty?)")
    metrics: dict[str, Any] = {"n": len(samples), "accuracy": estimate([s.passed for s in samples], seed=seed).to_dict()}
    modes = sorted({mode for sample in samples for mode in sample.scores})
    for mode in modes:
        metrics[f"accuracy_{mode}"] = estimate([s.scores.get(mode) == "passed" for s in samples], seed=seed).to_dict()
    metrics["statuses"] = dict(Counter(sample.status for sample in samples))
    metrics["prompt_tokens"] = sum(sample.prompt_tokens for sample in samples)
    metrics["completion_tokens"] = sum(sample.completion_tokens for sample in samples)
    metrics["truncated"] = sum(sample.finish_reason == "length" for sample in samples)
    metrics["cached"] = sum(sample.cached for sample in samples)
    metrics["cost_usd"] = round(sum(sample.cost_usd for sample in samples), 6)
    metrics["generation_s"] = round(generation_s, 3)
    metrics["scoring_s"] = round(scoring_s, 3)
    return metrics


def evaluate(task: Task, model: ChatModel, examples: Sequence[Example], *, run_id: str, split: str, name: str,
             system_prompt: str | None = None, params: SamplingParams | None = None, progress: bool = True,
             seed: int = 0) -> EvalResult:
    few_shot = task.few_shot_examples()
    requests = [task.request(example, system_prompt=system_prompt, params=params, few_shot=few_shot)
                for example in examples]
    started = time.perf_counter()
    completions = model.generate(requests, progress=progress)
    generation_s = time.perf_counter() - started
    texts = [completion.text for completion in completions]
    started = time.perf_counter()
    verdicts = task.score_many(examples, texts, progress=progress)
    scoring_s = time.perf_counter() - started
    samples = [
        SampleRecord(
            run_id=run_id, evaluation=name, task_id=example.id, split=split, model_id=model.model_id,
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            completion=completion.text, status=verdict.status.value, passed=verdict.passed, detail=verdict.detail,
            scores=task.score_details(example, completion.text), prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens, finish_reason=completion.finish_reason,
            latency_s=round(completion.latency_s, 4), cost_usd=0.0 if completion.cached else completion.cost_usd,
            cached=completion.cached,
        )
        for example, request, completion, verdict in zip(examples, requests, completions, verdicts)
    ]
    return EvalResult(name, samples, summarise(samples, generation_s, scoring_s, seed=seed))


def compare(base: EvalResult, other: EvalResult, seed: int = 0) -> PairedComparison:
    """Paired test of two evaluations; refuses to compare different items, which would make the test invalid."""
    if base.task_ids != other.task_ids:
        raise ValueError(f"paired comparison of {base.name!r} and {other.name!r} needs the same items in the "
                         "same order")
    return paired_test([float(x) for x in base.outcomes], [float(x) for x in other.outcomes], seed=seed)
