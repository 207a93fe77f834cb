"""Everything a method needs for one run, built once from the resolved config: task, models, store, tracker."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.config import CacheConfig, ModelConfig
from bench.evaluation import EvalResult, evaluate
from bench.models import build_model, with_cache
from bench.models.base import ChatModel, SamplingParams
from bench.tasks.base import Example, Task
from bench.tracking import RunStore, Tracker

logger = logging.getLogger(__name__)

ROLES = ("student", "teacher")


@dataclass(frozen=True)
class LocalLM:
    """A model running in this process, with its tokenizer: what teacher-forced KD reads logits from."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any


@dataclass
class RunContext:
    """What a method may use, typed and by name: the task and its items, the student and teacher (built on first
    use), their sampling, the run's store and tracker, its seed. Methods never read the raw config."""

    task: Task
    store: RunStore
    tracker: Tracker
    run_id: str
    model_configs: Mapping[str, ModelConfig]  # the roles the method uses
    cache: CacheConfig = field(default_factory=CacheConfig)
    seed: int = 0
    progress: bool = True
    _models: dict[str, ChatModel] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: DictConfig, roles: Sequence[str], *, task: Task, store: RunStore, tracker: Tracker,
                    run_id: str, progress: bool = True) -> RunContext:
        """The context of a composed run config, its model configs typed once (only the roles the method uses: an
        unused role may be left incomplete, e.g. teacher=openai_compatible without a model_id)."""
        for role in roles:
            if role not in ROLES:
                raise ValueError(f"unknown model role {role!r}; expected one of {ROLES}")
        return cls(task=task, store=store, tracker=tracker, run_id=run_id,
                   model_configs={role: OmegaConf.to_object(config[role]) for role in roles},  # type: ignore[misc]
                   cache=OmegaConf.to_object(config.cache), seed=int(config.seed),  # type: ignore[arg-type]
                   progress=progress)

    # ------------------------------------------------------------------ task items
    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        """The first `limit` items of `split` (all with None)."""
        return self.task.examples(split, limit=limit)

    def test_examples(self) -> tuple[str, list[Example]]:
        """(split, items) every arm is evaluated on: task.eval_split, its first task.limit items."""
        split = self.task.config.eval_split
        return split, self.task.examples(split, limit=self.task.config.limit)

    # ------------------------------------------------------------------ models
    def model_config(self, role: str) -> ModelConfig:
        if role not in self.model_configs:
            raise ValueError(f"this method did not declare the {role} among its roles "
                             f"({', '.join(self.model_configs) or 'none'}): add it to the method's `roles`")
        return self.model_configs[role]

    @property
    def student(self) -> ChatModel:
        return self.model("student")

    @property
    def teacher(self) -> ChatModel:
        return self.model("teacher")

    def model(self, role: str) -> ChatModel:
        """The student or teacher, built on first use (and shared when both name the same model)."""
        if role not in self._models:
            config = self.model_config(role)
            other = next((r for r in ROLES if r != role and r in self._models
                          and self.model_config(r) == config), None)
            self._models[role] = self._models[other] if other else build_model(
                config, self.cache, server_log=self.store.path(f"logs/server-{role}.log"))
            logger.info("%s: %s (%s backend)", role, self._models[role].model_id, self._models[role].backend)
        return self._models[role]

    def tokenizer(self, role: str) -> Any:
        """`role`'s tokenizer: the in-process model's, or that of the weights a managed server runs."""
        model = self.model(role)
        tokenizer = getattr(getattr(model, "inner", model), "tokenizer", None)  # behind the generation cache
        if tokenizer is None:
            config = self.model_config(role)
            raise ValueError(f"the {role} {config.name!r} (backend={config.backend}) has no tokenizer at hand: its "
                             "weights are not on this machine; use backend=hf, or a server.engine the harness runs")
        return tokenizer

    def local_lm(self, role: str) -> LocalLM:
        """`role`'s in-process model and tokenizer (backend=hf), for reading its logits; a clear error otherwise."""
        config = self.model_config(role)
        model = self.model(role)
        inner = getattr(model, "inner", model)  # behind the generation cache
        if config.backend != "hf" or config.server.managed or not hasattr(inner, "tokenizer"):
            raise ValueError(f"the {role} {config.name!r} runs outside this process (backend={config.backend}"
                             f"{', server.engine=' + str(config.server.engine) if config.server.managed else ''}): "
                             "its logits and tokenizer are not at hand; use backend=hf for it")
        return LocalLM(inner.model, inner.tokenizer)

    @contextmanager
    def adapter_models(self, role: str, adapters: Mapping[str, str | None]) -> Iterator[Callable[[str], ChatModel]]:
        """`model_for(key)`: `role`'s model with the LoRA adapter at `adapters[key]` applied (None: the model as
        configured). In-process backends load one at a time. A served model (server.engine) gets ONE server for
        all of them, each adapter served by its key, so every arm is answered by the same engine; it is stopped
        when the block ends, also on errors and Ctrl-C, and the run's other servers that yield the GPU are
        stopped before it starts."""
        config = self.model_config(role)
        cache = self.cache
        if not config.server.managed:
            yield lambda key: self.model(role) if adapters[key] is None else build_model(
                dataclasses.replace(config, adapter_path=adapters[key]), cache)
            return
        from bench.models.served import ServedModel

        served = ServedModel(config, {key: path for key, path in adapters.items() if path is not None},
                             log_path=self.store.path(f"logs/server-{role}-adapters.log"))
        self.yield_gpu()
        with served:
            yield lambda key: with_cache(served.chat_model(key if adapters[key] is not None else None), cache)

    def yield_gpu(self) -> None:
        """Stop the run's managed servers whose server.yield_gpu is set, before something else needs the GPU
        (LoRA training, another server); each starts again at its model's next request."""
        self._stop_servers(lambda config: config.server.yield_gpu)

    def stop_servers(self) -> None:
        """Stop every managed server this run started (the run's end, also after errors and Ctrl-C)."""
        self._stop_servers(lambda config: True)

    def _stop_servers(self, which: Callable[[ModelConfig], bool]) -> None:
        stopped: set[int] = set()
        for role, model in self._models.items():
            stop = getattr(model, "stop_server", None)  # served models (and the cache wrapper around any model)
            if stop is not None and id(model) not in stopped and which(self.model_config(role)):
                stopped.add(id(model))
                stop()

    def sampling(self, role: str, max_new_tokens: int | None = None, **overrides: Any) -> SamplingParams:
        config = self.model_config(role)
        return SamplingParams(max_new_tokens=max_new_tokens or self.task.config.max_new_tokens,
                              temperature=overrides.pop("temperature", config.temperature),
                              top_p=overrides.pop("top_p", config.top_p),
                              seed=overrides.pop("seed", config.seed), **overrides)

    def evaluation_sampling(self, role: str) -> SamplingParams:
        """How `role` is sampled in evaluations: its own decoding, unless the task asks for n samples per item
        (pass@k) at its own temperature/top_p. Called before any work, so a bad combination fails early."""
        task = self.task.config
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
                          pass_k=tuple(self.task.config.pass_k))
        if save:
            self.store.write_jsonl(f"samples/{name}.jsonl", (s.to_dict() for s in result.samples))
            self.store.write_json(f"metrics/{name}.json", result.metrics)
            self.tracker.log({name: result.metrics})
            self.tracker.log_samples(name, [s.to_dict() for s in result.samples])
        accuracy = result.metrics["accuracy"]
        logger.info("%s on %s (n=%d): accuracy %.3f [%.3f, %.3f]", name, split, result.metrics["n"],
                    accuracy["mean"], accuracy["ci_low"], accuracy["ci_high"])
        return result
