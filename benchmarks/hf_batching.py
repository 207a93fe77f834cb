"""Batched vs one-at-a-time greedy generation with the HF backend, measured side by side in one run.

    .venv/bin/python benchmarks/hf_batching.py [--model embedded:smollm2-135m-instruct] [--prompts 16]

Uses real GSM8K test questions through the task's real chat prompt. Goal: batched >= 4x the tokens/s.
Also checks that batching does not change greedy outputs (left padding must be invisible to the model).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.config import ModelConfig, TaskConfig, use_job_environment
from bench.models.base import SamplingParams
from bench.models.hf import HFChatModel
from bench.tasks import make_task


def tokens_per_second(model: HFChatModel, requests, batch_size: int) -> tuple[float, list[str]]:
    model.batch_size = batch_size
    started = time.perf_counter()
    completions = model.generate(requests, progress=False)
    seconds = time.perf_counter() - started
    return sum(c.completion_tokens for c in completions) / seconds, [c.text for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_job_environment()  # BENCH_DATA_DIR as a `bench` run has it (conf/config.yaml)
    task = make_task(TaskConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main"))
    model = HFChatModel.from_config(ModelConfig(name="bench", backend="hf", model_id=args.model))
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    requests = [task.request(example, params=params) for example in task.examples("test", limit=args.prompts)]
    tokens_per_second(model, requests[:2], 2)  # warm-up
    single, single_texts = tokens_per_second(model, requests, 1)
    batched, batched_texts = tokens_per_second(model, requests, args.batch_size)
    same = sum(a == b for a, b in zip(single_texts, batched_texts))
    print(f"model {model.model_id}; {args.prompts} GSM8K prompts x {args.max_new_tokens} new tokens, greedy; "
          f"torch threads {torch.get_num_threads()}, device {model.device}")
    print(f"  one at a time      : {single:7.1f} tokens/s")
    print(f"  batches of {args.batch_size:<3}     : {batched:7.1f} tokens/s")
    print(f"  ratio              : {batched / single:7.2f}x  (goal >= 4x)")
    print(f"  identical outputs  : {same}/{len(requests)}")


if __name__ == "__main__":
    main()
