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
Phases: build_dataset -> prime_teacher (per arm) -> train (per arm) -> evaluate; each writes its artifacts and a
done-marker, and training checkpoints every `save_every` steps, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from omegaconf import OmegaConf

from bench.config import LoRAConfig, TrainConfig
from bench.context import RunContext
from bench.evaluation import compare
from bench.methods.base import Method, MethodResult, summary_row
from bench.models import build_model
from bench.models.base import GenerationRequest, Message
from bench.models.hf import load_model_and_tokenizer, resolve_device, resolve_dtype
from bench.tasks.base import Example
from bench.training.kd import aligned_sequence, answer_ids
from bench.training.lora_trainer import LoRATrainer, TrainItem, lora_for_arm
from bench.training.priming import (ARMS, BASELINE_ARMS, PRIMING_ARMS, Priming, PrimingWording, priming_for,
                                    select_arms, wording)
from bench.training.published import PublishedItem, published_item, published_teacher_ids
from bench.training.teacher_logits import (FullLogitsStore, TopKCache, check_disk_room, check_same_tokenizer,
                                           compute_full_logits, compute_topk)

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
class PrimedTeacher:
    """One arm's teacher signal: the texts the student learns (None: the reference solutions) and the teacher's
    distributions on them (top-k on aligned answer tokens, or the published full-vocabulary logits)."""

    targets: dict[str, str] | None = None
    topk: TopKCache | None = None
    full_logits: FullLogitsStore | None = None

    @property
    def distills(self) -> bool:
        return self.topk is not None or self.full_logits is not None


def training_target(example: Example, kind: str) -> str:
    """What the student learns to write: the reference solution, in the format the task's instruction asks."""
    return f"```python\n{example.solution.rstrip()}\n```" if kind == "code" else example.solution


def published_answer(example: Example) -> str:
    """The labels of the published recipe: the dataset's solution field verbatim where the task keeps it (GSM8K:
    with `<<...>>` annotations and `#### N`), else the worked solution."""
    return str(example.extra.get("dataset_solution") or example.solution)


class ResponsePrimingKD(Method):
    name = "rpkd"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        unknown = [arm for arm in config.arms if arm not in ARMS]
        if unknown or not config.arms:
            raise ValueError(f"unknown method.arms {unknown or '[]'}; choose from {list(ARMS)}")
        self.signal = teacher_signal(config.signal)
        self.wording = wording(config.priming_wording)
        if not 0.0 <= config.alpha <= 1.0 or config.temperature <= 0:
            raise ValueError("method.alpha must be in [0, 1] and method.temperature > 0")
        if self.signal is TeacherSignal.PUBLISHED and config.kl_direction != "reverse":
            raise ValueError("method.signal=published is the public code's loss, whose KL is reverse "
                             "(KL(student||teacher)); set method.kl_direction=reverse or choose another signal")
        self.arms = select_arms(config.arms, config.priming)
        for arm in self.arms:
            if arm in PRIMING_ARMS:
                priming_for(arm, self.wording, config.custom_priming)  # fail now, not after training other arms

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        primed = any(arm not in BASELINE_ARMS for arm in self.arms)
        return ("student", "teacher") if primed else ("student",)

    @property
    def lora(self) -> LoRAConfig:
        return OmegaConf.to_object(self.config.lora)  # type: ignore[return-value]

    @property
    def train_config(self) -> TrainConfig:
        return OmegaConf.to_object(self.config.train)  # type: ignore[return-value]

    # ------------------------------------------------------------------ driver
    def run(self, ctx: RunContext) -> MethodResult:
        student_config = ctx.model_config("student")
        if student_config.backend != "hf":
            raise ValueError("RP-KD fine-tunes the student's weights: the student needs backend=hf")
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
    def build_dataset(self, ctx: RunContext) -> list[Example]:
        examples = ctx.task.examples("train", limit=self.config.train_limit)
        ctx.store.write_json("artifacts/train_ids.json", [e.id for e in examples])
        return examples

    def prime_teacher(self, ctx: RunContext, arm: str, examples: list[Example]) -> PrimedTeacher:
        """The arm's teacher signal, by `method.signal`:
        published        full-vocabulary logits of the raw `priming + question` (no solution), as published;
        reference        top-k logits of the primed teacher forced through the reference solution;
        primed_response  the primed teacher writes a solution, the scorer keeps the right ones, and the teacher's
                         top-k logits on its own kept solution go with it;
        sequence         the kept solutions only (text; API teachers)."""
        priming = priming_for(arm, self.wording, self.config.custom_priming)
        ctx.store.write_json(f"artifacts/{arm}/priming.json", {"wording": self.wording.value, "text": priming.text,
                                                                "raw_prefix": priming.raw_prefix})
        if self.signal is TeacherSignal.SEQUENCE:
            return PrimedTeacher(targets=self._teacher_solutions(ctx, arm, priming, examples))
        if self.signal is TeacherSignal.PUBLISHED:
            return PrimedTeacher(full_logits=self._published_logits(ctx, arm, priming, examples))
        if self.signal is TeacherSignal.PRIMED_RESPONSE:
            targets = self._teacher_solutions(ctx, arm, priming, examples)
            return PrimedTeacher(targets=targets, topk=self._teacher_topk(ctx, arm, priming, examples, targets))
        return PrimedTeacher(topk=self._teacher_topk(ctx, arm, priming, examples, None))

    def _local_teacher(self, ctx: RunContext):
        """The teacher's model and tokenizer, for the signals that read its logits (same vocabulary as the student)."""
        if ctx.model_config("teacher").backend != "hf":
            raise ValueError(f"method.signal={self.signal.value} needs the teacher's logits: use a local teacher "
                             "(backend=hf), or method.signal=sequence for API teachers")
        teacher = ctx.model("teacher")
        check_same_tokenizer(ctx.model("student").tokenizer, teacher.tokenizer)
        return teacher

    def _teacher_topk(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                      targets: dict[str, str] | None) -> TopKCache:
        """Top-k logits of the primed teacher on the answer tokens the student will learn (aligned, same ids)."""
        path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
        if ctx.store.phase_done(f"prime_{arm}") and path.exists():
            return TopKCache.load(path)
        teacher = self._local_teacher(ctx)
        tokenizer, max_length = teacher.tokenizer, self.train_config.max_length + 512  # room for the priming
        sequences = {e.id: aligned_sequence(tokenizer, priming.apply(ctx.task.user_message(e)),
                                            answer_ids(tokenizer, targets[e.id] if targets is not None
                                                       else training_target(e, ctx.task.kind)), max_length)
                     for e in examples if targets is None or e.id in targets}
        cache = compute_topk(teacher.model, sequences, self.config.top_k, self.config.teacher_batch_size,
                             tokenizer.pad_token_id, progress=ctx.progress, temperature=self.config.temperature)
        cache.save(path)
        ctx.store.mark_phase_done(f"prime_{arm}", {"sequences": len(sequences), "k": self.config.top_k,
                                                   "signal": self.signal.value})
        return cache

    def _published_logits(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example]
                          ) -> FullLogitsStore:
        """Full-vocabulary teacher logits over the raw primed question at the positions the published loss reads."""
        store = FullLogitsStore(ctx.store.path(f"artifacts/{arm}/teacher_logits"))
        if ctx.store.phase_done(f"prime_{arm}"):
            return store
        teacher = self._local_teacher(ctx)
        tokenizer = teacher.tokenizer
        sequences = {}
        for example, item in zip(examples, self._published_items(tokenizer, examples)):
            teacher_ids = published_teacher_ids(tokenizer, priming.apply(example.question))
            sequences[item.example_id] = (teacher_ids, min(len(teacher_ids), item.positions))
        vocab = teacher.model.get_output_embeddings().weight.shape[0]
        needed = sum(n for _, n in sequences.values()) * vocab * 2  # float16
        logger.info("%s: storing the teacher's full-vocabulary logits, %.2f GiB", arm, needed / 2**30)
        check_disk_room(store.directory, needed)
        compute_full_logits(teacher.model, sequences, store, self.config.teacher_batch_size,
                            tokenizer.pad_token_id, progress=ctx.progress)
        ctx.store.mark_phase_done(f"prime_{arm}", {"sequences": len(sequences), "signal": self.signal.value,
                                                   "bytes": needed})
        return store

    def _published_items(self, tokenizer, examples: list[Example]) -> list[PublishedItem]:
        return [published_item(tokenizer, e.id, e.question, published_answer(e), self.train_config.max_length)
                for e in examples]

    def _teacher_solutions(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example]
                           ) -> dict[str, str]:
        teacher = ctx.model("teacher")
        params = ctx.sampling("teacher")
        requests = [GenerationRequest((Message("user", priming.apply(ctx.task.user_message(e))),), params)
                    for e in examples]
        texts = [c.text for c in teacher.generate(requests, progress=ctx.progress)]
        verdicts = ctx.task.score_many(examples, texts, progress=ctx.progress)
        kept = {e.id: text for e, text, v in zip(examples, texts, verdicts) if v.passed or not self.config.filter_correct}
        ctx.store.write_jsonl(f"artifacts/{arm}/teacher_solutions.jsonl",
                              ({"task_id": e.id, "text": t, "status": v.status.value, "kept": e.id in kept}
                               for e, t, v in zip(examples, texts, verdicts)))
        logger.info("%s: kept %d of %d teacher solutions", arm, len(kept), len(examples))
        if not kept:
            raise ValueError(f"{arm}: the scorer accepted none of the {len(examples)} teacher solutions, so there is "
                             "nothing to train on; use a stronger teacher, more items, or method.filter_correct=false")
        return kept

    def train(self, ctx: RunContext, arm: str, examples: list[Example], primed: PrimedTeacher) -> str:
        output = ctx.store.path(f"artifacts/{arm}")
        adapter = output / "adapter"
        if ctx.store.phase_done(f"train_{arm}") and (adapter / "adapter_config.json").exists():
            return str(adapter)
        config = ctx.model_config("student")
        device = resolve_device(config.device)
        model, tokenizer, _ = load_model_and_tokenizer(dataclasses.replace(config, adapter_path=None), device,
                                                       resolve_dtype(config.dtype, device))
        tokenizer.padding_side = "right"
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
        trainer = LoRATrainer(model, lora_for_arm(self.lora, arm, self.config.lora_dropout_by_arm),
                              self.train_config, self.config.temperature, alpha, tokenizer.pad_token_id,
                              progress=ctx.progress, kl_direction=self.config.kl_direction,
                              topk_tail=self.config.topk_tail)
        report = trainer.train(items, teacher, output, on_log=lambda row: ctx.tracker.log({f"train/{arm}": row}))
        ctx.store.write_jsonl(f"artifacts/{arm}/losses.jsonl", report.losses)
        ctx.store.mark_phase_done(f"train_{arm}", {"items": len(items), "steps": report.steps, "alpha": alpha,
                                                   "signal": self.signal.value,
                                                   "resumed_from_step": report.resumed_from_step,
                                                   "final_loss": report.losses[-1] if report.losses else None})
        return report.adapter_dir

    def _aligned_items(self, ctx: RunContext, tokenizer, examples: list[Example], targets: dict[str, str] | None
                       ) -> list[TrainItem]:
        """Chat-templated question + the text to learn (the reference, or the teacher's kept solution)."""
        return [TrainItem(e.id, aligned_sequence(tokenizer, ctx.task.user_message(e),
                                                 answer_ids(tokenizer, targets[e.id] if targets is not None
                                                            else training_target(e, ctx.task.kind)),
                                                 self.train_config.max_length))
                for e in examples if targets is None or e.id in targets]

    def evaluate(self, ctx: RunContext, adapters: dict[str, str | None]) -> MethodResult:
        split = ctx.config.task.eval_split
        examples = ctx.task.examples(split, limit=ctx.config.task.limit)
        config = ctx.model_config("student")
        cache = OmegaConf.to_object(ctx.config.cache)
        results = {}
        for arm, adapter in adapters.items():
            model = ctx.model("student") if adapter is None else build_model(
                dataclasses.replace(config, adapter_path=adapter), cache)  # type: ignore[arg-type]
            results[arm] = ctx.evaluate(model, examples, split=split, name=f"test_{arm}")
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
        return MethodResult(metrics=metrics, rows=rows)
