"""How close is top-k KD to the full-vocabulary KL? Each `topk_tail` variant against the exact KL, on real batches.

    .venv/bin/python benchmarks/kd_topk.py [--tiny] [--items 8] [--k 20 50 100]

The teacher is SmolLM2-135M-Instruct with a priming prefix (Ground Truth) on `prompt + reference answer`; the
student is the same model with a fresh LoRA on the question alone, as in training (so the two differ only by the
priming prompt). At every answer position the exact tempered KL over the whole vocabulary is compared with the
top-k approximations the teacher cache allows: `renormalize` (both sides renormalised over the teacher's top k)
and `rest_bucket` (the top k plus one bucket for everything else; needs the teacher's mass outside its top k,
computed from its full fp32 row when cached). Reported,
per KL direction: relative error of the loss value, and of its gradient w.r.t. the student logits (cosine and
relative L2 error) — goal: within 1% — and the storage of the teacher cache against full fp16 logits (int32
indices + fp16 values per kept token, + one float32 rest log-mass per position for rest_bucket; goal >= 700x).
The teacher keeps its top-k values in fp16, as the cache does, so the errors include that rounding.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import torch

from bench.config import LoRAConfig, ModelConfig, TaskConfig, use_job_environment
from bench.models import embedded
from bench.models.hf import load_model_and_tokenizer
from bench.tasks import make_task
from bench.training.kd import (KL_DIRECTIONS, TOPK_TAILS, aligned_sequence, answer_ids, answer_logits, exact_kl,
                               kd_loss, teacher_topk)
from bench.training.lora_trainer import add_lora
from bench.training.priming import priming_for

TEMPERATURE = 5.942267335064758  # the published T


@dataclass
class Agreement:
    """Running sums over positions: loss values and gradients of an approximation against the exact KL."""

    loss: float = 0.0
    exact_loss: float = 0.0
    dot: float = 0.0
    norm2: float = 0.0
    exact_norm2: float = 0.0
    diff2: float = 0.0

    def add(self, loss: torch.Tensor, grad: torch.Tensor, exact_loss: torch.Tensor, exact_grad: torch.Tensor) -> None:
        self.loss += float(loss)
        self.exact_loss += float(exact_loss)
        self.dot += float((grad.double() * exact_grad.double()).sum())
        self.norm2 += float(grad.double().square().sum())
        self.exact_norm2 += float(exact_grad.double().square().sum())
        self.diff2 += float((grad.double() - exact_grad.double()).square().sum())

    @property
    def loss_error(self) -> float:
        """Signed: a rest bucket can only lose divergence (negative); renormalize may land on either side."""
        return (self.loss - self.exact_loss) / self.exact_loss

    @property
    def cosine(self) -> float:
        return self.dot / (self.norm2 * self.exact_norm2) ** 0.5

    @property
    def grad_error(self) -> float:
        return (self.diff2 / self.exact_norm2) ** 0.5


@dataclass
class Mass:
    """Average tempered probability mass on the teacher's top k: how much a tail treatment has to account for."""

    teacher: dict[int, float] = field(default_factory=dict)
    student: dict[int, float] = field(default_factory=dict)


def kl_sum_and_grad(student_rows: torch.Tensor, compute) -> tuple[torch.Tensor, torch.Tensor]:
    """KL summed over positions (so items of any length weigh per position) and its gradient w.r.t. the logits."""
    logits = student_rows.detach().clone().requires_grad_(True)
    total = compute(logits) * len(logits)
    total.backward()
    return total.detach(), logits.grad


def load(tiny: bool):
    if tiny:
        model, tokenizer = embedded.build_tiny_llama(seed=0)
        return model.eval(), tokenizer, embedded.TINY
    config = ModelConfig(name="smollm2", backend="hf", model_id=embedded.SMOLLM2)
    model, tokenizer, model_id = load_model_and_tokenizer(config, torch.device("cpu"), torch.float32)
    return model.eval(), tokenizer, model_id


@torch.inference_mode()
def rows(model, sequence) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([sequence.input_ids])).logits
    return answer_logits(logits, [sequence.answer_start], [sequence.answer_length]).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the random tiny Llama instead of SmolLM2 (seconds)")
    parser.add_argument("--items", type=int, default=8, help="GSM8K train items")
    parser.add_argument("--k", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_job_environment()  # BENCH_DATA_DIR as a `bench` run has it (conf/config.yaml)
    started = time.perf_counter()

    task = make_task(TaskConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main", source="local"))
    examples = task.examples("train", limit=args.items)
    model, tokenizer, model_id = load(args.tiny)
    vocab = model.config.vocab_size
    pairs = []
    for e in examples:
        answer = answer_ids(tokenizer, e.solution)
        student = aligned_sequence(tokenizer, task.user_message(e), answer, args.max_length)
        teacher = aligned_sequence(tokenizer, priming_for("ground_truth").apply(task.user_message(e)),
                                   answer[: student.answer_length], args.max_length + 512)
        pairs.append((student, teacher))
    teacher_rows = [rows(model, teacher) for _, teacher in pairs]  # the base model, before the LoRA goes on
    student_model = add_lora(model, LoRAConfig(dropout=0.0)).eval()  # fresh LoRA: B = 0
    student_rows = [rows(student_model, student) for student, _ in pairs]
    positions = sum(len(r) for r in student_rows)

    agreements = {(d, k, t): Agreement() for d in KL_DIRECTIONS for k in args.k for t in TOPK_TAILS}
    mass = Mass({k: 0.0 for k in args.k}, {k: 0.0 for k in args.k})
    for s_rows, t_rows in zip(student_rows, teacher_rows):
        targets = torch.zeros(len(s_rows), dtype=torch.long)
        for direction in KL_DIRECTIONS:
            exact, exact_grad = kl_sum_and_grad(s_rows, lambda x: exact_kl(x, t_rows, args.temperature, direction))
            for k in args.k:
                indices, values, log_rest = teacher_topk(t_rows, k, args.temperature)
                for tail in TOPK_TAILS:
                    def approx(x: torch.Tensor) -> torch.Tensor:  # alpha = 0: kd_loss is T^2 * KL
                        loss, _, _ = kd_loss(x, targets, indices, values, args.temperature, 0.0,
                                             kl_direction=direction, topk_tail=tail,
                                             teacher_log_rest=log_rest)
                        return loss / args.temperature**2

                    agreements[direction, k, tail].add(*kl_sum_and_grad(s_rows, approx), exact, exact_grad)
        for k in args.k:
            top = t_rows.topk(k, dim=-1).indices
            mass.teacher[k] += float(torch.softmax(t_rows / args.temperature, -1).gather(-1, top).sum())
            mass.student[k] += float(torch.softmax(s_rows / args.temperature, -1).gather(-1, top).sum())

    print(f"model {model_id}; {len(examples)} GSM8K train items, {positions} answer positions; V = {vocab}; "
          f"T = {args.temperature:.6f}; teacher primed (ground_truth), student = same weights + fresh LoRA")
    for k in args.k:
        print(f"  top-{k:<3} tempered mass on the teacher's top k: teacher {mass.teacher[k] / positions:.3f}, "
              f"student {mass.student[k] / positions:.3f}")
    exact_value = {d: agreements[d, args.k[0], TOPK_TAILS[0]].exact_loss / positions for d in KL_DIRECTIONS}
    print("  exact full-vocabulary KL per position: " + ", ".join(f"{d} {v:.5f}" for d, v in exact_value.items()))
    header = (f"{'direction':<9} {'k':>4} {'tail':<12} {'loss rel err':>12} {'grad cos':>9} {'grad rel L2':>11} "
              f"{'storage':>9}  within 1%")
    print(header)
    print("-" * len(header))
    for direction in KL_DIRECTIONS:
        for k in args.k:
            for tail in TOPK_TAILS:
                a = agreements[direction, k, tail]
                stored = k * (4 + 2) + (4 if tail == "rest_bucket" else 0)  # bytes per position
                ratio = vocab * 2 / stored
                ok = abs(a.loss_error) <= 0.01 and a.grad_error <= 0.01 and a.cosine >= 0.99
                print(f"{direction:<9} {k:>4} {tail:<12} {a.loss_error:>+11.2%} {a.cosine:>9.4f} {a.grad_error:>10.2%} "
                      f"{ratio:>8.0f}x  {'yes' if ok else 'no'}{'' if ratio >= 700 else ' (storage < 700x)'}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
