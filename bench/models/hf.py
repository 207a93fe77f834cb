"""Local transformers backend: batched chat generation with left padding, and log-prob access for KD.

Batching is where CPU throughput comes from (REFERENCE.md: 8-prompt left-padded batches give ~3.4x the tokens/s
of one prompt at a time), so requests are grouped by identical sampling parameters and sorted by prompt length
before batching — similar lengths waste less compute on padding — then returned in request order.

On a GPU the decode step of a small model is launch-bound, not bandwidth-bound (H200, bf16, batch 64: 17.9 ms per
step for SmolLM2-135M's shape against a 0.06 ms HBM floor), so the `static_compiled` engine — the default on CUDA —
decodes with a static KV cache and a torch.compile'd forward (CUDA graphs), as `generate` does at 4.1 ms per step
there (benchmarks/gpu_generation.py prints both side by side). A compiled graph
is specialised to its shapes, so batches are padded to a few bucket shapes (ShapeBuckets) to reuse graphs instead
of recompiling per batch. If compilation fails the model warns once and decodes eagerly from then on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from transformers import CompileConfig, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from bench.config import GenerationEngine, ModelConfig
from bench.models import embedded
from bench.models.base import Completion, GenerationRequest, SamplingParams
from bench.models.progress import GenerationProgress, progress_for

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available on this machine; use device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there), bf16 on GPUs that support it."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def resolve_engine(name: str, device: torch.device) -> GenerationEngine:
    """`auto` compiles only on CUDA, where it was measured faster (4.4x tokens/s at SmolLM2-135M's shape, 2.4x at
    1.1B on an H200); on CPU, compilation costs a C++ build per shape and the decode step is compute-bound anyway."""
    try:
        engine = GenerationEngine(name)
    except ValueError:
        raise ValueError(f"unknown generation_engine {name!r}; expected one of "
                         f"{[e.value for e in GenerationEngine]}") from None
    if engine is GenerationEngine.auto:
        return GenerationEngine.static_compiled if device.type == "cuda" else GenerationEngine.eager
    return engine


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class ShapeBuckets:
    """The few shapes every batch is padded to, so a compiled decode graph is reused rather than recompiled.

    The decode graph is specialised to the batch's rows and the static cache's length: rows are padded to the
    model's batch_size (the last, short batch of a run gets filler rows, dropped afterwards), prompts are
    left-padded to a multiple of `prompt_multiple` tokens, and the cache is sized to a multiple of `cache_multiple`.
    Left padding is masked out and rows do not see each other, so greedy text does not change (identical in fp32
    on CPU, tests/models/test_hf.py; bf16 on a GPU may round differently, as it does between batch sizes).
    """

    prompt_multiple: int = 64
    cache_multiple: int = 256

    def __post_init__(self) -> None:
        if self.prompt_multiple < 1 or self.cache_multiple < 1:
            raise ValueError(f"bucket multiples must be >= 1, got {self}")

    def cache_length(self, prompt_tokens: int, max_new_tokens: int) -> int:
        return _round_up(prompt_tokens + max_new_tokens, self.cache_multiple)


@cache
def _generate_accepts_max_cache_len() -> bool:
    """`max_cache_len` (a static cache sized apart from max_length) is recent in transformers 5.x, and a release
    without it rejects the unknown generate kwarg; there the bucketed prompt length alone keeps the cache to a few
    sizes (prompt bucket + max_new_tokens)."""
    return hasattr(GenerationConfig(), "max_cache_len")


def _compile_config(backend: str | Callable, device: torch.device) -> CompileConfig:
    """transformers' default (inductor, mode reduce-overhead: CUDA graphs) for inductor; other backends (`eager`
    in tests: dynamo's capture without code generation) take no mode. Off CUDA, transformers compiles only when
    told `_compile_all_devices` — an explicit `static_compiled` on CPU asks for exactly that."""
    config = CompileConfig(backend=backend) if backend == "inductor" else CompileConfig(backend=backend, mode=None)
    if device.type != "cuda":
        config._compile_all_devices = True
    return config


def _adapter_fingerprint(path: Path) -> str:
    """Hash of the adapter weights, so a retrained adapter at the same path never hits stale cache entries."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("adapter_model.*")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _local_path_or_hub_id(config: ModelConfig) -> str | Path:
    """A model_id written as a path (/…, ./…, ../…, ~/…) must exist: transformers would otherwise read it as a hub
    id and answer "Repo id must be in the form 'repo_name' or 'namespace/repo_name'", which names neither problem."""
    model_id = config.model_id
    if not model_id.startswith(("/", "./", "../", "~")):
        return model_id
    path = Path(model_id).expanduser()
    if not path.is_dir():
        state = "is a file, not a model folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"model {config.name!r} (model_id): the local model folder {path} {state}; give a folder "
                                "holding config.json and the weights, or a hub id such as 'org/name'")
    return path


def load_model_and_tokenizer(config: ModelConfig, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, model_id) for a hub id, a local folder, a GGUF file or one of the embedded models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = False  # by from_pretrained's device_map, across GPUs: then not moved onto `device`
    if config.tiny or config.model_id == embedded.TINY:
        model, tokenizer = embedded.build_tiny_llama(seed=config.seed)
        model_id = f"{embedded.TINY}@seed{config.seed}"
    else:
        source: str | Path = config.model_id
        model_id = config.model_id
        if config.model_id == embedded.SMOLLM2:
            source = embedded.smollm2_folder()
            model_id = f"{embedded.SMOLLM2}@{embedded.smollm2_version()}"
        else:
            source = _local_path_or_hub_id(config)
        kwargs = {"revision": config.revision} if config.revision else {}
        if config.gguf_file:
            kwargs["gguf_file"] = config.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        placed = config.device_map is not None
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, **kwargs, **({"device_map": config.device_map} if placed else {}))
        if config.revision:
            model_id += f"@{config.revision}"
    if not placed:
        model = model.to(device=device, dtype=dtype)
    if config.adapter_path:
        from peft import PeftModel

        adapter = Path(config.adapter_path)
        if not (adapter / "adapter_config.json").exists():
            raise FileNotFoundError(f"no LoRA adapter at {adapter} (expected adapter_config.json there)")
        model = PeftModel.from_pretrained(model, adapter)
        model_id += f"+lora:{_adapter_fingerprint(adapter)}"
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batched generation continues from the right edge
    return model, tokenizer, model_id


def _truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((index for stop in stops if (index := text.find(stop)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _ReportSteps(StoppingCriteria):
    """Never stops anything: called once per decode step, it moves the progress bar inside the batch.

    Works unchanged with the static_compiled engine: transformers compiles only the model's forward, and calls
    stopping criteria from its Python decode loop after each step; on CUDA that loop already waits for the step
    (to test for EOS), so the pace the bar measures is the device's, not the kernel launches'."""

    def __init__(self, progress: GenerationProgress) -> None:
        self.progress = progress
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.steps += 1
        self.progress.step(self.steps)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFChatModel:
    """A transformers causal LM behind the ChatModel protocol (backend "hf")."""

    backend = "hf"

    def __init__(self, model, tokenizer, model_id: str, batch_size: int = 8, engine: str = "auto",
                 buckets: ShapeBuckets | None = None, compile_backend: str | Callable = "inductor") -> None:
        """`engine`: auto | eager | static_compiled (resolve_engine). `buckets`: the padded shapes; default
        ShapeBuckets() for static_compiled, none for eager (padding would only cost compute there)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self._model_id = model_id
        self.batch_size = batch_size
        self.engine = resolve_engine(engine, self.device)
        compiled = self.engine is GenerationEngine.static_compiled
        self.buckets = buckets if buckets is not None else ShapeBuckets() if compiled else None
        self.compile_config = _compile_config(compile_backend, self.device)
        if compiled and self.device.type != "cuda":
            logger.info("generation_engine=static_compiled on %s: compiling there is slow to start and rarely "
                        "faster than eager (auto picks eager off CUDA)", self.device)

    @classmethod
    def from_config(cls, config: ModelConfig) -> HFChatModel:
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model, tokenizer, model_id = load_model_and_tokenizer(config, device, dtype)
        return cls(model, tokenizer, model_id, batch_size=config.batch_size, engine=config.generation_engine)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_text(self, request: GenerationRequest) -> str:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: bool | GenerationProgress = True) -> list[Completion]:
        prompts = [self.prompt_text(request) for request in requests]
        results: list[Completion | None] = [None] * len(requests)
        bar, owned = progress_for(progress, len(requests), f"generate {self.model_id[:40]}")
        try:
            for batch in self._batches(requests, prompts):
                params = requests[batch[0]].params
                bar.start_batch(len(batch), params.max_new_tokens)
                for index, completion in zip(batch, self._generate_batch([prompts[i] for i in batch], params, bar)):
                    results[index] = completion
                    bar.completed(index, completion)
        finally:
            if owned:
                bar.close()
        return [result for result in results if result is not None]

    def _batches(self, requests: Sequence[GenerationRequest], prompts: list[str]) -> list[list[int]]:
        """Request indexes in batches of at most batch_size with identical sampling params, longest prompts first
        (an out-of-memory error then shows up on the first batch, and similar lengths pad together)."""
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: (repr(requests[i].params), -lengths[i]))
        batches: list[list[int]] = []
        for index in order:
            if (batches and len(batches[-1]) < self.batch_size
                    and requests[batches[-1][0]].params == requests[index].params):
                batches[-1].append(index)
            else:
                batches.append([index])
        return batches

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str], params: SamplingParams,
                        progress: GenerationProgress | None = None) -> list[Completion]:
        started = time.perf_counter()
        encoded = self._encode(prompts)
        output = self._decode(encoded, params, progress)
        new_tokens = output[:, encoded.input_ids.shape[1]:]
        latency = (time.perf_counter() - started) / len(prompts)
        eos_ids = self._eos_ids()
        completions = []
        for row in range(len(prompts)):  # filler rows (ShapeBuckets) come after the real ones and are dropped
            texts, generated, finish = [], 0, "stop"
            for sample in range(params.n):
                tokens = new_tokens[row * params.n + sample].tolist()
                end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if end is None else tokens[:end]
                text, stopped = _truncate_at_stop(self.tokenizer.decode(kept, skip_special_tokens=True), params.stop)
                if end is None and not stopped and len(kept) >= params.max_new_tokens:
                    finish = "length"
                texts.append(text)
                generated += len(kept)
            prompt_tokens = int(encoded.attention_mask[row].sum())
            completions.append(Completion(tuple(texts), prompt_tokens, generated, finish, latency))
        return completions

    def _encode(self, prompts: list[str]):
        """Left-padded token ids on the model's device; with buckets, padded to a bucket length and to batch_size
        rows (copies of the first prompt, which is the longest: fillers never lengthen the batch). Sampled draws
        then follow the padded batch, as they already follow the batch's composition."""
        rows, multiple = list(prompts), None
        if self.buckets is not None:
            rows += [prompts[0]] * (self.batch_size - len(prompts))
            multiple = self.buckets.prompt_multiple
        encoded = self.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False,
                                 pad_to_multiple_of=multiple)
        return encoded.to(self.device)

    def _decode(self, encoded, params: SamplingParams, progress: GenerationProgress | None) -> torch.Tensor:
        """`generate` on the current engine; a static_compiled failure switches this model to eager for good (one
        warning), then decodes the batch again eagerly — an error eager decoding shares is raised from there."""
        if self.engine is GenerationEngine.static_compiled:
            try:
                return self._generate_once(encoded, params, progress, self._static_kwargs(encoded, params))
            except Exception as error:  # compilation fails in many ways (dynamo, inductor, triton, CUDA graphs)
                self._fall_back_to_eager(error)
        return self._generate_once(encoded, params, progress, {})

    def _static_kwargs(self, encoded, params: SamplingParams) -> dict:
        kwargs: dict = dict(cache_implementation="static", compile_config=self.compile_config)
        if self.buckets is not None and _generate_accepts_max_cache_len():
            kwargs["max_cache_len"] = self.buckets.cache_length(encoded.input_ids.shape[1], params.max_new_tokens)
        return kwargs

    def _fall_back_to_eager(self, error: Exception) -> None:
        logger.warning("%s: static-cache compiled generation failed (%s: %s); decoding eagerly from now on "
                       "(generation_engine=eager skips the attempt)", self.model_id, type(error).__name__,
                       " ".join(str(error).split())[:300] or "no message")
        self.engine = GenerationEngine.eager
        self.buckets = None

    def _generate_once(self, encoded, params: SamplingParams, progress: GenerationProgress | None,
                       engine_kwargs: dict) -> torch.Tensor:
        generation_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=not params.greedy,
            **engine_kwargs,
        )
        if not params.greedy:
            generation_kwargs.update(temperature=params.temperature, top_p=params.top_p)
            torch.manual_seed(params.seed)  # sampled text depends on the seed *and* the batch it was drawn in
        else:  # silence generation_config sampling defaults that do not apply to greedy decoding
            generation_kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            generation_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if progress is not None and progress.enabled:  # a fresh counter: a retried batch restarts at step 1
            generation_kwargs["stopping_criteria"] = StoppingCriteriaList([_ReportSteps(progress)])
        return self.model.generate(**encoded, **generation_kwargs)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids
