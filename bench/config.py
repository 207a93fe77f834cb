"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Because conf/*.yaml files are validated against these dataclasses, a misspelt key (`task.limt=5`), a wrong type
(`task.limit=many`) or a value outside a field's choices (`logger.mode=offlin`) fails at composition time with
Hydra's own message, listing the choices, before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


class Choice(StrEnum):
    """A field with a fixed set of values. Member NAMES equal their values (lowercase) because OmegaConf matches a
    command-line value by name and writes an enum into config.yaml by name: so `logger.mode=offline` is what the user
    types, config.yaml and the run's identity hash read exactly as they did when these fields were plain strings,
    and code comparing a field to "offline" keeps working (a StrEnum is a str)."""


class LoggerMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class DType(Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class GenerationEngine(Choice):
    """How the hf backend decodes (bench/models/hf.py). Not part of a run's identity: it changes speed, not text
    (in exact arithmetic; bf16 rounding may differ, as it does between batch sizes)."""

    auto = "auto"  # static_compiled on CUDA, eager elsewhere
    eager = "eager"  # transformers' dynamic KV cache, no compilation
    static_compiled = "static_compiled"  # static KV cache + torch.compile'd decode step, shapes padded to buckets


class Sandbox(Choice):
    nsjail = "nsjail"
    none = "none"  # unsandboxed: an explicit opt-out that warns on every run


class MathMode(Choice):
    strict = "strict"
    flexible = "flexible"


class Selection(Choice):
    greedy = "greedy"
    independent = "independent"


class Merge(Choice):
    list = "list"
    teacher = "teacher"


class Acceptance(Choice):
    mcnemar = "mcnemar"
    gain = "gain"
    min_items = "min_items"


class Signal(Choice):
    published = "published"
    reference = "reference"
    primed_response = "primed_response"
    sequence = "sequence"
    token = "reference"  # the earlier name: an alias, so `signal=token` composes to (and is recorded as) reference


class KLDirection(Choice):
    reverse = "reverse"
    forward = "forward"


class TopKTail(Choice):
    renormalize = "renormalize"
    rest_bucket = "rest_bucket"


class Wording(Choice):
    published = "published"
    paraphrase = "paraphrase"


class Optimizer(Choice):
    sgd = "sgd"
    adamw = "adamw"


class Scheduler(Choice):
    none = "none"
    cosine = "cosine"


class Engine(Choice):
    vllm = "vllm"
    transformers = "transformers"  # `transformers serve`: CPU-friendly, no LoRA adapters


@dataclass
class TaskConfig:
    """Where a task's data comes from and how it is split and prompted."""

    name: str = MISSING  # humaneval | gsm8k | multiarith
    hub_id: str = MISSING  # public source, tried first (unless source=local or HF_HUB_OFFLINE=1)
    hub_config: str | None = None
    source: str = "auto"  # auto (hub, then local) | hub | local
    local_dir: str | None = None  # default: $BENCH_DATA_DIR (a run's default: conf/config.yaml hydra.job.env_set)
    seed: int = 1234  # seeds the train/validation/test split; recorded with the ids of every split
    validation_size: int = 0
    test_size: int | None = None  # tasks without an official test split carve one out of the pool
    eval_split: str = "test"  # the split `method=baseline` evaluates
    limit: int | None = None  # first N items of the evaluated split, for quick runs
    few_shot: int = 0  # worked examples from the train split, as earlier chat turns
    system_prompt: str = ""  # the thing Concept Distillation learns
    instruction: str = ""  # appended to each question (answer format)
    max_new_tokens: int = 512
    # Sampled evaluation for pass@k: `samples` completions per problem (1 = the model's own decoding, greedy by
    # default). samples > 1 needs temperature > 0, from here or from the model config.
    samples: int = 1
    temperature: float | None = None  # overrides the evaluated model's temperature in every evaluation
    top_p: float | None = None
    pass_k: list[int] = field(default_factory=lambda: [1, 5, 10])  # reported for every k <= samples


@dataclass
class ServerConfig:
    """An OpenAI-compatible server the harness starts for the run and stops at its end (bench/models/served.py).

    With an engine set, the server is started on first use on 127.0.0.1, serves `model_id` (and, when LoRA arms are
    evaluated, each adapter by name), and is stopped with its whole process group when the run ends, fails or is
    interrupted. How a model is served does not change what it computes, so `student.server`/`teacher.server` are
    left out of a run's identity. Always present (engine null = off) so the command line can switch it on:
    `student.backend=openai student.server.engine=transformers`."""

    engine: Engine | None = None  # null = no managed server (base_url is up already) | vllm | transformers
    # Extra engine flags, verbatim, e.g. [--tensor-parallel-size, "2", --max-model-len, "4096"]. The harness owns
    # the model, --host, --port, --dtype (from `dtype`), --revision and the LoRA/served-name flags: those are refused.
    args: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  # launcher; [] = `<engine> serve` beside Python, else on PATH
    port: int | None = None  # null = a free port
    startup_timeout_s: float = 600.0  # from launch until /v1/models lists every served name
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment, e.g. CUDA_VISIBLE_DEVICES
    # true: stopped whenever the run needs the GPU for something else (LoRA training; the server that evaluates
    # LoRA arms), and started again on next use; false: kept up, for a server on GPUs of its own (env above)
    yield_gpu: bool = True

    @property
    def managed(self) -> bool:
        return self.engine is not None


@dataclass
class ModelConfig:
    """A chat model served by one backend. Students and teachers use the same schema."""

    name: str = MISSING  # short name used in run ids and tables
    backend: str = MISSING  # a registered backend (bench/models/backends/): hf | openai | ...
    model_id: str = MISSING  # hub id, local folder, or API model name
    revision: str | None = None
    # hf backend
    gguf_file: str | None = None
    dtype: DType = DType.auto  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    # null = the whole model on `device`; auto (or balanced | sequential) shards a model too big for one GPU over
    # all visible GPUs (transformers' device_map, via accelerate) and ignores `device`. How, not what: not part of
    # the run's identity. Under a multi-process launch each rank trains a whole copy on its own GPU instead.
    device_map: str | None = None
    batch_size: int = 8
    generation_engine: GenerationEngine = GenerationEngine.auto  # auto | eager | static_compiled (not in identity)
    adapter_path: str | None = None  # LoRA adapter (peft) applied on top, e.g. a distilled student
    tiny: bool = False  # random small Llama with the SmolLM2 tokenizer: for tests and dry runs
    # openai backend
    base_url: str | None = None  # any OpenAI-compatible server (vLLM, `transformers serve`)
    server: ServerConfig = field(default_factory=ServerConfig)  # engine set: the harness serves model_id itself
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
    sandbox: Sandbox = Sandbox.nsjail  # nsjail | none (unsandboxed: explicit opt-out, warns on every run)
    workers: int | None = None  # parallel sandboxed programs; null = 4 x CPU count (at most 32)
    timeout_s: float = 10.0  # CPU seconds per program (its verdict's budget); wall limit 3x that x max(1, workers/CPUs)
    memory_mb: int = 1024
    math_mode: MathMode = MathMode.flexible  # headline extraction mode; both modes are always recorded


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "bench"
    entity: str | None = None
    mode: LoggerMode = LoggerMode.offline  # online | offline | disabled
    tags: list[str] = field(default_factory=list)


class CacheLayout(Choice):
    shared = "shared"  # one sqlite file (WAL): fast, for one machine or jobs on one node's local disk
    sharded = "sharded"  # append-only JSONL shards, one per process, read together: for network storage (NFS)


@dataclass
class CacheConfig:
    """The generation cache (bench/models/cache.py). `layout` decides how jobs share it: sqlite's locking and
    WAL shared memory are unreliable on network file systems, so jobs on several nodes writing one cache on NFS
    (a SLURM sweep) use `sharded`, which the conf/hydra/launcher/slurm_* presets select."""

    enabled: bool = True
    # shared: the sqlite file (default <user cache dir>/bench/generations.sqlite); sharded: the shards live in the
    # folder beside it named like it with the suffix .shards (default <user cache dir>/bench/generations.shards/)
    path: str | None = None
    # shared unless the environment says otherwise: a Hydra launcher preset cannot set a run setting (Hydra composes
    # its config before the run's), so the SLURM presets set BENCH_CACHE_LAYOUT=sharded in their jobs' environment
    # (hydra.job.env_set); `cache.layout=...` on the command line overrides both
    layout: CacheLayout = "${oc.env:BENCH_CACHE_LAYOUT,shared}"  # type: ignore[assignment]
    flush_every: int = 64  # misses generated and stored per chunk: a killed run loses at most this many


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
    # greedy (cumulative, in induction order) | independent (gain of each rule alone)
    selection: Selection = Selection.greedy
    # How a candidate rule earns its place on the validation items (cd_rules.judge): mcnemar (gain > 0 and a
    # one-sided exact McNemar p < acceptance_p on the items the two prompts disagree on) | gain (gain > min_gain:
    # one item can admit a rule) | min_items (wins - losses >= min_gain_items)
    acceptance: Acceptance = Acceptance.mcnemar
    acceptance_p: float = 0.05  # one-sided: only improvement can admit a rule (5 wins / 0 losses is the least)
    min_gain: float = 0.0  # acceptance=gain: kept only if validation accuracy rises by more than this
    min_gain_items: int = 3  # acceptance=min_items: net validation items won (3 = 5 points on 60 items)
    max_rules: int = 5
    validation_limit: int | None = None  # first N validation items (null = all)
    merge: Merge = Merge.list  # list (numbered rules under the base prompt) | teacher (teacher consolidates them)
    teacher_max_new_tokens: int = 512
    teacher_temperature: float = 0.0
    budget_usd: float | None = None  # stop induction cleanly once the teacher has cost this much
    budget_tokens: int | None = None  # ... or has read + written this many tokens (a budget local teachers share)
    prompt_from: str | None = None  # transfer: a CD run folder or a prompt file; skips learning


@dataclass
class LoRAConfig:
    r: int = 4  # repo defaults (alonso130r/knowledge-distillation)
    alpha: int = 8
    dropout: float = 0.1  # published for every arm but Base-KD (0.2): see RPKDConfig.lora_dropout_by_arm
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """Optimisation of the LoRA parameters (and only those). Defaults are the published RP-KD recipe."""

    optimizer: Optimizer = Optimizer.sgd  # sgd | adamw
    lr: float = 5e-6
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.01  # on the LoRA parameters, the only ones the optimizer holds
    # none (constant lr) | cosine: CosineAnnealingLR(T_max) stepped after EVERY optimizer step, eta_min 0. Past
    # T_max steps the rate climbs back up (cos is periodic), as published: 2 epochs of T_max = 2638 batch-1
    # steps anneal to 0 in epoch 1 and return to lr by the end of epoch 2.
    scheduler: Scheduler = Scheduler.cosine
    # null = the number of training items (published: len(train set)), i.e. one epoch of batch-1 steps. It is
    # a count of optimizer steps, so with batch_size * grad_accum > 1 an epoch has fewer steps than T_max.
    scheduler_t_max: int | None = None
    epochs: int = 2
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 256  # tokens of prompt + answer; longer examples are truncated from the answer's end
    max_grad_norm: float | None = None  # null = no clipping (published); a number clips the global grad norm
    save_every: int = 50  # optimizer steps between resumable checkpoints
    gradient_checkpointing: bool = False  # on GPU for long sequences
    seed: int = 0
    shuffle: bool = True  # a seeded reshuffle each epoch; false = dataset order every epoch (the public RP-KD code)


@dataclass
class RPKDConfig(MethodConfig):
    """Response-Priming KD. Every arm trains on the same items for the same steps with the same seed."""

    name: str = "rpkd"
    arms: list[str] = field(default_factory=lambda: ["no_train", "gt_finetune", "ground_truth"])
    priming: str | None = None  # one priming strategy instead of those in `arms` (baselines kept); for sweeps
    custom_priming: str | None = None  # text of the `custom` arm's priming prompt
    # published | reference | primed_response | sequence (bench/methods/response_priming.py; `token` = reference)
    signal: Signal = Signal.reference
    # published (the public code's strings, raw prefix) | paraphrase (ours)
    priming_wording: Wording = Wording.published
    top_k: int = 20  # teacher log-probs cached per answer position
    temperature: float = 5.942267335064758  # KD temperature T (repo value, from its Optuna search)
    alpha: float = 0.6093348343631224  # weight of cross-entropy; 1 - alpha weighs T^2 * KL (repo value)
    # reverse = KL(student||teacher) (published) | forward = KL(teacher||student)
    kl_direction: KLDirection = KLDirection.reverse
    # renormalize | rest_bucket: the mass outside the teacher's top-k (kd.kd_loss; measured in conf/method/rpkd.yaml)
    topk_tail: TopKTail = TopKTail.rest_bucket
    train_limit: int | None = 2638  # first N train items (repo: GSM8K train[:2638])
    filter_correct: bool = True  # sequence-level: keep only teacher solutions the scorer accepts
    teacher_token_budget: int | None = None  # stop priming an arm once the teacher read + wrote this many tokens
    teacher_batch_size: int = 4
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # arm -> LoRA dropout in place of lora.dropout for that arm (published: 0.2 for Base-KD, 0.1 for the rest)
    lora_dropout_by_arm: dict[str, float] = field(default_factory=lambda: {"base": 0.2})
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class OnPolicyConfig(MethodConfig):
    """On-policy distillation (bench/methods/onpolicy.py, through TRL's DistillationTrainer): the student samples
    answers, the teacher scores the student's own tokens, and the student's LoRA adapter learns to match the
    teacher's next-token distributions on them. `lora` and `train` are RP-KD's schemas, so both methods read the
    same LoRA and optimiser settings and count the same step budget on the same items."""

    name: str = "onpolicy"
    train_limit: int | None = 2638  # first N train items, as RP-KD's method.train_limit
    # Generalized JSD between the two next-token distributions: 0 = forward KL(teacher||student), 1 = reverse
    # KL(student||teacher) (TRL's default, and RP-KD's published direction), 0.5 = the symmetric JSD.
    beta: float = 1.0
    temperature: float = 1.0  # samples the student's rollouts AND softens both distributions in the divergence
    max_completion_length: int | None = None  # tokens per rollout; null = task.max_new_tokens (the test budget)
    # Share of training batches the student writes itself. TRL 1.16's stable DistillationTrainer is on-policy
    # only, so 1.0 is the one value accepted (bench/methods/onpolicy.py says where a mix would come from).
    on_policy_fraction: float = 1.0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class CompareConfig(MethodConfig):
    """CD vs RP-KD on the same test items (bench/methods/compare.py); `cd` and `rpkd` are the methods' own configs."""

    name: str = "compare"
    families: list[str] = field(default_factory=lambda: ["cd", "rpkd"])  # beside the student alone: cd, rpkd, onpolicy
    signals: list[str] = field(default_factory=lambda: ["reference"])  # RP-KD teacher signals, one sub-run each
    teacher_token_budget: int | None = None  # one teacher budget for CD's induction and each RP-KD arm's priming
    cd: CDConfig = field(default_factory=CDConfig)
    rpkd: RPKDConfig = field(default_factory=RPKDConfig)
    # its train items, LoRA and optimiser are taken from `rpkd` (equal terms); its own knobs: beta, temperature, ...
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)


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


def repo_path(relative: str = "") -> str:
    """`${repo_path:../shared/data}` in conf/: a path relative to this checkout (the folder holding conf/), made
    absolute and normalised, so it names the same folder whatever the working directory of the run."""
    return os.path.normpath(REPO_ROOT / relative)


def register_resolvers() -> None:
    """The resolvers conf/config.yaml uses beyond Hydra's and OmegaConf's own."""
    # conf/config.yaml's Hydra output folders end in the pid: two runs started in the same microsecond still differ.
    # Cached, so it is the pid of the process that composed the sweep: launchers that run jobs in other processes
    # (submitit, on other nodes) copy the sweep's resolver cache into each job, whose .hydra/ and log then land in
    # the sweep's folder instead of one named after the job's own pid.
    OmegaConf.register_new_resolver("pid", lambda: os.getpid(), replace=True, use_cache=True)
    OmegaConf.register_new_resolver("repo_path", repo_path, replace=True)


def job_environment() -> dict[str, str]:
    """The environment conf/config.yaml's `hydra.job.env_set` gives every job (BENCH_DATA_DIR: the task data
    folder), resolved as a job started now would see it.

    Hydra sets it only around a job it launches; scripts and tests that call the library directly (benchmarks/,
    configs composed in-process) read it here, so the default lives in one place, the application's config.
    """
    register_resolvers()
    env_set = OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.get("env_set") or {}
    return {str(key): str(value) for key, value in env_set.items()}


def use_job_environment() -> None:
    """Set each variable of `job_environment()` that the environment does not set already."""
    for key, value in job_environment().items():
        os.environ.setdefault(key, value)


def register_configs(store: ConfigStore | None = None) -> None:
    """Register the schemas so conf/*.yaml files are type-checked.

    They are stored outside every config group: a schema stored in a group (`method/rpkd_schema`) is listed as one
    of the group's options by `--help` and by shell completion, where it is no option to choose. The run schema
    types task, student, teacher, scoring and logger; each method's yaml extends its own schema by absolute name
    (`<name>_schema`), and the method options of the command line (`cd.<key>=...`, bench/cli.py) are validated
    against it."""
    store = store or ConfigStore.instance()
    register_resolvers()
    store.store(name="run_schema", node=RunConfig)
    from bench.methods import METHODS  # each registered method brings its schema (Method.config_class)

    for name, method in METHODS.items():
        store.store(name=f"{name}_schema", node=method.config_class)
