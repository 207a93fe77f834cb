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

from bench.models.base import ChatModel, Completion, GenerationRequest, SamplingParams
from bench.scoring.metrics import PairedComparison, estimate, paired_test, pass_at_k
from bench.scoring.scorer import Assessment
from bench.tasks.base import Example, Task


@dataclass
class SampleRecord:
    """One line of samples.jsonl: everything needed to audit or re-score an item without re-running it.

    `completion`, `status`, `passed`, `detail`, `scores` and `extracted` describe the first completion (the only
    one unless task.samples > 1). `score` is the item's share of correct completions, c/n: the per-item pass@1
    estimate that metrics and paired tests use. With n > 1 samples, `completions` and `verdicts` hold every
    completion and its verdict (status, detail, per-mode scores, extracted answer).
    """

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
    reference: str = ""
    scores: dict[str, str] = field(default_factory=dict)
    extracted: dict[str, str | None] = field(default_factory=dict)
    n_samples: int = 1
    n_correct: int = 0
    score: float = 0.0
    completions: list[str] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
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
        """Whether each item's first completion passed (the verdict a greedy, n = 1 run reports)."""
        return [sample.passed for sample in self.samples]

    @property
    def scores(self) -> list[float]:
        """Each item's share of correct completions (= `outcomes` as 0/1 when one completion per item)."""
        return [sample.score for sample in self.samples]

    @property
    def task_ids(self) -> list[str]:
        return [sample.task_id for sample in self.samples]


def _mode_scores(sample: SampleRecord, mode: str) -> float:
    """Share of an item's completions that pass in one extraction mode."""
    verdicts = sample.verdicts or [{"scores": sample.scores}]
    return sum(v["scores"].get(mode) == "passed" for v in verdicts) / len(verdicts)


def summarise(samples: Sequence[SampleRecord], generation_s: float = 0.0, scoring_s: float = 0.0,
              pass_k: Sequence[int] = (1,)) -> dict[str, Any]:
    """n, accuracy (mean pass@1) with a 95% Wilson interval, pass@k for k <= samples per item, per-mode
    accuracies, status counts, tokens, cost and timings."""
    if not samples:
        raise ValueError("cannot summarise an evaluation with no samples (is the split or task.limit empty?)")
    per_item = {sample.n_samples for sample in samples}
    if len(per_item) != 1:
        raise ValueError(f"items were sampled different numbers of times ({sorted(per_item)}); pass@k needs one n")
    n_samples = per_item.pop()
    metrics: dict[str, Any] = {"n": len(samples), "samples_per_item": n_samples,
                               "accuracy": estimate([s.score for s in samples]).to_dict()}
    metrics["pass_at_k"] = {
        str(k): estimate([pass_at_k(s.n_samples, s.n_correct, k) for s in samples]).to_dict()
        for k in sorted(set(pass_k)) if k <= n_samples
    }
    modes = sorted({mode for sample in samples for mode in sample.scores})
    for mode in modes:
        metrics[f"accuracy_{mode}"] = estimate([_mode_scores(s, mode) for s in samples]).to_dict()
    metrics["statuses"] = dict(Counter(v["status"] for s in samples for v in (s.verdicts or [{"status": s.status}])))
    metrics["prompt_tokens"] = sum(sample.prompt_tokens for sample in samples)
    metrics["completion_tokens"] = sum(sample.completion_tokens for sample in samples)
    metrics["truncated"] = sum(sample.finish_reason == "length" for sample in samples)
    metrics["cached"] = sum(sample.cached for sample in samples)
    metrics["cost_usd"] = round(sum(sample.cost_usd for sample in samples), 6)
    metrics["generation_s"] = round(generation_s, 3)
    metrics["scoring_s"] = round(scoring_s, 3)
    return metrics


def _record(task: Task, example: Example, request: GenerationRequest, completion: Completion,
            assessments: Sequence[Assessment], *, run_id: str, split: str, name: str, model_id: str) -> SampleRecord:
    """One item's record from its completions (n >= 1) and what the scorer made of each."""
    verdicts = [assessment.verdict for assessment in assessments]
    audits = [{"status": a.verdict.status.value, "detail": a.verdict.detail, "scores": a.scores,
               "extracted": a.extracted} for a in assessments]
    first, many = audits[0], len(audits) > 1
    n_correct = sum(verdict.passed for verdict in verdicts)
    return SampleRecord(
        run_id=run_id, evaluation=name, task_id=example.id, split=split, model_id=model_id,
        messages=[{"role": m.role, "content": m.content} for m in request.messages],
        completion=completion.text, status=first["status"], passed=verdicts[0].passed, detail=first["detail"],
        reference=task.reference(example), scores=first["scores"], extracted=first["extracted"],
        n_samples=len(verdicts), n_correct=n_correct, score=n_correct / len(verdicts),
        completions=list(completion.texts) if many else [], verdicts=audits if many else [],
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        finish_reason=completion.finish_reason, latency_s=round(completion.latency_s, 4),
        cost_usd=0.0 if completion.cached else completion.cost_usd, cached=completion.cached,
    )


def evaluate(task: Task, model: ChatModel, examples: Sequence[Example], *, run_id: str, split: str, name: str,
             system_prompt: str | None = None, params: SamplingParams | None = None, progress: bool = True,
             pass_k: Sequence[int] = (1,)) -> EvalResult:
    """Generate `params.n` completions per example, score every one of them, and summarise."""
    few_shot = task.few_shot_examples()
    requests = [task.request(example, system_prompt=system_prompt, params=params, few_shot=few_shot)
                for example in examples]
    started = time.perf_counter()
    completions = model.generate(requests, progress=progress)
    generation_s = time.perf_counter() - started
    for request, completion in zip(requests, completions):
        if len(completion.texts) != request.params.n:
            raise RuntimeError(f"{model.model_id} returned {len(completion.texts)} completions for a request of "
                               f"n={request.params.n}")
    flat_examples = [example for example, c in zip(examples, completions) for _ in c.texts]
    flat_texts = [text for completion in completions for text in completion.texts]
    started = time.perf_counter()
    flat_assessments = task.assess_many(flat_examples, flat_texts, progress=progress)  # each text read once
    scoring_s = time.perf_counter() - started
    samples, offset = [], 0
    for example, request, completion in zip(examples, requests, completions):
        assessments = flat_assessments[offset:offset + len(completion.texts)]
        offset += len(completion.texts)
        samples.append(_record(task, example, request, completion, assessments, run_id=run_id, split=split,
                               name=name, model_id=model.model_id))
    return EvalResult(name, samples, summarise(samples, generation_s, scoring_s, pass_k=pass_k))


def compare(base: EvalResult, other: EvalResult, seed: int = 0) -> PairedComparison:
    """Paired test of two evaluations on per-item scores (0/1 with one completion per item, so exact McNemar
    applies; c/n with several); refuses to compare different items, which would make the test invalid."""
    if base.task_ids != other.task_ids:
        raise ValueError(f"paired comparison of {base.name!r} and {other.name!r} needs the same items in the "
                         "same order")
    return paired_test(base.scores, other.scores, seed=seed)
