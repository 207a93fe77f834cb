"""Local transformers backend: batched chat generation with left padding, and log-prob access for KD.

Batching is where CPU throughput comes from (REFERENCE.md: 8-prompt left-padded batches give ~3.4x the tokens/s
of one prompt at a time), so requests are grouped by identical sampling parameters and sorted by prompt length
before batching — similar lengths waste less compute on padding — then returned in request order.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from bench.config import ModelConfig
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
    """Never stops anything: called once per decode step, it moves the progress bar inside the batch."""

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

    def __init__(self, model, tokenizer, model_id: str, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self._model_id = model_id
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config: ModelConfig) -> HFChatModel:
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model, tokenizer, model_id = load_model_and_tokenizer(config, device, dtype)
        return cls(model, tokenizer, model_id, batch_size=config.batch_size)

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
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(self.device)
        generation_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=not params.greedy,
        )
        if not params.greedy:
            generation_kwargs.update(temperature=params.temperature, top_p=params.top_p)
            torch.manual_seed(params.seed)  # sampled text depends on the seed *and* the batch it was drawn in
        else:  # silence generation_config sampling defaults that do not apply to greedy decoding
            generation_kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            generation_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if progress is not None and progress.enabled:
            generation_kwargs["stopping_criteria"] = StoppingCriteriaList([_ReportSteps(progress)])
        output = self.model.generate(**encoded, **generation_kwargs)
        new_tokens = output[:, encoded.input_ids.shape[1]:]
        latency = (time.perf_counter() - started) / len(prompts)
        eos_ids = self._eos_ids()
        completions = []
        for row in range(len(prompts)):
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

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids
