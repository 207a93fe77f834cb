"""A readable LoRA training loop for (KD or plain) fine-tuning, with resumable checkpoints.

A plain loop rather than `Trainer`: the whole recipe — shuffled order, the loss, accumulation, optional clipping,
the lr schedule, checkpoints — fits on one screen, and every arm of a comparison runs the very same code path
with the same seeded data order, so arms differ only in the loss's teacher term.

Under a launcher (torchrun, `accelerate launch`; bench/training/distributed.py) the same loop runs on every rank
with the model wrapped in DDP. The global batch does not change: each batch of `train.batch_size` items (grad_accum
of them per optimizer step) is split over the ranks, and each rank's loss is weighted by its share of the batch's
loss terms, so the summed gradient is the one a single process computes and the optimisation is the same (up to
float reduction order). Rank 0 alone writes checkpoints and the adapter; the others wait at a barrier.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from bench.config import LoRAConfig, ModelConfig, Scheduler, TrainConfig
from bench.training.batching import right_padded
from bench.training.distributed import RunFinished, connect_world, gradient_group
from bench.training.kd import IGNORE, AlignedSequence, KDLoss
from bench.training.published import PublishedItem, published_batch_loss
from bench.training.teacher_logits import FullLogitsStore, TopKCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainItem:
    example_id: str
    sequence: AlignedSequence


@dataclass
class TrainReport:
    steps: int
    resumed_from_step: int
    losses: list[dict[str, float]]  # one row per step from 1, a resumed run's earlier rows from its checkpoint
    adapter_dir: str


SCHEDULERS = tuple(s.value for s in Scheduler)  # the schema's choices, for trainers configured in code


@dataclass(frozen=True)
class RNGState:
    """Every global generator a training step may draw from, so a resumed run continues their streams instead of
    restarting them from `train.seed` (which hands step k + 1 of a run resumed at k the dropout masks of step 1).

    LoRA dropout draws from torch's CPU generator, or from the CUDA generator of the device the model is on.
    Nothing in this loop draws from python's `random` or numpy's global generator today; they are saved anyway, so
    a collator or loss that starts to cannot silently break resume. The data order needs no entry: `_order` draws
    it from its own `random.Random(train.seed)`, a function of the seed alone. Each rank of a launch has its own
    streams (seeded `train.seed + rank`, so dropout masks differ between ranks as they differ between the items
    of one batch); a checkpoint holds every rank's."""

    python: tuple
    numpy: dict[str, Any]
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]  # one per device; empty if CUDA was never initialised (nothing drew from it)

    @classmethod
    def capture(cls) -> RNGState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(python=random.getstate(), numpy=np.random.get_state(legacy=False),
                   torch_cpu=torch.get_rng_state(), torch_cuda=cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if not self.torch_cuda:
            return
        here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if here != len(self.torch_cuda):
            logger.warning("the checkpoint holds RNG states of %d CUDA devices, this machine has %d: restoring %d; "
                           "random draws on the others differ from an uninterrupted run's",
                           len(self.torch_cuda), here, min(here, len(self.torch_cuda)))
        for device, state in enumerate(self.torch_cuda[:here]):
            torch.cuda.set_rng_state(state, device)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for `torch.save`: a checkpoint must not pickle this class's import path."""
        return {"python": self.python, "numpy": self.numpy, "torch_cpu": self.torch_cpu,
                "torch_cuda": list(self.torch_cuda)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RNGState:
        missing = {"python", "numpy", "torch_cpu", "torch_cuda"} - saved.keys()
        if missing:
            raise ValueError(f"the checkpoint's RNG state lacks {sorted(missing)}: it is corrupt or from another "
                             "version; delete the checkpoint folder to train from step 0")
        return cls(python=saved["python"], numpy=saved["numpy"], torch_cpu=saved["torch_cpu"],
                   torch_cuda=list(saved["torch_cuda"]))


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over `parameters`, weight decay included (published: on LoRA params only)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected sgd or adamw")


def scheduler_t_max(config: TrainConfig, n_items: int) -> int:
    """Cosine period in optimizer steps: scheduler_t_max, else the number of training items (published)."""
    t_max = config.scheduler_t_max if config.scheduler_t_max is not None else n_items
    if t_max < 1:
        raise ValueError(f"method.train.scheduler_t_max must be >= 1, got {t_max}")
    return t_max


def optimizer_steps(n_items: int, config: TrainConfig) -> int:
    """The step budget of `epochs` passes over `n_items` in batches of `batch_size` (the last one of each epoch may
    be short), `grad_accum` batches per optimizer step. Every train-time arm trains for this many steps (RP-KD's
    arms here, on-policy distillation through TRL in bench/training/trl_distill.py), so arms on the same items get
    the same budget."""
    batches = config.epochs * math.ceil(n_items / config.batch_size)
    return math.ceil(batches / config.grad_accum)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, n_items: int
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """None (constant lr) or torch's CosineAnnealingLR (eta_min 0), the published scheduler, stepped per
    optimizer step; beyond T_max it follows the cosine back up rather than holding at 0, as published."""
    if config.scheduler == "none":
        return None
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=scheduler_t_max(config, n_items))
    raise ValueError(f"unknown scheduler {config.scheduler!r}; expected one of {SCHEDULERS}")


def add_lora(model, config: LoRAConfig):
    return get_peft_model(model, LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                            target_modules=list(config.target_modules), task_type="CAUSAL_LM"))


def lora_parameters(model) -> list[torch.nn.Parameter]:
    """The LoRA adapter weights: the only parameters the optimizer (and its weight decay) ever sees."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    lora = [p for name, p in trainable.items() if "lora_" in name]
    others = sorted(name for name in trainable if "lora_" not in name)
    if others or not lora:
        raise ValueError(f"expected only LoRA parameters to be trainable; also trainable: {others[:5]}")
    return lora


def lora_for_arm(lora: LoRAConfig, arm: str, dropout_by_arm: Mapping[str, float]) -> LoRAConfig:
    """`lora` with the arm's dropout override, if any (published: Base-KD 0.2, every other arm 0.1). Arm names are
    the method's to check (bench/methods/rpkd_arms.py)."""
    return replace(lora, dropout=float(dropout_by_arm[arm])) if arm in dropout_by_arm else lora


def collate(items: list[TrainItem], pad_token_id: int) -> dict[str, torch.Tensor | list[int]]:
    input_ids, attention = right_padded([item.sequence.input_ids for item in items], pad_token_id)
    labels, _ = right_padded([item.sequence.labels() for item in items], IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "starts": [item.sequence.answer_start for item in items],
            "lengths": [item.sequence.answer_length for item in items]}


def loss_terms(items: list[TrainItem] | list[PublishedItem]) -> int:
    """How many terms a micro-batch's loss averages: answer tokens (`kd.KDLoss`, a mean over them) for aligned
    items, items (`published.published_batch_loss`, a mean of per-item means) for published ones."""
    if isinstance(items[0], PublishedItem):
        return len(items)
    return sum(item.sequence.answer_length for item in items)


def recover_checkpoint(path: Path) -> None:
    """Repair what a kill during `_save_checkpoint`'s swap can leave: `checkpoint.old` without `checkpoint` (killed
    between the two renames: .old is the last complete checkpoint, put it back), both (killed before .old was
    removed: drop it), and a half-written `checkpoint.tmp` (never complete until renamed: drop it)."""
    old, temp = path.with_name(path.name + ".old"), path.with_name(path.name + ".tmp")
    if old.exists():
        if (path / "state.pt").exists():
            shutil.rmtree(old)
        else:
            if path.exists():
                shutil.rmtree(path)
            old.replace(path)
    if temp.exists():
        shutil.rmtree(temp)


class LoRATrainer:
    """Trains LoRA adapters on a causal LM with `alpha * CE + (1 - alpha) * T^2 * KL` on answer tokens.

    The KL's direction and its treatment of the teacher's top-k tail are `kd.KDLoss`'s options.
    """

    def __init__(self, model, lora: LoRAConfig, train: TrainConfig, temperature: float, alpha: float,
                 pad_token_id: int, progress: bool = True, kl_direction: str = "forward",
                 topk_tail: str = "renormalize") -> None:
        self.loss_fn = KDLoss(temperature, alpha, kl_direction, topk_tail)  # checks alpha and the options
        if train.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {train.scheduler!r}; expected one of {SCHEDULERS}")
        self.train_config = train
        self.temperature = temperature  # the published loss takes them too
        self.alpha = alpha
        self.pad_token_id = pad_token_id
        self.world = connect_world()
        self.world.check_batch_split(train.batch_size)
        self.progress = progress and self.world.is_main
        # LoRA init is random: the same seed gives every arm the same start. Python's and numpy's generators are
        # seeded too, so every stream a checkpoint saves is a function of the seed and the step alone, whatever
        # ran earlier in the process (a resumed run's checkpoints are then byte-identical to an uninterrupted one's).
        # Rank r seeds with seed + r: its own dropout stream; rank 0 (and a single process) with the seed itself.
        # The LoRA init of ranks > 0 is then overwritten by rank 0's when DDP wraps the model.
        seed = train.seed + self.world.rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        self.model = add_lora(model, lora)
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()  # non-reentrant (transformers' default): DDP-safe
            self.model.enable_input_require_grads()
        self.lora_params = lora_parameters(self.model)
        self.network = self._data_parallel(self.model)  # what forward passes go through: DDP under a launcher
        self.optimizer = make_optimizer(train, self.lora_params)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # built in train(): T_max needs items

    def _data_parallel(self, model):
        """`model` wrapped in DDP when several ranks train it (rank 0's weights broadcast to all at wrapping), else
        `model` itself. Every LoRA parameter takes part in every forward pass, so DDP need not look for unused
        ones; buffers (rotary tables) are the same everywhere and are not re-sent each step."""
        if not self.world.distributed:
            return model
        device = next(model.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
            process_group=gradient_group(device), find_unused_parameters=False)

    def batch_loss(self, items: list[TrainItem] | list[PublishedItem], teacher: TopKCache | FullLogitsStore | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, ce, kl) of one micro-batch: the aligned loss (`kd.KDLoss`) for TrainItems, the public code's
        position-wise loss (`published.published_batch_loss`) for PublishedItems."""
        if isinstance(items[0], PublishedItem):
            return published_batch_loss(self.network, items, teacher, self.temperature, self.alpha,
                                        self.pad_token_id)
        batch = collate(items, self.pad_token_id)
        device = next(self.model.parameters()).device
        logits = self.network(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device)).logits
        indices = values = log_rest = None
        if teacher is not None:
            entries = [teacher[item.example_id] for item in items]
            indices = torch.cat([entry[0] for entry in entries]).long().to(device)
            values = torch.cat([entry[1] for entry in entries]).float().to(device)
            if all(len(entry) > 2 for entry in entries):  # (indices, logits, log-rest mass): kd.teacher_topk
                log_rest = torch.cat([entry[2] for entry in entries]).float().to(device)
        # the logits at position t predict token t + 1: labels shifted left by one line up with them, and only the
        # answer's positions keep a label, in the order the teacher's rows are concatenated
        return self.loss_fn(logits[:, :-1], batch["labels"][:, 1:].to(device), indices, values, log_rest)

    def _order(self, items: list[TrainItem]) -> list[list[TrainItem]]:
        """Batches for all epochs, in a seeded order: identical for every arm, and reproducible on resume."""
        rng = random.Random(self.train_config.seed)
        batches = []
        for _ in range(self.train_config.epochs):
            shuffled = items[:]
            if self.train_config.shuffle:
                rng.shuffle(shuffled)
            size = self.train_config.batch_size
            batches += [shuffled[i:i + size] for i in range(0, len(shuffled), size)]
        return batches

    def train(self, items: list[TrainItem] | list[PublishedItem], teacher: TopKCache | FullLogitsStore | None,
              output_dir: Path,
              on_log: Callable[[dict], None] | None = None) -> TrainReport:
        if not items:
            raise ValueError("no training items (all filtered out, or method.train_limit is 0)")
        self._check_teacher_signal(items, teacher)
        batches = self._order(items)
        accumulate = self.train_config.grad_accum
        total_steps = optimizer_steps(len(items), self.train_config)
        assert total_steps == math.ceil(len(batches) / accumulate)
        self.scheduler = make_scheduler(self.train_config, self.optimizer, len(items))
        checkpoint = output_dir / "checkpoint"
        step, losses = self._resume(checkpoint)
        resumed_from = step
        self.model.train()
        bar = tqdm(total=total_steps, initial=step, desc="train", disable=not self.progress)
        while step < total_steps:
            totals = self._backward(batches[step * accumulate:(step + 1) * accumulate], teacher)
            # the total norm before any clipping, logged every step; max_norm = inf measures without clipping
            max_norm = self.train_config.max_grad_norm
            grad_norm = torch.nn.utils.clip_grad_norm_(self.lora_params, math.inf if max_norm is None else max_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append({"step": step, "lr": lr, **totals, "grad_norm": float(grad_norm)})
            if on_log:
                on_log(losses[-1])
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
            bar.update(1)
            if step % self.train_config.save_every == 0 and step < total_steps:
                self._save_checkpoint(checkpoint, step, losses)
        bar.close()
        adapter_dir = output_dir / "adapter"
        if self.world.is_main:
            self.model.save_pretrained(adapter_dir)
        self.world.barrier()  # no rank returns (and no job reads the adapter) before it is written
        self.model.eval()
        return TrainReport(steps=total_steps, resumed_from_step=resumed_from, losses=losses,
                           adapter_dir=str(adapter_dir))

    def _backward(self, group: list[list[TrainItem]] | list[list[PublishedItem]],
                  teacher: TopKCache | FullLogitsStore | None) -> dict[str, float]:
        """Accumulate the gradient of one optimizer step's micro-batches; returns the step's mean loss, ce and kl.

        Each micro-batch is split over the ranks (`_shard`). DDP averages the ranks' gradients, so a rank scales its
        loss by its share of the micro-batch's loss terms times the world size: the averaged gradient is then the
        gradient of the whole micro-batch's mean loss, as one process computes it. Gradients are all-reduced once,
        on the group's last micro-batch. In one process share = 1 and this is the plain loop."""
        totals = [0.0, 0.0, 0.0]
        for index, micro in enumerate(group):
            shard, share = self._shard(micro)
            with self._gradient_sync(index == len(group) - 1):
                loss, ce, kl = self.batch_loss(shard, teacher)
                ((loss * (share * self.world.size)) / len(group)).backward()
            for slot, value in enumerate((loss, ce, kl)):
                totals[slot] += float(value.detach()) * share / len(group)
        loss_total, ce_total, kl_total = self.world.sum(totals)
        return {"loss": loss_total, "ce": ce_total, "kl": kl_total}

    def _shard(self, micro: list[TrainItem] | list[PublishedItem]
               ) -> tuple[list[TrainItem] | list[PublishedItem], float]:
        """This rank's items of a micro-batch and their share of its loss terms (answer tokens for the aligned
        loss, a token mean; items for the published one, a mean over items). A rank left without items (a short
        last batch) runs the batch's first item at weight 0: DDP's all-reduce needs every rank's backward pass."""
        start, stop = self.world.shard(len(micro))
        mine = micro[start:stop]
        if not mine:
            return micro[:1], 0.0
        return mine, loss_terms(mine) / loss_terms(micro)

    def _gradient_sync(self, sync: bool):
        """DDP's all-reduce only when `sync`: accumulating micro-batches need it once per optimizer step."""
        if sync or not self.world.distributed:
            return nullcontext()
        return self.network.no_sync()

    def _check_teacher_signal(self, items: list[TrainItem] | list[PublishedItem],
                              teacher: TopKCache | FullLogitsStore | None) -> None:
        """The teacher signal must fit the items and the loss: fail before step 1, not at it. rest_bucket needs each
        position's teacher mass outside its top-k, computed at this trainer's temperature."""
        if isinstance(items[0], PublishedItem):
            if teacher is not None and not isinstance(teacher, FullLogitsStore):
                raise ValueError("published items are trained against full-vocabulary teacher logits "
                                 "(teacher_logits.FullLogitsStore), not a top-k cache")
            return
        if teacher is None or self.loss_fn.topk_tail != "rest_bucket" or self.alpha == 1.0:
            return
        if len(teacher[items[0].example_id]) < 3:
            raise ValueError("topk_tail=rest_bucket needs the teacher's tempered log-mass outside its top-k per "
                             "position next to the top-k (kd.teacher_topk); this teacher cache holds top-k logits "
                             "only. Re-prime the teacher with a cache that stores it, or set "
                             "method.topk_tail=renormalize.")
        if isinstance(teacher, TopKCache) and teacher.temperature is not None and \
                not math.isclose(teacher.temperature, self.temperature, rel_tol=1e-9):
            raise ValueError(f"the teacher cache's rest mass was computed at T={teacher.temperature}, but training "
                             f"uses T={self.temperature}: re-prime the teacher (delete its phases/prime_* marker)")

    def _save_checkpoint(self, path: Path, step: int, losses: list[dict[str, float]]) -> None:
        """Every rank's RNG state, gathered; rank 0 writes the checkpoint (`_write_checkpoint`) while the others
        wait. Weights, optimizer and schedule are the same on every rank (DDP), so rank 0's are the run's."""
        rng = self.world.gather(RNGState.capture().to_dict())
        if self.world.is_main:
            assert rng is not None
            self._write_checkpoint(path, step, losses, rng)
        self.world.barrier()

    def _write_checkpoint(self, path: Path, step: int, losses: list[dict[str, float]],
                          rng: list[dict[str, Any]]) -> None:
        """Adapter + optimizer + lr scheduler + step + RNG states + the loss rows of steps 1..step, written to a temp
        folder and swapped in by renames; a kill at any point leaves a state `recover_checkpoint` repairs, so the
        last complete checkpoint is never lost. The rows live in the checkpoint, not in a log appended to as they
        come, so the history always ends at the checkpoint's step: rows of steps a kill undid are never kept.
        `rng` holds one state per rank: rank 0's under "rng" (as a single process saves it), the others' by rank."""
        recover_checkpoint(path)
        temp = path.with_name(path.name + ".tmp")
        temp.mkdir(parents=True, exist_ok=True)
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        torch.save({"adapter": get_peft_model_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                    "scheduler": scheduler, "step": step, "rng": rng[0], "world_size": len(rng),
                    "rng_other_ranks": {rank: rng[rank] for rank in range(1, len(rng))},
                    "losses": [dict(row) for row in losses]}, temp / "state.pt")
        (temp / "step.json").write_text(json.dumps({"step": step}))
        if path.exists():
            old = path.with_name(path.name + ".old")
            path.replace(old)
            temp.replace(path)
            shutil.rmtree(old)
        else:
            temp.replace(path)

    def _resume(self, path: Path) -> tuple[int, list[dict[str, float]]]:
        """(step, loss rows of steps 1..step) of the checkpoint at `path`, its weights, optimizer, schedule and RNG
        states put in place; (0, []) without one. Call it last before the first step: anything drawing random
        numbers after it would shift the restored streams. Rank 0 reads the checkpoint and hands it to the other
        ranks (they need no access to its folder); each restores the weights and optimizer, and its own RNG."""
        state = self.world.broadcast(self._read_checkpoint(path) if self.world.is_main else None)
        if state is None:
            return 0, []
        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if self.scheduler is not None:
            self._resume_scheduler(state.get("scheduler"), step)
        losses = self._resume_losses(state.get("losses"), step)
        self._resume_rng(state, step)
        logger.info("resuming training from step %d (%s)", step, path)
        return step, losses

    @staticmethod
    def _read_checkpoint(path: Path) -> dict[str, Any] | None:
        """The checkpoint's state on the CPU (it travels to the other ranks pickled; the optimizer and the adapter
        move their tensors to the model's device as they load), after repairing a kill mid-swap; None without one."""
        recover_checkpoint(path)
        if not (path / "state.pt").exists():
            return None
        return torch.load(path / "state.pt", weights_only=False, map_location="cpu")

    @staticmethod
    def _resume_losses(saved: list[dict[str, float]] | None, step: int) -> list[dict[str, float]]:
        """The rows of steps 1..step. A checkpoint written before they were saved has none to give back, and one
        written after resuming from such a checkpoint holds only the steps trained since: each step once, in order,
        up to `step`, is what is checked."""
        if saved is None:
            logger.warning("checkpoint has no loss history (written before it was saved): the report and "
                           "losses.jsonl start at step %d", step + 1)
            return []
        rows = [dict(row) for row in saved if row["step"] <= step]
        steps = [row["step"] for row in rows]
        if rows and steps != list(range(steps[0], step + 1)):
            raise ValueError(f"the checkpoint's loss history does not end with steps ..{step} once each in order "
                             f"(it has {steps[:3]}...{steps[-3:]}): it is corrupt; delete the checkpoint folder to "
                             "train from step 0")
        return rows

    def _resume_rng(self, state: dict[str, Any], step: int) -> None:
        """Continue this rank's random streams where the checkpoint left them; an older checkpoint without them
        resumes with this process's streams (seeded by `train.seed`), which is not what an uninterrupted run would
        draw. So does a rank the checkpoint has no state for: it was written by fewer processes."""
        if state.get("rng") is None:
            logger.warning("checkpoint has no RNG state (written before it was saved): dropout masks from step %d "
                           "on differ from an uninterrupted run's, so the adapter is not reproducible", step + 1)
            return
        written_by = state.get("world_size", 1)
        if written_by != self.world.size and self.world.is_main:
            logger.warning("the checkpoint was written by %d process(es), this run has %d: the optimisation is the "
                           "same (the global batch does not depend on it), but batches split otherwise, so dropout "
                           "masks from step %d on differ from an uninterrupted run's", written_by, self.world.size,
                           step + 1)
        saved = state["rng"] if self.world.is_main else state.get("rng_other_ranks", {}).get(self.world.rank)
        if saved is None:
            logger.warning("rank %d: the checkpoint was written by %d process(es) and holds no RNG state for this "
                           "rank; its dropout masks from step %d on differ from an uninterrupted run's",
                           self.world.rank, written_by, step + 1)
            return
        RNGState.from_dict(saved).restore()

    def _resume_scheduler(self, saved: dict | None, step: int) -> None:
        """Restore the lr schedule; a checkpoint from before schedulers existed is fast-forwarded `step` steps."""
        assert self.scheduler is not None
        if saved is not None:
            self.scheduler.load_state_dict(saved)
            return
        logger.warning("checkpoint has no lr scheduler state; fast-forwarding the schedule %d steps", step)
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr  # the recursive cosine steps from the lr it finds: start it where it started
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                self.scheduler.step()


@dataclass(frozen=True)
class TrainJob:
    """One adapter's training as rank 0 hands it to every other rank of a launch: the student to load, the recipe,
    and the items and teacher signal only rank 0 computed (a top-k cache travels whole; a full-logits store as its
    folder, read where rank 0 wrote it). In one process it is simply the arguments of the training."""

    student: ModelConfig
    lora: LoRAConfig
    train: TrainConfig
    temperature: float
    alpha: float
    pad_token_id: int
    kl_direction: str
    topk_tail: str
    items: list[TrainItem] | list[PublishedItem]
    teacher: TopKCache | FullLogitsStore | None
    output_dir: Path


def load_for_training(student: ModelConfig):
    """(model, tokenizer): the student's base weights, without adapter, on this rank's training device (under a
    launcher each rank holds one whole copy on its own GPU, which DDP needs, so a device_map is dropped), with the
    right padding of training batches."""
    from bench.models.hf import load_model_and_tokenizer, resolve_dtype

    world = connect_world()
    device = world.training_device(student.device)
    config = replace(student, adapter_path=None, device_map=None if world.distributed else student.device_map)
    model, tokenizer, _ = load_model_and_tokenizer(config, device, resolve_dtype(config.dtype, device))
    tokenizer.padding_side = "right"
    return model, tokenizer


def train_adapter(job: TrainJob, model=None, progress: bool = True,
                  on_log: Callable[[dict], None] | None = None) -> TrainReport:
    """Train `job`'s adapter. Rank 0 of a launch first hands the job to the other ranks (waiting in
    `serve_train_jobs`), and they train it together. `model` is the student already loaded by
    `load_for_training` (rank 0 has it, to tokenize the items), else it is loaded here."""
    world = connect_world()
    if world.is_main:
        world.broadcast(job)
    if model is None:
        model, _ = load_for_training(job.student)
    trainer = LoRATrainer(model, job.lora, job.train, job.temperature, job.alpha, job.pad_token_id,
                          progress=progress, kl_direction=job.kl_direction, topk_tail=job.topk_tail)
    return trainer.train(job.items, job.teacher, job.output_dir, on_log=on_log)


def serve_train_jobs() -> dict[str, Any]:
    """A whole run for a rank other than 0: train every adapter rank 0 hands over, until it sends `RunFinished`;
    returns the run's metrics as rank 0 wrote them. It writes nothing: rank 0 does, for all."""
    world = connect_world()
    if world.is_main:
        raise RuntimeError("rank 0 runs the run itself; only the other ranks serve its train jobs")
    while True:
        message = world.broadcast(None)
        if isinstance(message, RunFinished):
            return message.metrics
        if not isinstance(message, TrainJob):
            raise TypeError(f"rank {world.rank} expected a train job from rank 0, got {type(message).__name__}")
        train_adapter(message, progress=False)
