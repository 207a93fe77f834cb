"""What the paper-sized presets cost on one GPU: the harness's own RP-KD code paths at Llama-3.1-8B's shape.

    python benchmarks/gpu_scale.py [--shape llama8b|smol] [--out results.json]

Builds a random-init model of the shape on the GPU (random weights are right for time and memory, not accuracy),
then times, side by side in one run, with this harness's code (bench.training):
  - a LoRA training step at batch 1 (the published recipe): CE only (GT fine-tune), the `reference` signal
    (top-20 teacher logits + rest mass, aligned answer tokens) and the `published` signal (full-vocabulary teacher
    logits read from disk, position-wise loss);
  - teacher priming per item: the top-k forward pass, and the full-vocabulary logits the `published` signal
    stores (bytes per item);
  - greedy generation throughput at batch 16 (the evaluation's cost).
and prints the wall-clock each preset's RP-KD arm and evaluation would need at those rates (GSM8K: 2638 training
items x 2 epochs, 1319 test items). Token lengths are GSM8K-typical: prompt 90, answer 150, raw question 70.
Needs CUDA; no network, no weights, no tokenizer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.config import LoRAConfig, TrainConfig
from bench.training.kd import AlignedSequence
from bench.training.lora_trainer import LoRATrainer, TrainItem
from bench.training.published import PublishedItem
from bench.training.teacher_logits import FullLogitsStore, compute_full_logits, compute_topk

SHAPES = {
    "llama8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
                 tie_word_embeddings=True),
}
PROMPT, ANSWER, QUESTION, TEACHER_PRIMED = 90, 150, 70, 100
TRAIN_ITEMS, EPOCHS, TEST_ITEMS, EVAL_TOKENS = 2638, 2, 1319, 300


def build(shape: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    return model.eval()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama8b")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of this script")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--items", type=int, default=16, help="items per timed phase")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build(args.shape, args.device)
    vocab = model.config.vocab_size
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report: dict = {"shape": args.shape, "device": device_name, "torch": torch.__version__,
                    "build_s": round(time.perf_counter() - started, 1)}
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(3, vocab, (n,), generator=generator).tolist())

    aligned = {f"ex{i}": AlignedSequence(ids(PROMPT + ANSWER), PROMPT) for i in range(args.items)}
    published = {f"ex{i}": PublishedItem(f"ex{i}", ids(QUESTION), ids(ANSWER)) for i in range(args.items)}

    # teacher priming, with the model as its own teacher (same shape, same cost per token)
    report["teacher_topk_s_per_item"] = timed(
        lambda: compute_topk(model, aligned, 20, batch_size=4, progress=False, temperature=5.94), 2) / len(aligned)
    with tempfile.TemporaryDirectory() as folder:
        store = FullLogitsStore(Path(folder) / "logits")
        sequences = {i: (ids(TEACHER_PRIMED), QUESTION) for i in published}
        begun = time.perf_counter()
        compute_full_logits(model, sequences, store, batch_size=4, progress=False)
        synchronize()
        report["teacher_full_logits_s_per_item"] = (time.perf_counter() - begun) / len(sequences)
        report["teacher_full_logits_bytes_per_item"] = sum(p.stat().st_size for p in store.directory.glob("*.pt")) \
            / len(sequences)
        topk = compute_topk(model, aligned, 20, batch_size=4, progress=False, temperature=5.94)

        train = TrainConfig(optimizer="sgd", lr=5e-6, momentum=0.9, weight_decay=0.01, batch_size=1)
        trainer = LoRATrainer(model, LoRAConfig(r=4, alpha=8, dropout=0.1), train, temperature=5.94,
                              alpha=0.609, pad_token_id=0, progress=False, kl_direction="reverse",
                              topk_tail="rest_bucket")
        trainer.model.train()
        items = [TrainItem(i, s) for i, s in aligned.items()]
        position = {"n": 0}

        def step(batch, teacher) -> None:
            loss, _, _ = trainer.batch_loss(batch, teacher)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        def cycling(pool, teacher):
            def run() -> None:
                position["n"] = (position["n"] + 1) % len(pool)
                step([pool[position["n"]]], teacher)
            return run

        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        report["step_s"] = {
            "gt_finetune (CE)": timed(cycling(items, None), args.repeats),
            "reference (top-20 + rest)": timed(cycling(items, topk), args.repeats),
            "published (full-vocab, from disk)": timed(cycling(list(published.values()), store), args.repeats),
        }
        if args.device == "cuda":
            report["train_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    trainer.model.eval()
    base = trainer.model.get_base_model()

    def generate() -> None:
        prompt = torch.randint(3, vocab, (16, PROMPT), generator=generator).to(args.device)
        base.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                      min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    with torch.inference_mode(), trainer.model.disable_adapter():
        report["generate_tok_per_s_batch16"] = 16 * args.new_tokens / timed(generate, 2)

    steps = TRAIN_ITEMS * EPOCHS
    report["estimates_h"] = {
        **{f"train one arm, {name}": steps * seconds / 3600 for name, seconds in report["step_s"].items()},
        "prime one arm (teacher of this shape), top-k": TRAIN_ITEMS * report["teacher_topk_s_per_item"] / 3600,
        "evaluate one arm (1319 items x 300 tokens)": TEST_ITEMS * EVAL_TOKENS /
        report["generate_tok_per_s_batch16"] / 3600,
    }
    report["published_logits_gib_per_arm"] = TRAIN_ITEMS * report["teacher_full_logits_bytes_per_item"] / 2**30
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
