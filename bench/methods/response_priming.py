"""`method=rpkd`: Response-Priming KD (arXiv 2412.17846) — train-time distillation into LoRA adapters.

Arms (all in one run, so they share items, steps, seed and test set):
  no_train     the student as it is
  gt_finetune  LoRA fine-tune on the reference solutions only (alpha = 1)
  base | teacher | ground_truth | confidence | custom
               KD from the teacher primed with that prompt (`method.priming_wording`: the published strings
               or our paraphrases; bench/training/priming.py).
Teacher signals (`method.signal`), all sharing the optimiser, items, steps and seed:
  published        the public code's computation, defects included: full-vocabulary logits of the raw
                   `priming + question` (no solution), the student on the raw question, CE and reverse KL position
                   by position at the first min(len) positions (bench/training/published.py); gt_finetune becomes
                   the public fine-tune control, the same computation with CE only;
  reference        top-k logits of the primed teacher forced through the reference solution, on answer tokens
                   aligned with the student's (chat template on both sides; `token` before);
  primed_response  the primed teacher writes its own solution, only those the scorer accepts are kept, and the
                   student learns that text with the teacher's top-k logits on it (priming shapes both);
  sequence         the kept teacher solutions as text only (API teachers, any tokenizer).
The top-k of `reference` and `primed_response` come from a local teacher's forward pass (backend=hf) or, for a
teacher too large to load, from a vLLM server's prompt log-probs (backend=openai; bench/training/served_logprobs.py:
same cache, same tokenizer; its rest mass exists at T = 1 only, so topk_tail=rest_bucket needs method.temperature=1).
Phases: build_dataset -> prime_teacher (per arm) -> train (per arm) -> evaluate; each writes its artifacts and a
done-marker, and training checkpoints every `save_every` steps, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bench.context import RunContext
from bench.evaluation import compare
from bench.methods.base import Headline, LoRATrainingMethod, MethodResult, best_arm, summary_row
from bench.methods.rpkd_arms import BASELINE_ARMS, PRIMING_ARMS, check_dropout_arms, select_arms
from bench.models.base import GenerationRequest, Message
from bench.models.cost import FAILED_USAGE_LEDGER, UsageMeter, generate_metered
from bench.tasks.base import Example
from bench.training.distributed import World
from bench.training.kd import AlignedSequence, aligned_sequence, answer_ids
from bench.training.lora_trainer import TrainItem, TrainJob, load_for_training, lora_for_arm, train_adapter
from bench.training.priming import Priming, PrimingWording, priming_for, wording
from bench.training.published import PublishedItem, published_item, published_teacher_ids
from bench.training.teacher_logits import (FullLogitsStore, TopKCache, TopKItemStore, check_disk_room,
                                           check_same_tokenizer, compute_full_logits, compute_topk)

logger = logging.getLogger(__name__)


class TeacherSignal(str, Enum):
    """What the student learns from the primed teacher (`method.signal`); see the module docstring."""

    PUBLISHED = "published"
    REFERENCE = "reference"
    PRIMED_RESPONSE = "primed_response"
    SEQUENCE = "sequence"


SIGNALS = tuple(s.value for s in TeacherSignal)
RENAMED_SIGNALS = {"token": TeacherSignal.REFERENCE}  # earlier name, still accepted


def teacher_signal(value: str) -> TeacherSignal:
    if value in RENAMED_SIGNALS:
        logger.warning("method.signal=%s is now called %s", value, RENAMED_SIGNALS[value].value)
        return RENAMED_SIGNALS[value]
    try:
        return TeacherSignal(value)
    except ValueError:
        raise ValueError(f"method.signal must be one of {SIGNALS}, got {value!r}") from None


@dataclass
class TeacherUsage:
    """What priming one arm cost the teacher, and where a teacher-token budget stopped it (the compare study's cost
    axis). Tokens count what the teacher read and wrote: generation prompt + completion, and forward passes."""

    budget_tokens: int | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    forward_tokens: int = 0
    cache_bytes: int = 0
    primed_items: int = 0
    stopped: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens + self.forward_tokens

    def exhausted(self) -> bool:
        return self.budget_tokens is not None and self.tokens >= self.budget_tokens

    def add_generation(self, meter: UsageMeter) -> None:
        usage = meter.snapshot()
        self.calls += int(usage["calls"] or 0)
        self.prompt_tokens += int(usage["prompt_tokens"] or 0)
        self.completion_tokens += int(usage["completion_tokens"] or 0)
        self.cost_usd += float(usage["cost_usd"] or 0.0)

    def take_forward(self, lengths: dict[str, int]) -> list[str]:
        """The ids (in order) whose forward passes fit in the budget left; their tokens are counted."""
        kept: list[str] = []
        for example_id, length in lengths.items():
            if self.budget_tokens is not None and self.tokens + length > self.budget_tokens:
                self.stopped = (f"teacher budget of {self.budget_tokens} tokens reached: forward passes for "
                                f"{len(kept)} of {len(lengths)} items")
                break
            self.forward_tokens += length
            kept.append(example_id)
        return kept

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens": self.tokens}


@dataclass
class PrimedTeacher:
    """One arm's teacher signal: the texts the student learns (None: the reference solutions), the teacher's
    distributions on them (top-k on aligned answer tokens, or the published full-vocabulary logits), which items
    have a signal (None: all of them; fewer when filtered or stopped by a budget) and what it cost."""

    targets: dict[str, str] | None = None
    topk: TopKCache | None = None
    full_logits: FullLogitsStore | None = None
    ids: set[str] | None = None
    usage: TeacherUsage | None = None

    @property
    def distills(self) -> bool:
        return self.topk is not None or self.full_logits is not None


def published_answer(example: Example) -> str:
    """The labels of the published recipe: the dataset's solution field verbatim where the task keeps it (GSM8K:
    with `<<...>>` annotations and `#### N`), else the worked solution."""
    return str(example.extra.get("dataset_solution") or example.solution)


class ResponsePrimingKD(LoRATrainingMethod):
    name = "rpkd"
    trains_across_processes = True  # under torchrun: rank 0 runs every phase, all ranks train (TrainJob)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        World.from_environment().check_batch_split(self.train_config.batch_size)  # before any teacher call
        self.arms = select_arms(config.arms, config.priming)
        check_dropout_arms(config.lora_dropout_by_arm)
        self.signal = teacher_signal(config.signal)
        self.wording = wording(config.priming_wording)
        if not 0.0 <= config.alpha <= 1.0 or config.temperature <= 0:
            raise ValueError("method.alpha must be in [0, 1] and method.temperature > 0")
        if self.signal is TeacherSignal.PUBLISHED and config.kl_direction != "reverse":
            raise ValueError("method.signal=published is the public code's loss, whose KL is reverse "
                             "(KL(student||teacher)); set method.kl_direction=reverse or choose another signal")
        if config.teacher_token_budget is not None and config.teacher_token_budget < 1:
            raise ValueError(f"method.teacher_token_budget must be >= 1 (or null), got {config.teacher_token_budget}")
        for arm in self.arms:
            if arm in PRIMING_ARMS:
                priming_for(arm, self.wording, config.custom_priming)  # fail now, not after training other arms

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        primed = any(arm not in BASELINE_ARMS for arm in self.arms)
        return ("student", "teacher") if primed else ("student",)

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The best primed (distilled) arm's test accuracy, the one arm with `rpkd.priming=<arm>`; a run of baseline
        arms only (no_train, gt_finetune) takes the best of those."""
        primed = [row for row in rows if row["arm"] in PRIMING_ARMS]
        return best_arm(primed or rows, lambda arm: True)

    # ------------------------------------------------------------------ driver
    def run(self, ctx: RunContext) -> MethodResult:
        self.check_trainable_student(ctx, adapters=any(arm != "no_train" for arm in self.arms))
        self._check_served_teacher(ctx)
        examples = self.build_dataset(ctx)
        adapters: dict[str, str | None] = {}
        for arm in self.arms:
            if arm == "no_train":
                adapters[arm] = None
                continue
            primed = self.prime_teacher(ctx, arm, examples) if arm != "gt_finetune" else PrimedTeacher()
            adapters[arm] = self.train(ctx, arm, examples, primed)
        return self.evaluate(ctx, adapters)

    # ------------------------------------------------------------------ phases
    def prime_teacher(self, ctx: RunContext, arm: str, examples: list[Example]) -> PrimedTeacher:
        """The arm's teacher signal, by `method.signal`:
        published        full-vocabulary logits of the raw `priming + question` (no solution), as published;
        reference        top-k logits of the primed teacher forced through the reference solution;
        primed_response  the primed teacher writes a solution, the scorer keeps the right ones, and the teacher's
                         top-k logits on its own kept solution go with it;
        sequence         the kept solutions only (text; API teachers).
        With `method.teacher_token_budget`, priming stops once the teacher has read and written that many tokens,
        and the arm trains on the items primed by then; its usage (and where it stopped) is saved either way."""
        usage_path = f"artifacts/{arm}/teacher_usage.json"
        if ctx.store.phase_done(f"prime_{arm}") and ctx.store.exists(usage_path):
            primed = self._load_primed(ctx, arm)
            if primed is not None:
                return primed
        priming = priming_for(arm, self.wording, self.config.custom_priming)
        ctx.store.write_json(f"artifacts/{arm}/priming.json", {"wording": self.wording.value, "text": priming.text,
                                                                "raw_prefix": priming.raw_prefix})
        usage = TeacherUsage(budget_tokens=self.config.teacher_token_budget)
        primed = PrimedTeacher(usage=usage)
        if self.signal in (TeacherSignal.SEQUENCE, TeacherSignal.PRIMED_RESPONSE):
            primed.targets = self._teacher_solutions(ctx, arm, priming, examples, usage)
            primed.ids = set(primed.targets)
        if self.signal is TeacherSignal.PUBLISHED:
            primed.full_logits, primed.ids = self._published_logits(ctx, arm, priming, examples, usage)
        elif self.signal is not TeacherSignal.SEQUENCE:
            primed.topk = self._teacher_topk(ctx, arm, priming, examples, primed.targets, usage)
            primed.ids = set(primed.topk.entries)
        usage.primed_items = len(primed.ids or ())
        ctx.store.write_json(usage_path, usage.to_dict())
        if primed.targets is not None:
            ctx.store.write_json(f"artifacts/{arm}/targets.json", primed.targets)
        ctx.store.mark_phase_done(f"prime_{arm}", {"signal": self.signal.value, "items": usage.primed_items,
                                                   "k": self.config.top_k, **usage.to_dict()})
        if usage.stopped:
            logger.warning("%s: %s", arm, usage.stopped)
        return primed

    def _load_primed(self, ctx: RunContext, arm: str) -> PrimedTeacher | None:
        """A finished priming phase, read back (None when one of its files is missing: prime again)."""
        usage = TeacherUsage(**{k: v for k, v in ctx.store.read_json(f"artifacts/{arm}/teacher_usage.json").items()
                                if k != "tokens"})
        primed = PrimedTeacher(usage=usage)
        if ctx.store.exists(f"artifacts/{arm}/targets.json"):
            primed.targets = ctx.store.read_json(f"artifacts/{arm}/targets.json")
            primed.ids = set(primed.targets)
        if self.signal is TeacherSignal.PUBLISHED:
            primed.full_logits = FullLogitsStore(ctx.store.path(f"artifacts/{arm}/teacher_logits"))
            primed.ids = set(ctx.store.read_json(f"artifacts/{arm}/primed_ids.json"))
        elif self.signal is not TeacherSignal.SEQUENCE:
            path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
            if not path.exists():
                return None
            primed.topk = TopKCache.load(path)
            primed.ids = set(primed.topk.entries)
        return primed

    def _local_teacher(self, ctx: RunContext):
        """The teacher's model and tokenizer, for the signals that read its logits (same vocabulary as the student)."""
        if ctx.model_config("teacher").backend != "hf":
            raise ValueError(f"method.signal={self.signal.value} needs the teacher's logits: use a local teacher "
                             "(backend=hf), method.signal=reference or primed_response (a vLLM-served teacher "
                             "works there), or method.signal=sequence for API teachers")
        teacher = ctx.model("teacher")
        check_same_tokenizer(ctx.model("student").tokenizer, teacher.tokenizer)
        return teacher

    def _teacher_topk(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                      targets: dict[str, str] | None, usage: TeacherUsage) -> TopKCache:
        """Top-k logits of the primed teacher on the answer tokens the student will learn (aligned, same ids); from
        a local teacher's forward passes, or from a served teacher's prompt log-probs (backend=openai)."""
        served = ctx.model_config("teacher").backend == "openai"
        teacher = None if served else self._local_teacher(ctx)
        tokenizer = ctx.model("student").tokenizer if teacher is None else teacher.tokenizer
        max_length = self.train_config.max_length + 512  # room for the priming
        messages = {e.id: priming.apply(ctx.task.user_message(e)) for e in examples
                    if targets is None or e.id in targets}
        texts = {e.id: targets[e.id] if targets is not None else ctx.task.training_target(e)
                 for e in examples if e.id in messages}
        sequences = {i: aligned_sequence(tokenizer, messages[i], answer_ids(tokenizer, texts[i]), max_length)
                     for i in messages}
        if teacher is None:
            cache = self._served_topk(ctx, arm, tokenizer, messages, texts, sequences, usage)
        else:
            kept = usage.take_forward({i: len(s.input_ids) for i, s in sequences.items()})
            if not kept:
                raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
            cache = compute_topk(teacher.model, {i: sequences[i] for i in kept}, self.config.top_k,
                                 self.config.teacher_batch_size, tokenizer.pad_token_id, progress=ctx.progress,
                                 temperature=self.config.temperature)
        path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
        cache.save(path)
        usage.cache_bytes = path.stat().st_size
        return cache

    # ------------------------------------------------------------------ served teacher (vLLM prompt_logprobs)
    def _check_served_teacher(self, ctx: RunContext) -> None:
        """A served teacher's top-k are vLLM's prompt log-probs at T=1 (bench/training/served_logprobs.py): refuse a
        loss they cannot give before any teacher call, not after priming."""
        if "teacher" not in self.roles or ctx.model_config("teacher").backend != "openai" or self.config.alpha == 1.0 \
                or self.signal not in (TeacherSignal.REFERENCE, TeacherSignal.PRIMED_RESPONSE):
            return
        from bench.training.served_logprobs import served_kd_problem

        problem = served_kd_problem(self.config.topk_tail, self.config.temperature)
        if problem:
            raise ValueError(problem)

    def _served_topk(self, ctx: RunContext, arm: str, tokenizer, messages: dict[str, str], texts: dict[str, str],
                     sequences: dict[str, AlignedSequence], usage: TeacherUsage) -> TopKCache:
        """The arm's TopKCache from the served teacher, one request per item, each kept as it arrives (a killed run
        re-asks only the missing ones); the sequences are the student tokenizer's, which the server must share."""
        from bench.models.openai_api import OpenAIChatModel
        from bench.training.served_logprobs import ServedTeacher, check_served_tokenizer, fill_served_topk

        api = OpenAIChatModel.from_config(ctx.model_config("teacher"))
        teacher = ServedTeacher(api)
        first = next(iter(sequences))
        check_served_tokenizer(teacher, tokenizer, messages[first], texts[first],
                               max(len(s.input_ids) for s in sequences.values()))
        left = None if usage.budget_tokens is None else usage.budget_tokens - usage.tokens
        store = TopKItemStore(ctx.store.path(f"artifacts/{arm}/served_topk"))
        cache, served = fill_served_topk(teacher, sequences, store, self.config.top_k, self.config.temperature, left,
                                         ctx.progress, vocab_size=len(tokenizer))
        usage.calls += served.calls
        usage.prompt_tokens += served.prompt_tokens
        usage.completion_tokens += served.completion_tokens
        usage.cost_usd += api.price.cost(served.prompt_tokens, served.completion_tokens)
        usage.stopped = served.stopped or usage.stopped
        if not cache.entries:
            raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
        return cache

    def _published_logits(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                          usage: TeacherUsage) -> tuple[FullLogitsStore, set[str]]:
        """Full-vocabulary teacher logits over the raw primed question at the positions the published loss reads."""
        store = FullLogitsStore(ctx.store.path(f"artifacts/{arm}/teacher_logits"))
        teacher = self._local_teacher(ctx)
        tokenizer = teacher.tokenizer
        sequences = {}
        for example, item in zip(examples, self._published_items(tokenizer, examples)):
            teacher_ids = published_teacher_ids(tokenizer, priming.apply(example.question))
            sequences[item.example_id] = (teacher_ids, min(len(teacher_ids), item.positions))
        kept = usage.take_forward({i: len(ids) for i, (ids, _) in sequences.items()})
        if not kept:
            raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
        sequences = {i: sequences[i] for i in kept}
        vocab = teacher.model.get_output_embeddings().weight.shape[0]
        needed = sum(n for _, n in sequences.values()) * vocab * 2  # float16
        logger.info("%s: storing the teacher's full-vocabulary logits, %.2f GiB", arm, needed / 2**30)
        check_disk_room(store.directory, needed)
        compute_full_logits(teacher.model, sequences, store, self.config.teacher_batch_size,
                            tokenizer.pad_token_id, progress=ctx.progress)
        usage.cache_bytes = sum(path.stat().st_size for path in store.directory.glob("*.pt"))
        ctx.store.write_json(f"artifacts/{arm}/primed_ids.json", kept)
        return store, set(kept)

    def _published_items(self, tokenizer, examples: list[Example]) -> list[PublishedItem]:
        return [published_item(tokenizer, e.id, e.question, published_answer(e), self.train_config.max_length)
                for e in examples]

    def _teacher_solutions(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                           usage: TeacherUsage) -> dict[str, str]:
        """The primed teacher's solutions, kept when the scorer accepts them (method.filter_correct). Under a token
        budget they are generated a batch at a time, stopping once the budget is spent."""
        teacher = ctx.model("teacher")
        params = ctx.sampling("teacher")
        requests = [GenerationRequest((Message("user", priming.apply(ctx.task.user_message(e))),), params)
                    for e in examples]
        meter = UsageMeter(budget_tokens=usage.budget_tokens)
        chunk = len(requests) if usage.budget_tokens is None else max(1, ctx.model_config("teacher").batch_size)
        texts: list[str] = []
        for start in range(0, len(requests), chunk):
            if meter.exhausted():
                usage.stopped = (f"teacher budget of {usage.budget_tokens} tokens reached: solutions for "
                                 f"{len(texts)} of {len(examples)} items")
                break
            completions = generate_metered(teacher, requests[start:start + chunk], meter,
                                           ctx.store.path(f"artifacts/{arm}/{FAILED_USAGE_LEDGER}"), f"prime_{arm}",
                                           progress=ctx.progress)  # a failure's spend: the ledger
            texts += [completion.text for completion in completions]
        usage.add_generation(meter)
        generated = examples[:len(texts)]
        verdicts = ctx.task.score_many(generated, texts, progress=ctx.progress)
        kept = {e.id: text for e, text, v in zip(generated, texts, verdicts)
                if v.passed or not self.config.filter_correct}
        ctx.store.write_jsonl(f"artifacts/{arm}/teacher_solutions.jsonl",
                              ({"task_id": e.id, "text": t, "status": v.status.value, "kept": e.id in kept}
                               for e, t, v in zip(generated, texts, verdicts)))
        logger.info("%s: kept %d of %d teacher solutions", arm, len(kept), len(generated))
        if not kept:
            raise ValueError(f"{arm}: the scorer accepted none of the {len(generated)} teacher solutions, so there "
                             "is nothing to train on; use a stronger teacher, more items, or "
                             "method.filter_correct=false")
        return kept

    def train(self, ctx: RunContext, arm: str, examples: list[Example], primed: PrimedTeacher) -> str:
        output = ctx.store.path(f"artifacts/{arm}")
        adapter = output / "adapter"
        if ctx.store.phase_done(f"train_{arm}") and (adapter / "adapter_config.json").exists():
            return str(adapter)
        ctx.yield_gpu()  # a managed server (the teacher's, the student's) must not hold the GPU this trains on
        model, tokenizer = load_for_training(ctx.model_config("student"))
        if primed.ids is not None:  # items the teacher primed (filtered, or stopped by a budget)
            examples = [e for e in examples if e.id in primed.ids]
        items: list[TrainItem] | list[PublishedItem]
        teacher: TopKCache | FullLogitsStore | None
        if self.signal is TeacherSignal.PUBLISHED:  # gt_finetune too: the published fine-tune control
            items, teacher = self._published_items(tokenizer, examples), primed.full_logits
        else:
            items = self._aligned_items(ctx, tokenizer, examples, primed.targets)
            teacher = primed.topk
            if teacher is not None:  # the teacher saw up to max_length + 512 tokens; keep the student's span
                teacher = teacher.trimmed({i.example_id: i.sequence.answer_length for i in items})
        alpha = self.config.alpha if primed.distills else 1.0
        job = TrainJob(ctx.model_config("student"), lora_for_arm(self.lora, arm, self.config.lora_dropout_by_arm),
                       self.train_config, self.config.temperature, alpha, tokenizer.pad_token_id,
                       self.config.kl_direction, self.config.topk_tail, items, teacher, output)
        started = time.perf_counter()
        report = train_adapter(job, model, progress=ctx.progress,
                               on_log=lambda row: ctx.tracker.log({f"train/{arm}": row}))
        train_s = time.perf_counter() - started
        ctx.store.write_jsonl(f"artifacts/{arm}/losses.jsonl", report.losses)
        ctx.store.mark_phase_done(f"train_{arm}", {"items": len(items), "steps": report.steps, "alpha": alpha,
                                                   "signal": self.signal.value, "train_s": round(train_s, 2),
                                                   "resumed_from_step": report.resumed_from_step,
                                                   "final_loss": report.losses[-1] if report.losses else None})
        return report.adapter_dir

    def _aligned_items(self, ctx: RunContext, tokenizer, examples: list[Example], targets: dict[str, str] | None
                       ) -> list[TrainItem]:
        """Chat-templated question + the text to learn (the reference, or the teacher's kept solution)."""
        return [TrainItem(e.id, aligned_sequence(tokenizer, ctx.task.user_message(e),
                                                 answer_ids(tokenizer, targets[e.id] if targets is not None
                                                            else ctx.task.training_target(e)),
                                                 self.train_config.max_length))
                for e in examples if targets is None or e.id in targets]

    def evaluate(self, ctx: RunContext, adapters: dict[str, str | None]) -> MethodResult:
        split, results = self.evaluate_adapters(ctx, adapters)
        reference = "no_train" if "no_train" in results else next(iter(results))
        rows, metrics = [], {"split": split, "signal": self.signal.value, "priming_wording": self.wording.value,
                             "arms": {}}
        for arm, result in results.items():
            extra: dict[str, Any] = {}
            if arm != reference:
                paired = compare(results[reference], result, seed=ctx.config.seed)
                extra = {"diff": paired.diff, "mcnemar_p": paired.mcnemar_p, "bootstrap_p": paired.bootstrap_p}
                metrics["arms"][arm] = {**result.metrics, f"paired_vs_{reference}": paired.to_dict()}
            else:
                metrics["arms"][arm] = result.metrics
            rows.append(summary_row(arm, result.metrics, **extra))
        metrics["training"] = {arm: ctx.store.read_json(f"phases/train_{arm}.done")
                               for arm in adapters if adapters[arm] is not None}
        metrics["priming"] = {arm: ctx.store.read_json(f"artifacts/{arm}/teacher_usage.json")
                              for arm in adapters if ctx.store.exists(f"artifacts/{arm}/teacher_usage.json")}
        return MethodResult(metrics=metrics, rows=rows)
