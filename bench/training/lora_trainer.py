"""A readable LoRA training loop for (KD or plain) fine-tuning, with resumable checkpoints.

A plain loop rather than `Trainer`: the whole recipe — shuffled order, the loss, accumulation, clipping,
checkpoints — fits on one screen, and every arm of a comparison runs the very same code path with the same
seeded data order, so arms differ only in the loss's teacher term.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from bench.config import LoRAConfig, TrainConfig
from bench.training.kd import IGNORE, AlignedSequence, answer_logits, kd_loss
from bench.training.teacher_logits import TopKCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainItem:
    example_id: str
    sequence: AlignedSequence


@dataclass
class TrainReport:
    steps: int
    resumed_from_step: int
    losses: list[dict[str, float]]
    adapter_dir: str


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; expected sgd or adamw")


def add_lora(model, config: LoRAConfig):
    return get_peft_model(model, LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                            target_modules=list(config.target_modules), task_type="CAUSAL_LM"))


def collate(items: list[TrainItem], pad_token_id: int) -> dict[str, torch.Tensor | list[int]]:
    width = max(len(item.sequence.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.sequence.input_ids)
        input_ids[row, :length] = torch.tensor(item.sequence.input_ids)
        attention[row, :length] = 1
        labels[row, :length] = torch.tensor(item.sequence.labels())
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "starts": [item.sequence.answer_start for item in items],
            "lengths": [item.sequence.answer_length for item in items]}


class LoRATrainer:
    """Trains LoRA adapters on a causal LM with `alpha * CE + (1 - alpha) * T^2 * KL` on answer tokens."""

    def __init__(self, model, lora: LoRAConfig, train: TrainConfig, temperature: float, alpha: float,
                 pad_token_id: int, progress: bool = True) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.train_config = train
        self.temperature = temperature
        self.alpha = alpha
        self.pad_token_id = pad_token_id
        self.progress = progress
        torch.manual_seed(train.seed)  # LoRA init is random: the same seed gives every arm the same start
        self.model = add_lora(model, lora)
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()
        self.optimizer = make_optimizer(train.optimizer, [p for p in self.model.parameters() if p.requires_grad],
                                        train.lr)

    def batch_loss(self, batch: dict, items: list[TrainItem], teacher: TopKCache | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device)).logits
        student = answer_logits(logits, batch["starts"], batch["lengths"])
        targets = torch.cat([torch.tensor(item.sequence.input_ids[item.sequence.answer_start:]) for item in items])
        indices = values = None
        if teacher is not None:
            indices = torch.cat([teacher[item.example_id][0] for item in items]).long().to(device)
            values = torch.cat([teacher[item.example_id][1] for item in items]).float().to(device)
        return kd_loss(student, targets.to(device), indices, values, self.temperature, self.alpha)

    def _order(self, items: list[TrainItem]) -> list[list[TrainItem]]:
        """Batches for all epochs, in a seeded order: identical for every arm, and reproducible on resume."""
        rng = random.Random(self.train_config.seed)
        batches = []
        for _ in range(self.train_config.epochs):
            shuffled = items[:]
            rng.shuffle(shuffled)
            size = self.train_config.batch_size
            batches += [shuffled[i:i + size] for i in range(0, len(shuffled), size)]
        return batches

    def train(self, items: list[TrainItem], teacher: TopKCache | None, output_dir: Path,
              on_log: Callable[[dict], None] | None = None) -> TrainReport:
        if not items:
            raise ValueError("no training items (all filtered out, or method.train_limit is 0)")
        batches = self._order(items)
        accumulate = self.train_config.grad_accum
        total_steps = math.ceil(len(batches) / accumulate)
        checkpoint = output_dir / "checkpoint"
        step = self._resume(checkpoint)
        resumed_from = step
        losses: list[dict[str, float]] = []
        self.model.train()
        bar = tqdm(total=total_steps, initial=step, desc="train", disable=not self.progress)
        while step < total_steps:
            group = batches[step * accumulate:(step + 1) * accumulate]
            totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
            for micro in group:
                loss, ce, kl = self.batch_loss(collate(micro, self.pad_token_id), micro, teacher)
                (loss / len(group)).backward()
                for key, value in (("loss", loss), ("ce", ce), ("kl", kl)):
                    totals[key] += float(value.detach()) / len(group)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.train_config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append({"step": step, **totals})
            if on_log:
                on_log(losses[-1])
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
            bar.update(1)
            if step % self.train_config.save_every == 0 and step < total_steps:
                self._save_checkpoint(checkpoint, step)
        bar.close()
        adapter_dir = output_dir / "adapter"
        self.model.save_pretrained(adapter_dir)
        self.model.eval()
        return TrainReport(steps=total_steps, resumed_from_step=resumed_from, losses=losses,
                           adapter_dir=str(adapter_dir))

    def _save_checkpoint(self, path: Path, step: int) -> None:
        """Adapter + optimizer + step, written to a temp folder and renamed so a kill never leaves half of one."""
        temp = path.with_name(path.name + ".tmp")
        temp.mkdir(parents=True, exist_ok=True)
        torch.save({"adapter": get_peft_model_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                    "step": step}, temp / "state.pt")
        (temp / "step.json").write_text(json.dumps({"step": step}))
        if path.exists():
            old = path.with_name(path.name + ".old")
            path.replace(old)
            temp.replace(path)
            for file in old.iterdir():
                file.unlink()
            old.rmdir()
        else:
            temp.replace(path)

    def _resume(self, path: Path) -> int:
        if not (path / "state.pt").exists():
            return 0
        state = torch.load(path / "state.pt", weights_only=False)
        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        logger.info("resuming training from step %d (%s)", state["step"], path)
        return int(state["step"])
