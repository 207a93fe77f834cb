"""Finished runs as typed records: every reporting module reads results through `load_runs`, never raw JSON.

metrics.json has grown over the project (intervals, pass@k, the `compare` method's labels, families, costs and
loss files), and the committed tables were made from runs of every age. So each field is read tolerantly here,
once: a missing label is derived from the arm and the method, a missing interval is the percentile bootstrap that
old runs used, and costs of older methods are read from where those methods kept them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from bench.identity import NOT_IDENTITY as _NOT_IDENTITY
from bench.identity import identity_paths
from bench.scoring.metrics import Interval


class Family(str, Enum):
    """What kind of arm a row is; orders the pivot's rows and colours the plots."""

    BASELINE = "baseline"
    CD = "cd"
    RPKD = "rpkd"
    OTHER = "other"


FAMILY_ORDER = (Family.BASELINE, Family.CD, Family.RPKD, Family.OTHER)
STUDENT_ALONE = "Student alone"

# Config keys that change where or how a run is logged, not what it computes (as in bench.__main__), and the
# seeds: two runs whose remaining config is equal are repeats of one variant, and their cells aggregate.
_NOT_IDENTITY_METRICS = ("run_id", "seed", "started", "wall_s", "environment", "rows", "pairs")


def is_seed_key(key: str) -> bool:
    """`seed`, `method.seed`, ...: the knobs a seed sweep turns. `task.seed` is not one: it picks other items."""
    return key.rsplit(".", 1)[-1] == "seed" and key != "task.seed"


@dataclass(frozen=True)
class Cost:
    """What an arm cost; None where the run did not record it (an older run, or a method without that phase)."""

    teacher_prompt_tokens: float | None = None
    teacher_completion_tokens: float | None = None
    teacher_usd: float | None = None
    teacher_forward_tokens: float | None = None
    teacher_cache_bytes: float | None = None
    train_steps: float | None = None
    train_s: float | None = None
    eval_completion_tokens: float | None = None
    eval_s: float | None = None
    stopped: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Cost:
        if not data:
            return cls()
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = data.get(name)
            if name == "stopped":
                values[name] = str(value) if value else None
            else:
                values[name] = _number(value)
        return cls(**values)

    @property
    def teacher_generation_tokens(self) -> float | None:
        """Prompt + completion tokens of the teacher's generation calls."""
        return _total(self.teacher_prompt_tokens, self.teacher_completion_tokens)

    @property
    def teacher_tokens(self) -> float | None:
        """Every token the teacher read or wrote: prompt + completion (generation) + forward (logit passes)."""
        return _total(self.teacher_prompt_tokens, self.teacher_completion_tokens, self.teacher_forward_tokens)


@dataclass(frozen=True)
class ArmResult:
    """One evaluated arm of one run: a line of metrics.json's `rows`."""

    arm: str
    label: str
    family: Family
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    interval: Interval
    diff: float | None
    mcnemar_p: float | None
    bootstrap_p: float | None
    cost: Cost
    losses: Path | None
    raw: Mapping[str, Any]

    @property
    def p_value(self) -> float | None:
        """The paired test against the student alone: exact McNemar, else the paired bootstrap."""
        return self.mcnemar_p if self.mcnemar_p is not None else self.bootstrap_p


@dataclass(frozen=True)
class Pair:
    """A paired comparison a run made between two of its arms on the same items (b minus a)."""

    a: str
    b: str
    n: int
    diff: float
    ci_low: float | None
    ci_high: float | None
    mcnemar_p: float | None
    bootstrap_p: float | None


@dataclass(frozen=True)
class Run:
    """One finished run (a folder with metrics.json)."""

    experiment: str
    folder: Path
    run_id: str
    method: str
    task: str
    student: str
    teacher: str | None
    seed: int | None
    models: Mapping[str, str]
    environment: Mapping[str, Any]
    identity: tuple[tuple[str, str], ...]  # config without seeds: equal identities are repeats of one variant
    arms: tuple[ArmResult, ...]
    pairs: tuple[Pair, ...]
    raw: Mapping[str, Any]

    def label_of(self, arm: str) -> str:
        return next((a.label for a in self.arms if a.arm == arm), arm)


def load_runs(results_dir: Path, experiment: str | None = None) -> dict[str, list[Run]]:
    """Finished runs per experiment, in folder order. Only complete runs have metrics.json (written last)."""
    runs: dict[str, list[Run]] = {}
    for metrics_file in sorted(Path(results_dir).glob("*/*/metrics.json")):
        name = metrics_file.parent.parent.name
        if experiment and name != experiment:
            continue
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        runs.setdefault(name, []).append(read_run(name, metrics_file.parent, metrics))
    return runs


def read_run(experiment: str, folder: Path, metrics: Mapping[str, Any]) -> Run:
    config = _read_config(folder)
    method = str(metrics.get("method") or _dig(config, "method", "name") or "")
    models = {str(role): str(model) for role, model in (metrics.get("models") or {}).items()}
    seed = metrics.get("seed", config.get("seed"))
    return Run(
        experiment=experiment, folder=folder, run_id=str(metrics.get("run_id") or folder.name), method=method,
        task=str(metrics.get("task") or _dig(config, "task", "name") or ""),
        student=_short_name(metrics.get("student_name") or _dig(config, "student", "name"), models.get("student")),
        teacher=(_short_name(metrics.get("teacher_name") or _dig(config, "teacher", "name"), models.get("teacher"))
                 if "teacher" in models or metrics.get("teacher_name") else None),
        seed=int(seed) if isinstance(seed, (int, float)) else None, models=models,
        environment=metrics.get("environment") or {}, identity=_identity(config, metrics),
        arms=tuple(_arm(method, folder, metrics, row) for row in metrics.get("rows", [])),
        pairs=tuple(_pair(pair) for pair in metrics.get("pairs", []) if "a" in pair and "b" in pair),
        raw=metrics)


def _arm(method: str, folder: Path, metrics: Mapping[str, Any], row: Mapping[str, Any]) -> ArmResult:
    arm = str(row["arm"])
    family = _family(row.get("family"), method, arm)
    losses = row.get("losses")
    if losses:
        losses_path: Path | None = Path(losses) if Path(losses).is_absolute() else folder / losses
    else:  # RP-KD runs from before `compare` kept each arm's curve at a fixed place
        legacy = folder / "artifacts" / arm / "losses.jsonl"
        losses_path = legacy if method == "rpkd" and "losses" not in row and legacy.exists() else None
    return ArmResult(
        arm=arm, label=str(row.get("label") or derive_label(method, arm, metrics)), family=family,
        n=int(row.get("n", 0)), accuracy=float(row["accuracy"]), ci_low=float(row.get("ci_low", row["accuracy"])),
        ci_high=float(row.get("ci_high", row["accuracy"])),
        # runs written before intervals were recorded used the percentile bootstrap
        interval=Interval(row.get("interval", Interval.BOOTSTRAP.value)),
        diff=_number(row.get("diff")), mcnemar_p=_number(row.get("mcnemar_p")),
        bootstrap_p=_number(row.get("bootstrap_p")),
        cost=Cost.from_dict(row["cost"]) if isinstance(row.get("cost"), Mapping) else legacy_cost(method, arm,
                                                                                                   metrics),
        losses=losses_path, raw=row)


def _pair(pair: Mapping[str, Any]) -> Pair:
    return Pair(a=str(pair["a"]), b=str(pair["b"]), n=int(pair.get("n", 0)), diff=float(pair["diff"]),
                ci_low=_number(pair.get("ci_low")), ci_high=_number(pair.get("ci_high")),
                mcnemar_p=_number(pair.get("mcnemar_p")), bootstrap_p=_number(pair.get("bootstrap_p")))


_PRIMING_NAMES = {"base": "Base", "teacher": "Teacher", "ground_truth": "Ground Truth", "confidence": "Confidence",
                  "custom": "Custom"}


def derive_label(method: str, arm: str, metrics: Mapping[str, Any]) -> str:
    """A display label for runs that did not write one, in the words `compare` uses for the same arms."""
    if arm in ("no_train", "base prompt", "student") or arm.startswith("student ("):
        return STUDENT_ALONE
    if arm.startswith("teacher (") or (method == "baseline" and arm == "teacher"):
        return "Teacher alone"
    if arm == "CD prompt":
        return "CD (learned prompt)"
    if arm == "gt_finetune":
        return "GT fine-tune"
    if method == "rpkd" and arm in _PRIMING_NAMES:
        signal = metrics.get("signal")
        return f"RP-KD {_PRIMING_NAMES[arm]}" + (f" ({signal})" if signal else "")
    return arm


def _family(recorded: Any, method: str, arm: str) -> Family:
    if recorded:
        try:
            return Family(recorded)
        except ValueError:
            return Family.OTHER
    if method == "baseline" or derive_label(method, arm, {}) == STUDENT_ALONE or arm == "gt_finetune":
        return Family.BASELINE
    return {"cd": Family.CD, "rpkd": Family.RPKD}.get(method, Family.OTHER)


def legacy_cost(method: str, arm: str, metrics: Mapping[str, Any]) -> Cost:
    """What runs before `compare` recorded about cost, read from where each method kept it."""
    evaluation: Mapping[str, Any] = {}
    if method == "baseline":
        evaluation = metrics.get("evaluation") or {}
    elif method == "cd":
        evaluation = metrics.get({"base prompt": "base_prompt", "CD prompt": "cd_prompt"}.get(arm, ""), {}) or {}
    elif method == "rpkd":
        evaluation = (metrics.get("arms") or {}).get(arm) or {}
    usage: Mapping[str, Any] = {}
    if method == "cd" and arm == "CD prompt":
        usage = metrics.get("teacher_usage") or {}
    elif method == "rpkd":  # each arm's priming usage (teacher_usage.json), recorded since cost per arm
        usage = (metrics.get("priming") or {}).get(arm) or {}
    training = ((metrics.get("training") or {}).get(arm) or {}) if method == "rpkd" else {}
    eval_s = [_number(evaluation.get(key)) for key in ("generation_s", "scoring_s")]
    return Cost(teacher_prompt_tokens=_number(usage.get("prompt_tokens")),
                teacher_completion_tokens=_number(usage.get("completion_tokens")),
                teacher_usd=_number(usage.get("cost_usd")), teacher_forward_tokens=_number(usage.get("forward_tokens")),
                teacher_cache_bytes=_number(usage.get("cache_bytes")), train_steps=_number(training.get("steps")),
                train_s=_number(training.get("train_s")),
                eval_completion_tokens=_number(evaluation.get("completion_tokens")),
                eval_s=None if all(s is None for s in eval_s) else sum(s or 0 for s in eval_s),
                stopped=str(usage["stopped"]) if usage.get("stopped") else None)


def _identity(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The run's settings without seeds, from config.yaml (else from metrics.json's top-level scalars)."""
    flat: dict[str, Any] = {}
    if config:
        _flatten("", {k: v for k, v in config.items() if k not in _NOT_IDENTITY}, flat)
        flat = {k: v for k, v in flat.items() if not any(k == p or k.startswith(f"{p}.") for p in identity_paths())}
    else:
        _flatten("", {k: v for k, v in metrics.items() if k not in _NOT_IDENTITY_METRICS
                      and (not isinstance(v, Mapping) or k == "models")}, flat)
        flat = {k: v for k, v in flat.items() if "." not in k or k.startswith("models.")}
    return tuple(sorted((key, json.dumps(value, sort_keys=True, default=str)) for key, value in flat.items()
                        if not is_seed_key(key)))


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    if not path.exists():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _dig(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _short_name(name: Any, model_id: str | None) -> str:
    """The config's short name (smollm2), else the model id without revision and backend prefix."""
    if name:
        return str(name)
    if not model_id:
        return ""
    return model_id.split("@")[0].split(":")[-1]


def _total(*parts: float | None) -> float | None:
    return None if all(p is None for p in parts) else sum(p or 0 for p in parts)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)
