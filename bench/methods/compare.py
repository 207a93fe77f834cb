"""`method=compare`: CD vs RP-KD head to head, for one task and one teacher/student pair, on the same test items.

One job runs, in sub-folders of its run folder:
  student      the student alone, with the task's prompt
  cd/          Concept Distillation (its own method, `method.cd.*`): arm `cd`, the learned prompt
  rpkd-<signal>/  Response-Priming KD (`method.rpkd.*`) once per teacher signal in `method.signals`: arms
               `gt_finetune` (trained once for the aligned signals; `published` has its own fine-tune control)
               and `rpkd/<signal>/<priming arm>`
  onpolicy/    with `onpolicy` in `method.families`: on-policy distillation through TRL (`method.onpolicy.*`),
               on RP-KD's train items, LoRA, optimiser, step budget and seed
then reads every arm's per-item scores back from its samples file, checks they cover the same items in the same
order, and compares every pair of arms with paired tests (exact McNemar, paired bootstrap) -- not only each arm
against its own run's base. Each arm carries its cost: teacher tokens and dollars, teacher forward tokens and
cache size, student training steps and seconds, evaluation tokens and seconds. `method.teacher_token_budget`
caps CD's induction and every RP-KD arm's priming at the same teacher budget; each arm's `stopped` says where it
stopped. The methods stay independent: this module only composes them, as a user running both would.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.config import CompareConfig
from bench.context import RunContext
from bench.methods.base import Headline, Method, MethodResult, best_arm, register_method, summary_row
from bench.methods.concept_distillation import ConceptDistillation
from bench.methods.onpolicy import ARM as ONPOLICY_ARM
from bench.methods.onpolicy import OnPolicyDistillation
from bench.methods.response_priming import ResponsePrimingKD
from bench.methods.rpkd_signal import SIGNALS, Signal, teacher_signal
from bench.result_records import COST_FIELDS
from bench.scoring.metrics import paired_test
from bench.tracking import RunStore, Tracker, read_jsonl

logger = logging.getLogger(__name__)

ARM_LABELS = {"base": "Base", "teacher": "Teacher", "ground_truth": "Ground Truth", "confidence": "Confidence",
              "custom": "Custom"}
FAMILIES = ("cd", "rpkd", "onpolicy")

@dataclasses.dataclass
class Arm:
    """One compared arm: where its test samples are, and what it cost."""

    name: str
    label: str
    family: str  # baseline | cd | rpkd
    samples: Path
    metrics: dict[str, Any]
    cost: dict[str, Any]
    losses: str | None = None  # losses.jsonl relative to the run folder


class PrefixedTracker(Tracker):
    """A sub-method's tracker: its keys under `<prefix>/`, training curves as `train/<prefix>/<arm>`, so arms of
    different sub-runs never share a key."""

    def __init__(self, inner: Tracker, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def _key(self, key: str) -> str:
        head, _, rest = key.partition("/")
        return f"train/{self.prefix}/{rest}" if head == "train" and rest else f"{self.prefix}/{key}"

    def log(self, metrics: Mapping[str, Any]) -> None:
        self.inner.log({self._key(key): value for key, value in metrics.items()})

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        self.inner.log_samples(f"{self.prefix}/{name}", records)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.inner.summary({f"{self.prefix}/{key}": value for key, value in values.items()})


@register_method
class Compare(Method):
    name = "compare"
    config_class = CompareConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        families = list(config.families)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"method.families has unknown entries {unknown}; choose from {list(FAMILIES)}")
        self.signals = [teacher_signal(s) for s in config.signals]
        if "rpkd" in families and not self.signals:
            raise ValueError(f"method.signals is empty; choose from {list(SIGNALS)}")
        if config.teacher_token_budget is not None and config.teacher_token_budget < 1:
            raise ValueError(f"method.teacher_token_budget must be >= 1 (or null), got {config.teacher_token_budget}")
        self.cd = ConceptDistillation(self._sub_config(config.cd, budget_tokens=config.teacher_token_budget)) \
            if "cd" in families else None
        self.rpkd = [ResponsePrimingKD(self._sub_config(config.rpkd, signal=signal.value, arms=arms,
                                                        teacher_token_budget=config.teacher_token_budget))
                     for index, signal in enumerate(self.signals)
                     if (arms := self._rpkd_arms(config.rpkd.arms, signal, index))] if "rpkd" in families else []
        self.onpolicy = OnPolicyDistillation(self._sub_config(
            config.onpolicy, train_limit=config.rpkd.train_limit, lora=config.rpkd.lora, train=config.rpkd.train)) \
            if "onpolicy" in families else None
        if self.onpolicy is not None and config.teacher_token_budget is not None:
            logger.warning("method.teacher_token_budget does not cap the on-policy arm (TRL's trainer scores every "
                           "rollout); its teacher tokens are reported in its cost")

    def _rpkd_arms(self, arms, signal: Signal, index: int) -> list[str]:
        """The sub-run's arms: no no_train (the student alone is measured once), and the aligned GT fine-tune only in
        the first aligned signal's run (it does not depend on the signal; `published` has its own)."""
        first_aligned = next((i for i, s in enumerate(self.signals) if s is not Signal.published), None)
        keep_gt = signal is Signal.published or index == first_aligned
        return [arm for arm in arms if arm != "no_train" and (arm != "gt_finetune" or keep_gt)]

    @staticmethod
    def _sub_config(config: Any, **overrides: Any) -> Any:
        """A copy of a method's own typed config with the study's settings applied."""
        kept = {key: copy.deepcopy(value) for key, value in overrides.items()
                if value is not None or key not in ("budget_tokens", "teacher_token_budget")}  # None: no common budget
        return dataclasses.replace(copy.deepcopy(config), **kept)

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("student", "teacher")

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The best distilled arm's test accuracy: CD's prompt, an RP-KD primed arm or the on-policy arm (not the
        student alone, nor the GT fine-tune control)."""
        return best_arm(rows, lambda arm: arm in ("cd", "onpolicy") or arm.startswith("rpkd/"))

    # ------------------------------------------------------------------ driver
    def run(self, ctx: RunContext) -> MethodResult:
        split, examples = ctx.test_examples()
        started = time.perf_counter()
        alone = ctx.evaluate(ctx.model("student"), examples, split=split, name="test_student")
        arms = [Arm("student", "Student alone", "baseline", ctx.store.path("samples/test_student.jsonl"),
                    alone.metrics, self._eval_cost(alone.metrics))]
        sub_metrics: dict[str, Any] = {}
        if self.cd is not None:
            arms.append(self._run_cd(ctx, sub_metrics))
        for rpkd in self.rpkd:
            arms += self._run_rpkd(ctx, rpkd, sub_metrics)
        if self.onpolicy is not None:
            arms.append(self._run_onpolicy(ctx, sub_metrics))
        rows, pairs = self._compare(ctx, arms)
        logger.info("compare: %d arms on %d %s items in %.0f s", len(arms), len(examples), split,
                    time.perf_counter() - started)
        return MethodResult(metrics={"split": split, "seed": ctx.seed,
                                     "student_name": ctx.model_config("student").name,
                                     "teacher_name": ctx.model_config("teacher").name,
                                     "signals": [s.value for s in self.signals], "pairs": pairs,
                                     "teacher_token_budget": self.config.teacher_token_budget,
                                     "sub_runs": sub_metrics}, rows=rows)

    def _child(self, ctx: RunContext, folder: str) -> RunContext:
        """A context writing under <run>/<folder>/ and logging under <folder>/, sharing the built models."""
        return dataclasses.replace(ctx, store=RunStore(ctx.store.path(folder)),
                                   tracker=PrefixedTracker(ctx.tracker, folder))

    def _run_cd(self, ctx: RunContext, sub_metrics: dict[str, Any]) -> Arm:
        assert self.cd is not None
        child = self._child(ctx, "cd")
        started = time.perf_counter()
        result = self.cd.run(child)
        wall = time.perf_counter() - started
        sub_metrics["cd"] = _without_rows(result.metrics)
        final = result.metrics["cd_prompt"]
        usage = result.metrics.get("teacher_usage") or {}
        test_s = result.metrics["base_prompt"].get("generation_s", 0) + final.get("generation_s", 0)
        cost = {**self._eval_cost(final),
                "teacher_prompt_tokens": usage.get("prompt_tokens", 0),
                "teacher_completion_tokens": usage.get("completion_tokens", 0),
                "teacher_usd": usage.get("cost_usd", 0.0),
                "train_s": round(max(0.0, wall - test_s), 2),  # initialize + induce + deduce
                "stopped": _cd_stopped(child.store)}
        return Arm("cd", "CD (learned prompt)", "cd", child.store.path("samples/test_cd_prompt.jsonl"), final, cost)

    def _run_rpkd(self, ctx: RunContext, rpkd: ResponsePrimingKD, sub_metrics: dict[str, Any]) -> list[Arm]:
        signal = rpkd.signal.value
        folder = f"rpkd-{signal}"
        child = self._child(ctx, folder)
        result = rpkd.run(child)
        sub_metrics[folder] = _without_rows(result.metrics)
        arms = []
        for arm in rpkd.arms:
            metrics = result.metrics["arms"][arm]
            training = result.metrics["training"].get(arm, {})
            priming = result.metrics.get("priming", {}).get(arm, {})
            cost = {**self._eval_cost(metrics),
                    "teacher_prompt_tokens": priming.get("prompt_tokens", 0),
                    "teacher_completion_tokens": priming.get("completion_tokens", 0),
                    "teacher_usd": priming.get("cost_usd", 0.0),
                    "teacher_forward_tokens": priming.get("forward_tokens", 0),
                    "teacher_cache_bytes": priming.get("cache_bytes", 0),
                    "train_steps": training.get("steps", 0), "train_s": training.get("train_s", 0.0),
                    "stopped": priming.get("stopped")}
            name, label = self._rpkd_name(arm, rpkd.signal)
            losses = f"{folder}/artifacts/{arm}/losses.jsonl"
            arms.append(Arm(name, label, "rpkd", child.store.path(f"samples/test_{arm}.jsonl"), metrics, cost,
                            losses if ctx.store.exists(losses) else None))
        return arms

    def _run_onpolicy(self, ctx: RunContext, sub_metrics: dict[str, Any]) -> Arm:
        assert self.onpolicy is not None
        child = self._child(ctx, "onpolicy")
        result = self.onpolicy.run(child)
        sub_metrics["onpolicy"] = _without_rows(result.metrics)
        row = next(row for row in result.rows if row["arm"] == ONPOLICY_ARM)
        cost = {**{field: 0 for field in COST_FIELDS}, **row["cost"], "stopped": None}
        losses = f"onpolicy/{row['losses']}" if row.get("losses") else None
        return Arm("onpolicy", "On-policy KD", "onpolicy", child.store.path(f"samples/test_{ONPOLICY_ARM}.jsonl"),
                   result.metrics["arms"][ONPOLICY_ARM], cost, losses)

    @staticmethod
    def _rpkd_name(arm: str, signal: Signal) -> tuple[str, str]:
        if arm == "gt_finetune":
            if signal is Signal.published:
                return "gt_finetune/published", "GT fine-tune (published)"
            return "gt_finetune", "GT fine-tune"
        return f"rpkd/{signal.value}/{arm}", f"RP-KD {ARM_LABELS.get(arm, arm)} ({signal.value})"

    @staticmethod
    def _eval_cost(metrics: Mapping[str, Any]) -> dict[str, Any]:
        cost: dict[str, Any] = {field: 0 for field in COST_FIELDS}
        cost.update(eval_completion_tokens=metrics.get("completion_tokens", 0),
                    eval_s=round(metrics.get("generation_s", 0.0) + metrics.get("scoring_s", 0.0), 2), stopped=None)
        return cost

    # ------------------------------------------------------------------ comparison
    def _compare(self, ctx: RunContext, arms: list[Arm]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        scores: dict[str, list[float]] = {}
        ids: dict[str, list[str]] = {}
        for arm in arms:
            records = read_jsonl(arm.samples)
            ids[arm.name], scores[arm.name] = [r["task_id"] for r in records], [float(r["score"]) for r in records]
        reference = ids["student"]
        for name, arm_ids in ids.items():
            if arm_ids != reference:
                raise ValueError(f"arm {name!r} was scored on other items than the student alone: a paired "
                                 "comparison would be invalid")
        seed = ctx.seed
        rows = []
        for arm in arms:
            extra: dict[str, Any] = {"label": arm.label, "family": arm.family, "cost": arm.cost, "losses": arm.losses}
            if arm.name != "student":
                paired = paired_test(scores["student"], scores[arm.name], seed=seed)
                extra.update(diff=paired.diff, mcnemar_p=paired.mcnemar_p, bootstrap_p=paired.bootstrap_p)
            rows.append(summary_row(arm.name, arm.metrics, **extra))
        pairs = []
        for first, second in itertools.combinations(arms, 2):
            paired = paired_test(scores[first.name], scores[second.name], seed=seed)
            pairs.append({"a": first.name, "b": second.name, "n": paired.n, "diff": paired.diff,
                          "ci_low": paired.ci_low, "ci_high": paired.ci_high, "mcnemar_p": paired.mcnemar_p,
                          "bootstrap_p": paired.bootstrap_p, "only_a": paired.only_a, "only_b": paired.only_b})
        return rows, pairs


def _without_rows(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key != "rows"}


def _cd_stopped(store: RunStore) -> str | None:
    """Where CD's teacher budget stopped induction, from its induction log (None when it ran to the end)."""
    if not store.exists("induction_log.jsonl"):
        return None
    skipped = sum(1 for entry in store.read_jsonl("induction_log.jsonl")
                  if str(entry.get("outcome", "")).startswith("skipped: budget"))
    return f"teacher budget reached: {skipped} mistake batches not sent" if skipped else None

