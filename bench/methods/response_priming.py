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
The recipe (`run`), in small steps as torchtune's KD recipe reads: `_setup_data` -> per arm `_setup_teacher_signal`
(bench/methods/rpkd_signal.py) -> `_setup_trainer` -> `train` -> `_evaluate`; each writes its artifacts and a
done-marker, and training checkpoints every `save_every` steps, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bench.config import RPKDConfig
from bench.context import RunContext
from bench.methods.base import Headline, LoRATrainingMethod, MethodResult, best_arm, paired_arms, register_method
from bench.methods.rpkd_arms import BASELINE_ARMS, PRIMING_ARMS, check_dropout_arms, select_arms
from bench.methods.rpkd_signal import PrimedTeacher, Signal, TeacherPriming, teacher_signal
from bench.training.priming import priming_for, wording

if TYPE_CHECKING:  # torch, peft: imported by the steps that use them (looking the method up stays fast)
    from bench.tasks.base import Example
    from bench.training.lora_trainer import TrainItem, TrainJob
    from bench.training.published import PublishedItem
    from bench.training.teacher_logits import FullLogitsStore, TopKCache

logger = logging.getLogger(__name__)


@register_method
class ResponsePrimingKD(LoRATrainingMethod):
    name = "rpkd"
    config_class = RPKDConfig
    trains_across_processes = True  # under torchrun: rank 0 runs every phase, all ranks train (TrainJob)

    def __init__(self, config: Any) -> None:
        from bench.training.distributed import World

        super().__init__(config)
        World.from_environment().check_batch_split(self.train_config.batch_size)  # before any teacher call
        self.arms = select_arms(config.arms, config.priming)
        check_dropout_arms(config.lora_dropout_by_arm)
        self.signal = teacher_signal(config.signal)
        self.wording = wording(config.priming_wording)
        self.teacher_priming = TeacherPriming(config, self.signal, self.wording)
        if not 0.0 <= config.alpha <= 1.0 or config.temperature <= 0:
            raise ValueError("method.alpha must be in [0, 1] and method.temperature > 0")
        if self.signal is Signal.published and config.kl_direction != "reverse":
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

    # ------------------------------------------------------------------ recipe
    def run(self, ctx: RunContext) -> MethodResult:
        """data -> per arm: teacher signal -> trainer -> train -> evaluation of every arm on the same test items."""
        self.check_trainable_student(ctx, adapters=any(arm != "no_train" for arm in self.arms))
        self.teacher_priming.check_served_teacher(ctx, self.roles)
        examples = self._setup_data(ctx)
        adapters = {arm: None if arm == "no_train" else self._train_arm(ctx, arm, examples) for arm in self.arms}
        return self._evaluate(ctx, adapters)

    def _setup_data(self, ctx: RunContext) -> list[Example]:
        """The train items every arm learns from (artifacts/train_ids.json)."""
        return self.build_dataset(ctx)

    def _setup_teacher_signal(self, ctx: RunContext, arm: str, examples: list[Example]) -> PrimedTeacher:
        """The arm's teacher signal (bench/methods/rpkd_signal.py); the GT fine-tune has none (alpha = 1)."""
        return PrimedTeacher() if arm == "gt_finetune" else self.teacher_priming.prime(ctx, arm, examples)

    def _train_arm(self, ctx: RunContext, arm: str, examples: list[Example]) -> str:
        """The arm's adapter folder: found finished (its done-marker) by a resumed run, which then needs no teacher
        signal, or trained now."""
        adapter = ctx.store.path(f"artifacts/{arm}/adapter")
        if ctx.store.phase_done(f"train_{arm}") and (adapter / "adapter_config.json").exists():
            return str(adapter)
        return self.train(ctx, arm, examples, self._setup_teacher_signal(ctx, arm, examples))

    def train(self, ctx: RunContext, arm: str, examples: list[Example], primed: PrimedTeacher) -> str:
        """Train the arm's LoRA adapter on the student (a fresh copy of its weights) and record its losses."""
        from bench.training.lora_trainer import load_for_training, train_adapter

        ctx.yield_gpu()  # a managed server (the teacher's, the student's) must not hold the GPU this trains on
        model, tokenizer = load_for_training(ctx.model_config("student"))
        job = self._setup_trainer(ctx, arm, examples, primed, tokenizer)
        started = time.perf_counter()
        report = train_adapter(job, model, progress=ctx.progress,
                               on_log=lambda row: ctx.tracker.log({f"train/{arm}": row}))
        train_s = time.perf_counter() - started
        ctx.store.write_jsonl(f"artifacts/{arm}/losses.jsonl", report.losses)
        ctx.store.mark_phase_done(f"train_{arm}", {"items": len(job.items), "steps": report.steps,
                                                   "alpha": job.alpha, "signal": self.signal.value,
                                                   "train_s": round(train_s, 2),
                                                   "resumed_from_step": report.resumed_from_step,
                                                   "final_loss": report.losses[-1] if report.losses else None})
        return report.adapter_dir

    def _setup_trainer(self, ctx: RunContext, arm: str, examples: list[Example], primed: PrimedTeacher,
                       tokenizer) -> TrainJob:
        """The arm's training job: its items (those the teacher primed), the teacher's distributions on them, the
        loss weights (alpha = 1 without a teacher signal) and the arm's LoRA."""
        from bench.training.lora_trainer import TrainJob, lora_for_arm

        if primed.ids is not None:  # items the teacher primed (filtered, or stopped by a budget)
            examples = [e for e in examples if e.id in primed.ids]
        items: list[TrainItem] | list[PublishedItem]
        teacher: TopKCache | FullLogitsStore | None
        if self.signal is Signal.published:  # gt_finetune too: the published fine-tune control
            items, teacher = self.teacher_priming.published_items(tokenizer, examples), primed.full_logits
        else:
            items = self._aligned_items(ctx, tokenizer, examples, primed.targets)
            teacher = primed.topk
            if teacher is not None:  # the teacher saw up to max_length + 512 tokens; keep the student's span
                teacher = teacher.trimmed({i.example_id: i.sequence.answer_length for i in items})
        alpha = self.config.alpha if primed.distills else 1.0
        return TrainJob(ctx.model_config("student"), lora_for_arm(self.lora, arm, self.config.lora_dropout_by_arm),
                        self.train_config, self.config.temperature, alpha, tokenizer.pad_token_id,
                        self.config.kl_direction, self.config.topk_tail, items, teacher,
                        ctx.store.path(f"artifacts/{arm}"))

    def _aligned_items(self, ctx: RunContext, tokenizer, examples: list[Example], targets: dict[str, str] | None
                       ) -> list[TrainItem]:
        """Chat-templated question + the text to learn (the reference, or the teacher's kept solution)."""
        from bench.training.kd import aligned_sequence, answer_ids
        from bench.training.lora_trainer import TrainItem

        return [TrainItem(e.id, aligned_sequence(tokenizer, ctx.task.user_message(e),
                                                 answer_ids(tokenizer, targets[e.id] if targets is not None
                                                            else ctx.task.training_target(e)),
                                                 self.train_config.max_length))
                for e in examples if targets is None or e.id in targets]

    def _evaluate(self, ctx: RunContext, adapters: dict[str, str | None]) -> MethodResult:
        """Every arm on the same test items, each paired against no_train (or the first arm), with what its training
        and priming recorded."""
        split, results = self.evaluate_adapters(ctx, adapters)
        reference = "no_train" if "no_train" in results else next(iter(results))
        rows, arms = paired_arms(ctx, results, reference)
        metrics = {"split": split, "signal": self.signal.value, "priming_wording": self.wording.value, "arms": arms}
        metrics["training"] = {arm: ctx.store.read_json(f"phases/train_{arm}.done")
                               for arm in adapters if adapters[arm] is not None}
        metrics["priming"] = {arm: ctx.store.read_json(f"artifacts/{arm}/teacher_usage.json")
                              for arm in adapters if ctx.store.exists(f"artifacts/{arm}/teacher_usage.json")}
        return MethodResult(metrics=metrics, rows=rows)
