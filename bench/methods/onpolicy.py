"""`method=onpolicy`: on-policy distillation into the student's LoRA adapter, through TRL's DistillationTrainer.

The third train-time arm beside RP-KD's. RP-KD is off-policy: the student learns the teacher's distributions on
text it did not write (the reference, or the teacher's own solution), teacher-forced. Here the student samples its
own answers to the train questions and the teacher scores those very tokens, so the student is corrected where
its own mistakes lead it (Agarwal et al. 2024, "On-Policy Distillation of Language Models"; how recent releases
distil). Every TRL call lives in bench/training/trl_distill.py.

Equal terms with RP-KD: the same train items (`ctx.examples("train", limit=train_limit)`, each asked as the
chat-templated `task.user_message`), the same teacher, the same LoRA and optimiser schemas, the same step budget
and seed, then the same scorer on the same test items, `no_train` included.

Arms: `no_train` (the student as it is) and `onpolicy`. Phases: build_dataset -> train -> evaluate; training
writes a done-marker and checkpoints every `train.save_every` steps, so a re-run skips a finished training and a
killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from bench.config import OnPolicyConfig, Optimizer, Scheduler
from bench.context import RunContext
from bench.methods.base import Headline, LoRATrainingMethod, MethodResult, best_arm, paired_arms, register_method
from bench.result_records import COST_FIELDS

if TYPE_CHECKING:
    from bench.tasks.base import Example

ARM = "onpolicy"
LABELS = {"no_train": "Student alone", ARM: "On-policy KD"}
SAME_TOKENIZER = ("On-policy distillation scores the student's sampled tokens with the teacher's next-token "
                  "distributions, so it needs a local teacher with the student's tokenizer; for a teacher with "
                  "another tokenizer, or behind an API, use method=rpkd method.signal=sequence.")


@register_method
class OnPolicyDistillation(LoRATrainingMethod):
    name = "onpolicy"
    config_class = OnPolicyConfig
    roles = ("student", "teacher")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if not 0.0 <= config.beta <= 1.0:
            raise ValueError(f"method.beta must be in [0, 1] (0 forward KL, 1 reverse KL), got {config.beta}")
        if config.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {config.temperature}")
        if config.max_completion_length is not None and config.max_completion_length < 1:
            raise ValueError(f"method.max_completion_length must be >= 1 (or null), got {config.max_completion_length}")
        if not math.isclose(config.on_policy_fraction, 1.0):
            # TRL 1.16's stable DistillationTrainer always trains on the student's own samples. Mixing in
            # teacher-forced batches is the experimental GKDTrainer's `lmbda`, whose loss applies no temperature and
            # whose data pipeline is SFT's: a different objective, so not silently swapped in behind this knob.
            raise ValueError(f"method.on_policy_fraction={config.on_policy_fraction}: TRL's DistillationTrainer "
                             "(1.16) trains on the student's own samples only, so 1.0 is the one value supported; "
                             "for teacher-forced KD use method=rpkd")
        if config.train_limit is not None and config.train_limit < 1:
            raise ValueError(f"method.train_limit must be >= 1 (or null), got {config.train_limit}")
        if config.train.optimizer not in tuple(Optimizer) or config.train.scheduler not in tuple(Scheduler):
            raise ValueError(f"method.train.optimizer must be one of {[o.value for o in Optimizer]} and "
                             f"method.train.scheduler one of {[s.value for s in Scheduler]}; got "
                             f"{config.train.optimizer!r}, {config.train.scheduler!r}")

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The distilled student's test accuracy."""
        return best_arm(rows, lambda arm: arm == ARM)

    # ------------------------------------------------------------------ driver
    def run(self, ctx: RunContext) -> MethodResult:
        self.check_models(ctx)
        examples = self.build_dataset(ctx)
        adapter = self.train(ctx, examples)
        return self.evaluate(ctx, {"no_train": None, ARM: adapter})

    # ------------------------------------------------------------------ phases
    def check_models(self, ctx: RunContext) -> None:
        """Before any work: a local student to train, and a local teacher over the student's vocabulary (the loss
        compares the two next-token distributions at every sampled token)."""
        if ctx.model_config("student").backend != "hf":
            raise ValueError("method=onpolicy fine-tunes the student's weights: the student needs backend=hf")
        teacher = ctx.model_config("teacher")
        if teacher.backend != "hf":
            raise ValueError(f"the teacher {teacher.name!r} is served by backend={teacher.backend}, which returns "
                             f"text, not next-token distributions. {SAME_TOKENIZER}")
        from bench.training.teacher_logits import check_same_tokenizer

        check_same_tokenizer(ctx.local_lm("student").tokenizer, ctx.local_lm("teacher").tokenizer,
                             remedy=SAME_TOKENIZER)

    def max_completion_length(self, ctx: RunContext) -> int:
        return int(self.config.max_completion_length or ctx.task.config.max_new_tokens)

    def train(self, ctx: RunContext, examples: list[Example]) -> str:
        from bench.models.hf import load_model_and_tokenizer, resolve_device, resolve_dtype
        from bench.training.trl_distill import RolloutSettings, distill_on_policy  # TRL loads only when training

        output = ctx.store.path(f"artifacts/{ARM}")
        adapter = output / "adapter"
        if ctx.store.phase_done(f"train_{ARM}") and (adapter / "adapter_config.json").exists():
            return str(adapter)
        config = ctx.model_config("student")
        device = resolve_device(config.device)
        model, tokenizer, _ = load_model_and_tokenizer(dataclasses.replace(config, adapter_path=None), device,
                                                       resolve_dtype(config.dtype, device))
        settings = RolloutSettings(beta=self.config.beta, temperature=self.config.temperature,
                                   max_completion_length=self.max_completion_length(ctx))
        started = time.perf_counter()
        report = distill_on_policy(model, ctx.local_lm("teacher").model, tokenizer,
                                   [ctx.task.user_message(e) for e in examples], self.lora, self.train_config,
                                   settings, output, progress=ctx.progress,
                                   on_log=lambda row: ctx.tracker.log({f"train/{ARM}": row}))
        train_s = time.perf_counter() - started
        ctx.store.write_jsonl(f"artifacts/{ARM}/losses.jsonl", report.losses)
        ctx.store.mark_phase_done(f"train_{ARM}", {
            "items": len(examples), "steps": report.steps, "train_s": round(train_s, 2),
            "resumed_from_step": report.resumed_from_step,
            "final_loss": report.losses[-1]["loss"] if report.losses else None,
            "rollout_tokens": report.rollout_tokens, "forward_tokens": report.forward_tokens,
            **dataclasses.asdict(settings), "on_policy_fraction": self.config.on_policy_fraction})
        return report.adapter_dir

    def evaluate(self, ctx: RunContext, adapters: dict[str, str | None]) -> MethodResult:
        split, results = self.evaluate_adapters(ctx, adapters)
        training = {arm: ctx.store.read_json(f"phases/train_{arm}.done") for arm, a in adapters.items() if a}
        costs = {arm: {key: done[key] for key in ("rollout_tokens", "forward_tokens", "steps", "train_s")}
                 for arm, done in training.items()}
        rows, arms = paired_arms(ctx, results, "no_train", lambda arm: {
            "label": LABELS[arm], "cost": self._row_cost(results[arm].metrics, costs.get(arm)),
            **({"losses": f"artifacts/{arm}/losses.jsonl"} if arm in training else {})})
        return MethodResult(metrics={"split": split, "arms": arms, "training": training, "costs": costs}, rows=rows)

    @staticmethod
    def _row_cost(evaluation: dict[str, Any], training: dict[str, Any] | None) -> dict[str, Any]:
        """The row's cost in the report's fields (bench.result_records.COST_FIELDS), plus the rollout tokens."""
        cost: dict[str, Any] = {field: 0 for field in COST_FIELDS}
        cost.update(eval_completion_tokens=evaluation.get("completion_tokens", 0),
                    eval_s=round(evaluation.get("generation_s", 0.0) + evaluation.get("scoring_s", 0.0), 2))
        if training:
            cost.update(teacher_forward_tokens=training["forward_tokens"], train_steps=training["steps"],
                        train_s=training["train_s"], rollout_tokens=training["rollout_tokens"])
        return cost
