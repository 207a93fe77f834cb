"""Everything a method needs for one run, built once from the resolved config: task, models, store, tracker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.config import CacheConfig, ModelConfig, ScoringConfig
from bench.evaluation import EvalResult, evaluate
from bench.models import build_model
from bench.models.base import ChatModel, SamplingParams
from bench.tasks.base import Example, Task
from bench.tracking import RunStore, Tracker

logger = logging.getLogger(__name__)

ROLES = ("student", "teacher")


def make_checker(kind: str, scoring: ScoringConfig):
    """The scorer a task kind needs, built from the scoring config (sandbox backend, limits, workers)."""
    if kind == "math":
        from bench.scoring.math import MathChecker

        return MathChecker(scoring.math_mode)  # type: ignore[arg-type]
    if kind == "code":
        from bench.scoring.code import CodeChecker, CodeExecutor
        from bench.scoring.sandbox import SandboxLimits, make_sandbox

        # timeout_s is a CPU budget, so a verdict does not depend on how many sandboxes share the cores; the wall
        # limit only catches programs that sleep or block, and the executor stretches it by its pool's load.
        # (The multiple is not a config key: a new key would change every run's identity hash and so the name of
        # every results folder that resumes today.)
        limits = SandboxLimits(cpu_time_s=scoring.timeout_s, memory_mb=scoring.memory_mb)
        executor = CodeExecutor(make_sandbox(scoring.sandbox), limits)
        if scoring.workers is not None:
            executor.workers = scoring.workers
        return CodeChecker(executor)
    raise ValueError(f"no checker for task kind {kind!r}")


def model_config(config: DictConfig, role: str) -> ModelConfig:
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
    return OmegaConf.to_object(config[role])  # type: ignore[return-value]


@dataclass
class RunContext:
    config: DictConfig
    task: Task
    store: RunStore
    tracker: Tracker
    run_id: str
    progress: bool = True
    _models: dict[str, ChatModel] = field(default_factory=dict)

    def model_config(self, role: str) -> ModelConfig:
        return model_config(self.config, role)

    def model(self, role: str) -> ChatModel:
        """The student or teacher, built on first use (and shared when both name the same model)."""
        if role not in self._models:
            config = self.model_config(role)
            other = next((r for r in ROLES if r != role and r in self._models
                          and self.model_config(r) == config), None)
            cache: CacheConfig = OmegaConf.to_object(self.config.cache)  # type: ignore[assignment]
            self._models[role] = self._models[other] if other else build_model(config, cache)
            logger.info("%s: %s (%s backend)", role, self._models[role].model_id, self._models[role].backend)
        return self._models[role]

    def set_model(self, role: str, model: ChatModel) -> None:
        """Replace a role's model, e.g. the student with a LoRA-distilled copy for evaluation."""
        self._models[role] = model

    def sampling(self, role: str, max_new_tokens: int | None = None, **overrides: Any) -> SamplingParams:
        config = self.model_config(role)
        return SamplingParams(max_new_tokens=max_new_tokens or self.config.task.max_new_tokens,
                              temperature=overrides.pop("temperature", config.temperature),
                              top_p=overrides.pop("top_p", config.top_p),
                              seed=overrides.pop("seed", config.seed), **overrides)

    def evaluation_sampling(self, role: str) -> SamplingParams:
        """How `role` is sampled in evaluations: its own decoding, unless the task asks for n samples per item
        (pass@k) at its own temperature/top_p. Called before any work, so a bad combination fails early."""
        task = self.config.task
        overrides: dict[str, Any] = {"n": task.samples}
        if task.temperature is not None:
            overrides["temperature"] = task.temperature
        if task.top_p is not None:
            overrides["top_p"] = task.top_p
        try:
            return self.sampling(role, **overrides)
        except ValueError as error:
            raise ValueError(f"evaluation sampling of the {role} ({self.model_config(role).name}) is invalid: "
                             f"{error}. For pass@k with task.samples={task.samples}, set task.temperature "
                             "(e.g. task.temperature=0.8).") from error

    def evaluate(self, model: ChatModel, examples: Sequence[Example], *, split: str, name: str,
                 system_prompt: str | None = None, role: str = "student", save: bool = True) -> EvalResult:
        """Evaluate, write `samples/<name>.jsonl` + `metrics/<name>.json`, log to the tracker."""
        logger.info("%s: generating and scoring %d %s items with %s", name, len(examples), split, model.model_id)
        result = evaluate(self.task, model, examples, run_id=self.run_id, split=split, name=name,
                          system_prompt=system_prompt, params=self.evaluation_sampling(role), progress=self.progress,
                          pass_k=tuple(self.config.task.pass_k))
        if save:
            self.store.write_jsonl(f"samples/{name}.jsonl", (s.to_dict() for s in result.samples))
            self.store.write_json(f"metrics/{name}.json", result.metrics)
            self.tracker.log({name: result.metrics})
            self.tracker.log_samples(name, [s.to_dict() for s in result.samples])
        accuracy = result.metrics["accuracy"]
        logger.info("%s on %s (n=%d): accuracy %.3f [%.3f, %.3f]", name, split, result.metrics["n"],
                    accuracy["mean"], accuracy["ci_low"], accuracy["ci_high"])
        return result
