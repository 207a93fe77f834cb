"""On-policy distillation through TRL's `DistillationTrainer`: the one module that imports TRL.

Why TRL rather than a loop of our own (bench/training/lora_trainer.py is one): on-policy distillation samples
from the student inside the training loop, has the teacher score the student's own tokens, and matches the two
next-token distributions under a generalized JSD. TRL 1.16 ships exactly that as a stable trainer, with the pieces
a hand-written loop would have to grow and test (vLLM generation, a chunked loss that never holds the full
`[tokens, vocabulary]` logits, multi-GPU). So this module only maps the harness's typed settings onto TRL's and
reads back what the run cost; a TRL API change touches this file, and pyproject.toml pins the tested minor.

What is ours, not TRL's, and why:
- the optimiser and lr schedule are RP-KD's (`lora_trainer.make_optimizer` / `make_scheduler`, through the
  `create_optimizer` / `create_scheduler` overrides transformers documents), and so is the step budget
  (`lora_trainer.optimizer_steps`), so a gap between this arm and an RP-KD arm is the teacher signal, not SGD vs
  AdamW or a different schedule;
- the LoRA adapter is built by TRL from a `peft_config` after TRL seeds with `train.seed`, as RP-KD seeds before
  building its adapter: both arms start from the same adapter weights;
- no mixed-precision autocast: the student trains in the dtype it was loaded in, as RP-KD's arms do;
- costs are read from TRL's own bookkeeping, which its checkpoints save and restore, so a resumed run counts
  every step once;
- a resumed run reproduces an uninterrupted one (bit for bit on CPU): transformers' checkpoint restores the global
  RNGs (dropout, rollout sampling) and the log history, and `EpochReplaySampler` the prompt order, which TRL's
  sampler draws from a generator no checkpoint saves.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from torch.utils.data import Sampler
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DistillationConfig, DistillationTrainer
from trl.trainer.utils import RepeatSampler

from bench.config import LoRAConfig, TrainConfig
from bench.training.lora_trainer import lora_parameters, make_optimizer, make_scheduler, optimizer_steps

logger = logging.getLogger(__name__)

# TRL's per-step metric: the mean length of the completions generated for that step (logged every step here).
COMPLETION_LENGTH = "completions/mean_length"


@dataclass(frozen=True)
class RolloutSettings:
    """The on-policy knobs TRL reads besides LoRA and optimisation (conf/method/onpolicy.yaml documents them)."""

    beta: float  # generalized JSD: 0 forward KL, 1 reverse KL, 0.5 JSD
    temperature: float  # rollout sampling and the divergence's softmax
    max_completion_length: int  # tokens per rollout


@dataclass
class DistillReport:
    """What training did and cost. `forward_tokens` are the tokens the teacher scored (each rollout's prompt and
    completion, as RP-KD counts its teacher's forward passes); `rollout_tokens` the completion tokens the student
    sampled."""

    steps: int
    resumed_from_step: int
    rollout_tokens: int
    forward_tokens: int
    losses: list[dict[str, float]]
    adapter_dir: str


def prompt_dataset(user_messages: Sequence[str]) -> Dataset:
    """TRL's prompt-only conversational format: one user turn per item; TRL applies the chat template."""
    return Dataset.from_list([{"prompt": [{"role": "user", "content": message}]} for message in user_messages])


def peft_config(lora: LoRAConfig) -> LoraConfig:
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def distillation_config(train: TrainConfig, settings: RolloutSettings, steps: int, output_dir: Path, *,
                        use_cpu: bool, progress: bool) -> DistillationConfig:
    """TRL's config from the harness's: every field that changes the computation is set here, not left to a
    TRL default (several differ from transformers': bf16 on, gradient checkpointing on, logging every 10 steps)."""
    return DistillationConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum, learning_rate=train.lr, weight_decay=train.weight_decay,
        # None = measure the norm without clipping it (as LoRATrainer does with max_norm = inf)
        max_grad_norm=math.inf if train.max_grad_norm is None else train.max_grad_norm,
        seed=train.seed, data_seed=train.seed, shuffle_dataset=train.shuffle,
        gradient_checkpointing=train.gradient_checkpointing, bf16=False, fp16=False, use_cpu=use_cpu,
        beta=settings.beta, temperature=settings.temperature, max_completion_length=settings.max_completion_length,
        disable_dropout=False,  # LoRA dropout is a LoRA setting, shared with RP-KD's arms
        logging_steps=1, report_to="none", disable_tqdm=not progress,
        save_strategy="steps", save_steps=train.save_every, save_total_limit=1)


class EpochReplaySampler(Sampler):
    """TRL's prompt sampler (a `RepeatSampler`), made to give epoch `e` the same order whether or not the run was
    resumed.

    `RepeatSampler` shuffles with its own generator, seeded once and advanced by each epoch's pass, and no
    checkpoint saves it: a run resumed in epoch e >= 1 started it from the seed again and replayed epoch 0's order
    (the adapter then differs from an uninterrupted run's). transformers calls `set_epoch(e)` on the sampler
    before every epoch, resumed or not; here that re-seeds the generator and replays the e earlier passes, which
    is exactly the state an uninterrupted run has at epoch e, so its order is unchanged."""

    def __init__(self, inner: RepeatSampler) -> None:
        if not isinstance(inner, RepeatSampler):
            raise TypeError(f"TRL's train sampler is a {type(inner).__name__}, not the RepeatSampler whose order this "
                            "replays (has the pinned TRL version changed?)")
        if inner.shuffle and inner.seed is None:
            raise ValueError("TRL's train sampler shuffles without a seed: a resumed run cannot replay its order")
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        if not self.inner.shuffle:  # shuffle_dataset=false: the same order every epoch, nothing to replay
            return
        self.inner.generator.manual_seed(self.inner.seed)
        for _ in range(epoch):
            for _ in self.inner:
                pass

    def __iter__(self):
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class _Trainer(DistillationTrainer):
    """TRL's trainer with RP-KD's optimiser and lr schedule over the LoRA parameters (and only those), and a prompt
    order that a resume reproduces (`EpochReplaySampler`)."""

    def __init__(self, *args: Any, train_config: TrainConfig, n_items: int, **kwargs: Any) -> None:
        self.train_config = train_config
        self.n_items = n_items
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        return EpochReplaySampler(super()._get_train_sampler(dataset))

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.train_config,
                                            lora_parameters(model if model is not None else self.model))
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = make_scheduler(self.train_config, optimizer, self.n_items) or \
                torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # scheduler=none: a constant rate
        return self.lr_scheduler


class _Rows(TrainerCallback):
    """Hands each optimizer step's row (step, loss, lr, grad norm, entropy, rollout length) to `emit` as TRL logs it
    (the method forwards it to the tracker: `train/<arm>/...` curves, as RP-KD's arms plot)."""

    def __init__(self, emit: Callable[[dict[str, float]], None]) -> None:
        self.emit = emit

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.emit(loss_row(state.global_step, logs))


class _QuietProgress(ProgressCallback):
    """transformers' progress bar without a printed line per logged step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def loss_row(step: int, logs: dict[str, Any]) -> dict[str, float]:
    """One training row in the harness's names (RP-KD's losses.jsonl and `train/<arm>/...` curves)."""
    row = {"step": step, "loss": float(logs["loss"]), "lr": float(logs["learning_rate"])}
    for key, name in (("grad_norm", "grad_norm"), ("entropy", "entropy"), (COMPLETION_LENGTH, "rollout_length")):
        if logs.get(key) is not None:
            row[name] = float(logs[key])
    return row


def rollout_tokens(log_history: Sequence[dict[str, Any]], generation_batch: int) -> int:
    """Completion tokens sampled over the run. TRL generates once per optimizer step for `generation_batch` prompts
    and logs their mean length; with a log row every step, mean x count summed over rows is the total."""
    rows = [row for row in log_history if "loss" in row]
    if rows and any(COMPLETION_LENGTH not in row for row in rows):
        raise RuntimeError(f"TRL's log rows no longer carry {COMPLETION_LENGTH!r}: rollout tokens cannot be counted "
                           "(has the pinned TRL version changed?)")
    return round(sum(row[COMPLETION_LENGTH] * generation_batch for row in rows))


def distill_on_policy(student, teacher, tokenizer, user_messages: Sequence[str], lora: LoRAConfig,
                      train: TrainConfig, settings: RolloutSettings, output_dir: Path, *, progress: bool = True,
                      on_log: Callable[[dict[str, float]], None] | None = None) -> DistillReport:
    """Train a LoRA adapter on `student` (a plain transformers model, no adapter yet) by on-policy distillation
    from `teacher` (same vocabulary) over the chat-templated `user_messages`, for RP-KD's step budget.

    TRL checkpoints every `train.save_every` steps under `output_dir/trainer`; a call that finds a checkpoint there
    resumes from it, to the adapter and loss rows (all steps, each once) an uninterrupted run gives. The adapter is
    saved to `output_dir/adapter`, and the checkpoints are removed once it is.
    """
    if not user_messages:
        raise ValueError("no training prompts (method.train_limit is 0?)")
    steps = optimizer_steps(len(user_messages), train)
    device = next(student.parameters()).device
    checkpoints = output_dir / "trainer"
    args = distillation_config(train, settings, steps, checkpoints, use_cpu=device.type == "cpu", progress=progress)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    trainer = _Trainer(model=student, teacher_model=teacher, args=args, train_dataset=prompt_dataset(user_messages),
                       processing_class=tokenizer, peft_config=peft_config(lora), train_config=train,
                       n_items=len(user_messages), callbacks=[_Rows(on_log)] if on_log else None)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_QuietProgress)
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    resumed_from = int(Path(resume).name.rsplit("-", 1)[1]) if resume else 0
    if resume:
        logger.info("resuming on-policy distillation from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    trainer.model.eval()
    # TRL also checkpoints the last step; the adapter supersedes it, and a run re-done with resume=false must
    # start afresh rather than "resume" a finished training
    shutil.rmtree(checkpoints, ignore_errors=True)
    generation_batch = train.batch_size * train.grad_accum * trainer.accelerator.num_processes
    history = trainer.state.log_history
    return DistillReport(steps=trainer.state.global_step, resumed_from_step=resumed_from,
                         rollout_tokens=rollout_tokens(history, generation_batch),
                         forward_tokens=int(trainer.state.num_input_tokens_seen),
                         losses=[loss_row(int(row["step"]), row) for row in history if "loss" in row],
                         adapter_dir=str(adapter_dir))
