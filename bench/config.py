"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Because conf/*.yaml files are validated against these dataclasses, a misspelt key (`task.limt=5`) or a wrong type
(`task.limit=many`) fails at composition time with Hydra's own message, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TaskConfig:
    """Where a task's data comes from and how it is split and prompted."""

    name: str = MISSING  # humaneval | gsm8k | multiarith
    hub_id: str = MISSING  # public source, tried first (unless source=local or HF_HUB_OFFLINE=1)
    hub_config: str | None = None
    source: str = "auto"  # auto (hub, then local) | hub | local
    local_dir: str | None = None  # default: $BENCH_DATA_DIR, else ../shared/data when present
    seed: int = 1234  # seeds the train/validation/test split; recorded with the ids of every split
    validation_size: int = 0
    test_size: int | None = None  # tasks without an official test split carve one out of the pool
    eval_split: str = "test"  # the split `method=baseline` evaluates
    limit: int | None = None  # first N items of the evaluated split, for quick runs
    few_shot: int = 0  # worked examples from the train split, as earlier chat turns
    system_prompt: str = ""  # the thing Concept Distillation learns
    instruction: str = ""  # appended to each question (answer format)
    max_new_tokens: int = 512


@dataclass
class ModelConfig:
    """A chat model served by one backend. Students and teachers use the same schema."""

    name: str = MISSING  # short name used in run ids and tables
    backend: str = MISSING  # hf | openai
    model_id: str = MISSING  # hub id, local folder, or API model name
    revision: str | None = None
    # hf backend
    gguf_file: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    batch_size: int = 8
    adapter_path: str | None = None  # LoRA adapter (peft) applied on top, e.g. a distilled student
    tiny: bool = False  # random small Llama with the SmolLM2 tokenizer: for tests and dry runs
    # openai backend
    base_url: str | None = None  # any OpenAI-compatible server (vLLM, `transformers serve`)
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    request_timeout_s: float = 120.0
    price_input_per_mtok: float = 0.0  # USD per million tokens, for cost accounting
    price_output_per_mtok: float = 0.0
    # sampling defaults for this model
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class ScoringConfig:
    sandbox: str = "nsjail"  # nsjail | none (unsandboxed: explicit opt-out, warns on every run)
    workers: int | None = None  # parallel programs; default CPU count + 1
    timeout_s: float = 10.0
    memory_mb: int = 1024
    math_mode: str = "flexible"  # headline extraction mode; both modes are always recorded


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "bench"
    entity: str | None = None
    mode: str = "offline"  # online | offline | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class CacheConfig:
    enabled: bool = True
    path: str | None = None  # default: <user cache dir>/bench/generations.sqlite


@dataclass
class MethodConfig:
    name: str = MISSING


@dataclass
class BaselineConfig(MethodConfig):
    name: str = "baseline"
    model: str = "student"  # which model to evaluate: student | teacher


@dataclass
class CDConfig(MethodConfig):
    """Concept Distillation. The paper leaves these choices open; defaults are documented in conf/method/cd.yaml."""

    name: str = "cd"
    base_prompt: str | None = None  # null = task.system_prompt
    train_sample: int = 64  # train items the student answers in initialization
    max_mistakes: int = 16  # mistakes passed to the teacher
    mistakes_per_call: int = 4  # mistakes shown to the teacher in one induction request
    rules_per_call: int = 3  # most rules accepted from one teacher reply
    calls_per_round: int = 4  # induction requests sent together; the budget is checked between rounds
    malformed_retries: int = 2  # re-asks (new seed) when a teacher reply has no parseable rules
    dedup_similarity: float = 0.85  # rules this similar (difflib ratio, normalised text) count as duplicates
    selection: str = "greedy"  # greedy (cumulative, in induction order) | independent (gain of each rule alone)
    min_gain: float = 0.0  # a rule is kept only if validation accuracy rises by more than this
    max_rules: int = 5
    validation_limit: int | None = None  # first N validation items (null = all)
    merge: str = "list"  # list (numbered rules under the base prompt) | teacher (teacher consolidates them)
    teacher_max_new_tokens: int = 512
    teacher_temperature: float = 0.0
    budget_usd: float | None = None  # stop induction cleanly once the teacher has cost this much
    prompt_from: str | None = None  # transfer: a CD run folder or a prompt file; skips learning


@dataclass
class RunConfig:
    method: Any = MISSING
    task: TaskConfig = MISSING
    student: ModelConfig = MISSING
    teacher: ModelConfig = MISSING
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    experiment: str = "default"  # results/<experiment>/<run>/
    run_name: str | None = None  # default: derived from method, task, student, teacher and time
    results_dir: str = "results"
    seed: int = 0
    resume: bool = True  # reuse finished phases/artifacts of a run folder with the same name


def register_configs(store: ConfigStore | None = None) -> None:
    """Register schemas so conf/*.yaml files are type-checked (each yaml names its schema in its defaults)."""
    store = store or ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="task", name="task_schema", node=TaskConfig)
    store.store(group="student", name="model_schema", node=ModelConfig)
    store.store(group="teacher", name="model_schema", node=ModelConfig)
    store.store(group="scoring", name="scoring_schema", node=ScoringConfig)
    store.store(group="logger", name="logger_schema", node=LoggerConfig)
    store.store(group="method", name="baseline_schema", node=BaselineConfig)
    store.store(group="method", name="cd_schema", node=CDConfig)
