"""What every method is: a class with `run(ctx) -> MethodResult`, built from its typed config, registered by name.

`@register_method` makes `method=<cls.name>` select the class; its `config_class` is the schema conf/method/<name>.yaml
extends (`- /<name>_schema@_here_`), and the method receives its config as that dataclass, converted once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bench.registry import Registry

if TYPE_CHECKING:
    from bench.config import LoRAConfig, MethodConfig, TrainConfig
    from bench.context import RunContext
    from bench.evaluation import EvalResult
    from bench.tasks.base import Example


@dataclass
class MethodResult:
    """`metrics` goes to metrics.json; `rows` are the lines of the summary table (one per evaluated arm)."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Headline:
    """The one number a run is judged by: metrics.json's `headline`, and what the Hydra task function returns, so a
    sweeper (Optuna, Ax) can optimise over runs. Each method says which of its arms it is (`Method.headline`)."""

    arm: str
    value: float
    metric: str = "accuracy"  # test accuracy (pass@1 when sampled), the summary rows' `accuracy`


class Method(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]  # the method's schema; `config` is an instance of it
    roles: ClassVar[tuple[str, ...]]  # which models the method needs, built (and key-checked) before any work
    # whether a multi-process launch (torchrun) may run it: rank 0 runs it, the others serve its LoRA train jobs
    # (bench/training/distributed.py). A method that does not hand its training to them would leave them idle.
    trains_across_processes: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config  # an instance of `config_class` (bench.methods.make_method converts a config node)

    @property
    def evaluated_roles(self) -> tuple[str, ...]:
        """The models whose answers are scored; their evaluation sampling is checked before any work."""
        return ("student",)

    @abstractmethod
    def run(self, ctx: RunContext) -> MethodResult:
        ...

    @abstractmethod
    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The run's headline among the summary rows `run` returned."""


class LoRATrainingMethod(Method):
    """A method that fine-tunes the student's LoRA adapter (RP-KD, on-policy distillation): both read their typed
    LoRA and training settings, and take and record their train items, the same way, so their arms train on equal
    terms."""

    @property
    def lora(self) -> LoRAConfig:
        return self.config.lora

    @property
    def train_config(self) -> TrainConfig:
        return self.config.train

    def build_dataset(self, ctx: RunContext) -> list[Example]:
        """The first `train_limit` train items; their ids go to artifacts/train_ids.json."""
        examples = ctx.examples("train", limit=self.config.train_limit)
        ctx.store.write_json("artifacts/train_ids.json", [e.id for e in examples])
        return examples

    @staticmethod
    def check_trainable_student(ctx: RunContext, adapters: bool = True) -> None:
        """Before any work: the student's weights are on this machine to train (backend hf, or a server the harness
        runs on model_id), and what evaluates the trained arms can apply their LoRA adapters (`adapters`)."""
        config = ctx.model_config("student")
        if config.backend != "hf" and not config.server.managed:
            raise ValueError(f"LoRA training fine-tunes the student's weights: the student {config.name!r} needs "
                             "backend=hf, or a server.engine the harness runs on them (e.g. student=vllm)")
        if adapters and config.server.managed:
            from bench.models.engines import SUPPORTS_ADAPTERS

            if not SUPPORTS_ADAPTERS[config.server.engine]:
                raise ValueError(f"student.server.engine={config.server.engine} cannot serve the LoRA adapters "
                                 "the trained arms are evaluated with; use student.server.engine=vllm, or "
                                 "backend=hf with server.engine=null")

    @staticmethod
    def evaluate_adapters(ctx: RunContext, adapters: dict[str, str | None]) -> tuple[str, dict[str, EvalResult]]:
        """(split, arm -> evaluation): each arm's student (None: no adapter) on the same test items, as `test_<arm>`.
        A served student evaluates every arm on one server, each adapter served by its arm's name."""
        split, examples = ctx.test_examples()
        results = {}
        with ctx.adapter_models("student", adapters) as model_for:
            for arm in adapters:
                results[arm] = ctx.evaluate(model_for(arm), examples, split=split, name=f"test_{arm}")
        return split, results


def paired_arms(ctx: RunContext, results: Mapping[str, EvalResult], reference: str,
                extra: Callable[[str], dict[str, Any]] = lambda arm: {}
                ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Summary rows and per-arm metrics of evaluations on the same items, each arm but `reference` with its paired
    test against it (the row's diff and p-values; `paired_vs_<reference>` in its metrics). `extra(arm)` adds
    method-specific row fields."""
    from bench.evaluation import compare

    rows, metrics = [], {}
    for arm, result in results.items():
        fields = extra(arm)
        if arm == reference:
            metrics[arm] = result.metrics
        else:
            paired = compare(results[reference], result, seed=ctx.seed)
            fields.update(diff=paired.diff, mcnemar_p=paired.mcnemar_p, bootstrap_p=paired.bootstrap_p)
            metrics[arm] = {**result.metrics, f"paired_vs_{reference}": paired.to_dict()}
        rows.append(summary_row(arm, result.metrics, **fields))
    return rows, metrics


def best_arm(rows: list[dict[str, Any]], among: Callable[[str], bool]) -> Headline:
    """The highest test accuracy among the rows whose arm `among` accepts (the first of equals, in row order)."""
    candidates = [row for row in rows if among(str(row["arm"]))]
    if not candidates:
        raise ValueError(f"no arm to take the headline from among {[row['arm'] for row in rows]}")
    best = max(candidates, key=lambda row: row["accuracy"])
    return Headline(arm=str(best["arm"]), value=float(best["accuracy"]))


def summary_row(arm: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One table line from an evaluation's metrics: the fields every paper table shows."""
    accuracy = metrics["accuracy"]
    row = {"arm": arm, "n": metrics["n"], "accuracy": accuracy["mean"], "ci_low": accuracy["ci_low"],
           "ci_high": accuracy["ci_high"], "interval": accuracy.get("method", "bootstrap")}
    for key in ("accuracy_strict", "accuracy_flexible"):
        if key in metrics:
            row[key.removeprefix("accuracy_")] = metrics[key]["mean"]
    samples = metrics.get("samples_per_item", 1)
    if samples > 1:  # pass@1 is the accuracy column; pass@k (k > 1) with its interval beside it
        row["samples"] = samples
        for k, value in metrics.get("pass_at_k", {}).items():
            if int(k) > 1:
                row[f"pass@{k}"] = value["mean"]
                row[f"pass@{k}_ci"] = [value["ci_low"], value["ci_high"]]
    row.update(extra)
    return row


# `method=<name>` selects the class registered under its `name`; bench/registry.py imports every module in
# bench/methods on the first lookup, so a method module registers itself with `@register_method`. Those modules
# import their heavy libraries (torch, peft, TRL) inside the phases that use them: looking a method up, or
# refusing a bad value, stays fast.
METHODS: Registry[type[Method]] = Registry("method", "bench.methods")
register_method = METHODS.register()
