"""KD training step vs plain SFT step on the same batch, measured side by side in one run.

    .venv/bin/python benchmarks/kd_step.py [--model embedded:smollm2-135m-instruct] [--batch-size 1]

Both steps run the same LoRA student forward/backward/optimizer step on the same GSM8K batch; the KD step adds
the cached top-k teacher term (the teacher itself never runs during training). Goal: KD <= 1.3x SFT.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench.config import LoRAConfig, ModelConfig, TaskConfig, TrainConfig, use_job_environment
from bench.models.hf import load_model_and_tokenizer
from bench.tasks import make_task
from bench.training.kd import aligned_sequence, answer_ids
from bench.training.lora_trainer import LoRATrainer, TrainItem
from bench.training.priming import priming_for
from bench.training.teacher_logits import compute_topk


def step(trainer: LoRATrainer, items, teacher) -> float:
    started = time.perf_counter()
    loss, _, _ = trainer.batch_loss(items, teacher)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_job_environment()  # BENCH_DATA_DIR as a `bench` run has it (conf/config.yaml)
    task = make_task(TaskConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main"))
    examples = task.examples("train", limit=args.batch_size)
    config = ModelConfig(name="bench", backend="hf", model_id=args.model)
    model, tokenizer, model_id = load_model_and_tokenizer(config, torch.device("cpu"), torch.float32)
    items, teacher_sequences = [], {}
    for e in examples:
        answer = answer_ids(tokenizer, e.solution)
        items.append(TrainItem(e.id, aligned_sequence(tokenizer, task.user_message(e), answer, args.max_length)))
        teacher_sequences[e.id] = aligned_sequence(
            tokenizer, priming_for("ground_truth").apply(task.user_message(e)), answer,
            args.max_length + 128)
    teacher = compute_topk(model, teacher_sequences, args.top_k, pad_token_id=tokenizer.pad_token_id,
                           progress=False)
    teacher.entries = {i.example_id: tuple(t[: i.sequence.answer_length] for t in teacher[i.example_id])
                       for i in items}
    trainer = LoRATrainer(model, LoRAConfig(), TrainConfig(), temperature=5.94, alpha=0.609,
                          pad_token_id=tokenizer.pad_token_id, progress=False)
    trainer.model.train()
    step(trainer, items, None), step(trainer, items, teacher)  # warm-up
    sft, kd = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        sft.append(step(trainer, items, None))
        kd.append(step(trainer, items, teacher))
    tokens = sum(len(i.sequence.input_ids) for i in items)
    print(f"model {model_id}; LoRA r=4 on q/k/v/o; batch {args.batch_size} ({tokens} tokens); top-k {args.top_k}; "
          f"torch threads {torch.get_num_threads()}; median of {args.repeats}")
    print(f"  SFT step (CE only)          : {statistics.median(sft) * 1000:8.1f} ms")
    print(f"  KD step (CE + T^2 KL, top-k): {statistics.median(kd) * 1000:8.1f} ms")
    print(f"  ratio KD / SFT              : {statistics.median(kd) / statistics.median(sft):8.2f}x  (goal <= 1.3x)")


if __name__ == "__main__":
    main()
