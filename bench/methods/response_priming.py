"""`method=rpkd`: Response-Priming KD (arXiv 2412.17846) — train-time distillation into LoRA adapters.

Arms (all in one run, so they share items, steps, seed and test set):
  no_train     the student as it is
  gt_finetune  LoRA fine-tune on the reference solutions only (alpha = 1)
  base | teacher | ground_truth | confidence | custom
               KD from the teacher primed with that prompt: token-level (top-k teacher logits on the aligned
               answer tokens of the reference solution; same tokenizer required) or sequence-level (fine-tune
               on the primed teacher's own solutions, kept only if the scorer accepts them).
Phases: build_dataset -> prime_teacher (per arm) -> train (per arm) -> evaluate; each writes its artifacts and a
done-marker, and training checkpoints every `save_every` steps, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
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
from bench.training.priming import (ARMS, BASELINE_ARMS, PRIMING_ARMS, priming_prompt, primed_question,
                                    select_arms)
from bench.training.teacher_logits import TopKCache, check_same_tokenizer, compute_topk

logger = logging.getLogger(__name__)

SIGNALS = ("token", "sequence")


def training_target(example: Example, kind: str) -> str:
    """What the student learns to write: the reference solution, in the format the task's instruction asks."""
    return f"```python\n{example.solution.rstrip()}\n```" if kind == "code" else example.solution


class ResponsePrimingKD(Method):
    name = "rpkd"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        unknown = [arm for arm in config.arms if arm not in ARMS]
        if unknown or not config.arms:
            raise ValueError(f"unknown method.arms {unknown or '[]'}; choose from {list(ARMS)}")
        if config.signal not in SIGNALS:
            raise ValueError(f"method.signal must be one of {SIGNALS}, got {config.signal!r}")
        if not 0.0 <= config.alpha <= 1.0 or config.temperature <= 0:
            raise ValueError("method.alpha must be in [0, 1] and method.temperature > 0")
        self.arms = select_arms(config.arms, config.priming)
        for arm in self.arms:
            if arm in PRIMING_ARMS:
                priming_prompt(arm, config.custom_priming)  # fail now, not after training other arms

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
            teacher_signal = self.prime_teacher(ctx, arm, examples) if arm != "gt_finetune" else None
            adapters[arm] = self.train(ctx, arm, examples, teacher_signal)
        return self.evaluate(ctx, adapters)

    # ------------------------------------------------------------------ phases
    def build_dataset(self, ctx: RunContext) -> list[Example]:
        examples = ctx.task.examples("train", limit=self.config.train_limit)
        ctx.store.write_json("artifacts/train_ids.json", [e.id for e in examples])
        return examples

    def prime_teacher(self, ctx: RunContext, arm: str, examples: list[Example]):
        """Token-level: top-k teacher logits on the aligned answer tokens. Sequence-level: accepted solutions."""
        priming = priming_prompt(arm, self.config.custom_priming)
        if self.config.signal == "sequence":
            return self._teacher_solutions(ctx, arm, priming, examples)
        path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
        if ctx.store.phase_done(f"prime_{arm}") and path.exists():
            return TopKCache.load(path)
        teacher, student = ctx.model("teacher"), ctx.model("student")
        if ctx.model_config("teacher").backend != "hf":
            raise ValueError("token-level KD needs the teacher's logits: use a local teacher (backend=hf) or "
                             "method.signal=sequence for API teachers")
        check_same_tokenizer(student.tokenizer, teacher.tokenizer)
        tokenizer, max_length = teacher.tokenizer, self.train_config.max_length + 512  # room for the priming
        sequences = {e.id: aligned_sequence(tokenizer, primed_question(priming, ctx.task.user_message(e)),
                                            answer_ids(tokenizer, training_target(e, ctx.task.kind)), max_length)
                     for e in examples}
        cache = compute_topk(teacher.model, sequences, self.config.top_k, self.config.teacher_batch_size,
                             tokenizer.pad_token_id, progress=ctx.progress)
        cache.save(path)
        ctx.store.mark_phase_done(f"prime_{arm}", {"sequences": len(sequences), "k": self.config.top_k})
        return cache

    def _teacher_solutions(self, ctx: RunContext, arm: str, priming: str, examples: list[Example]
                           ) -> dict[str, str]:
        teacher = ctx.model("teacher")
        params = ctx.sampling("teacher")
        requests = [GenerationRequest((Message("user", primed_question(priming, ctx.task.user_message(e))),), params)
                    for e in examples]
        texts = [c.text for c in teacher.generate(requests, progress=ctx.progress)]
        verdicts = ctx.task.score_many(examples, texts, progress=ctx.progress)
        kept = {e.id: text for e, text, v in zip(examples, texts, verdicts) if v.passed or not self.config.filter_correct}
        ctx.store.write_jsonl(f"artifacts/{arm}/teacher_solutions.jsonl",
                              ({"task_id": e.id, "text": t, "status": v.status.value, "kept": e.id in kept}
                               for e, t, v in zip(examples, texts, verdicts)))
        logger.info("%s: kept %d of %d teacher solutions", arm, len(kept), len(examples))
        return kept

    def train(self, ctx: RunContext, arm: str, examples: list[Example], teacher_signal) -> str:
        output = ctx.store.path(f"artifacts/{arm}")
        adapter = output / "adapter"
        if ctx.store.phase_done(f"train_{arm}") and (adapter / "adapter_config.json").exists():
            return str(adapter)
        config = ctx.model_config("student")
        device = resolve_device(config.device)
        model, tokenizer, _ = load_model_and_tokenizer(dataclasses.replace(config, adapter_path=None), device,
                                                       resolve_dtype(config.dtype, device))
        tokenizer.padding_side = "right"
        topk = teacher_signal if isinstance(teacher_signal, TopKCache) else None
        solutions = teacher_signal if isinstance(teacher_signal, dict) else None
        items = []
        for e in examples:
            if solutions is not None and e.id not in solutions:
                continue
            target = solutions[e.id] if solutions is not None else training_target(e, ctx.task.kind)
            items.append(TrainItem(e.id, aligned_sequence(tokenizer, ctx.task.user_message(e),
                                                          answer_ids(tokenizer, target), self.train_config.max_length)))
        if topk is not None:  # the teacher saw up to max_length + 512 tokens; keep the student's (shorter) span
            topk = TopKCache({i.example_id: tuple(t[: i.sequence.answer_length] for t in topk[i.example_id])
                              for i in items}, topk.k)
        alpha = self.config.alpha if topk is not None else 1.0
        trainer = LoRATrainer(model, lora_for_arm(self.lora, arm, self.config.lora_dropout_by_arm),
                              self.train_config, self.config.temperature, alpha, tokenizer.pad_token_id,
                              progress=ctx.progress, kl_direction=self.config.kl_direction,
                              topk_tail=self.config.topk_tail)
        report = trainer.train(items, topk, output, on_log=lambda row: ctx.tracker.log({f"train/{arm}": row}))
        ctx.store.write_jsonl(f"artifacts/{arm}/losses.jsonl", report.losses)
        ctx.store.mark_phase_done(f"train_{arm}", {"items": len(items), "steps": report.steps, "alpha": alpha,
                                                   "resumed_from_step": report.resumed_from_step,
                                                   "final_loss": report.losses[-1] if report.losses else None})
        return report.adapter_dir

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
        rows, metrics = [], {"split": split, "signal": self.config.signal, "arms": {}}
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
