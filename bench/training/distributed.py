"""Several processes training one LoRA adapter (`torchrun`, `accelerate launch`): who is who, the process groups,
and the few collectives the trainer needs.

A launcher starts one process per device and tells each its place through the environment (WORLD_SIZE, RANK,
LOCAL_RANK, with MASTER_ADDR/MASTER_PORT for the rendezvous). Without it there is one process, a `World` of size 1,
and every collective here is the identity: the single-process path runs exactly the code it ran before.

Roles in a launched run (`python -m bench method=rpkd ...` under a launcher):
- rank 0 is the run: it claims the run folder, builds the dataset, primes the teacher, evaluates, and alone writes
  (checkpoints, losses.jsonl, adapters, metrics). Nothing that costs teacher calls or evaluations is repeated.
- every other rank only trains: it waits for rank 0 to hand it a train job (`lora_trainer.TrainJob`: the items
  and the teacher signal rank 0 computed), trains its share of each batch, and returns when rank 0 sends
  `RunFinished`. It never opens the run folder, so it cannot contend for the folder's lock; it reads files only
  for `signal=published`, whose teacher logits stay in rank 0's folder (one machine, or a shared results_dir).

Two process groups. The default one is gloo and carries Python objects (jobs, checkpoints, RNG states, loss totals)
with a long timeout: the other ranks wait on it while rank 0 primes and evaluates, hours with an API teacher. DDP's
gradient all-reduce runs on NCCL when training on CUDA (a group made for it), else on that default gloo group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# How long a rank waits on the default group: rank 0 may prime a teacher and evaluate for days between two jobs.
# A rank that dies does not make the others wait this long: its sockets close and the launcher stops the rest.
CONTROL_TIMEOUT = timedelta(days=7)
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class RunFinished:
    """Rank 0's last message of a run: the other ranks stop serving train jobs and return the run's metrics."""

    metrics: dict[str, Any]


@dataclass(frozen=True)
class World:
    """This process's place among the processes a launcher started (rank 0 of 1 without one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size or self.local_rank < 0:
            raise ValueError(f"impossible launch: RANK={self.rank}, WORLD_SIZE={self.size}, "
                             f"LOCAL_RANK={self.local_rank} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        """What torchrun / `accelerate launch` set; a size of 1 (or no launcher) is one plain process."""
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return cls()
        try:
            size = int(environ["WORLD_SIZE"])
            rank = int(environ.get("RANK", "0"))
            local_rank = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            shown = {key: environ.get(key) for key in LAUNCH_VARIABLES}
            raise ValueError(f"the launcher's environment is not numeric: {shown}") from None
        return cls(rank=rank, size=size, local_rank=local_rank) if size > 1 else cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch_split(self, batch_size: int) -> None:
        """Each batch of `batch_size` items is split evenly over the ranks (the global batch stays batch_size ×
        grad_accum, as in one process); an uneven split would give ranks unequal work and memory, so it fails here,
        before any model is loaded or teacher call is paid for."""
        if batch_size % self.size:
            fits = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
            raise ValueError(f"method.train.batch_size={batch_size} does not split evenly over {self.size} processes: "
                             f"each batch is shared by all of them. Use a batch_size that is a multiple of "
                             f"{self.size} (the optimisation is the same whatever the number of processes), or "
                             f"launch {' / '.join(map(str, fits))} processes")

    def shard(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's items among `n`: contiguous, sizes differing by at most one (a short last
        batch of an epoch may leave a rank none)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def training_device(self, configured: str) -> torch.device:
        """Where this rank trains: the configured device alone, or under a launcher on CUDA this rank's own GPU
        (cuda:LOCAL_RANK), since DDP holds one whole copy of the model per GPU."""
        from bench.models.hf import resolve_device

        device = resolve_device(configured)
        if not self.distributed or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {self.rank} has LOCAL_RANK={self.local_rank} but this machine has "
                               f"{torch.cuda.device_count()} GPUs: launch at most one process per GPU")
        return torch.device("cuda", self.local_rank)

    # ------------------------------------------------------------------ collectives (identity in one process)
    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (pickled over the gloo group)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value`, in rank order, on rank 0; None on the others."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 (loss totals for logging)."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def finish_run(self, metrics: dict[str, Any]) -> None:
        """Rank 0: release the other ranks from `serve_train_jobs` with the run's metrics."""
        if self.distributed and self.is_main:
            self.broadcast(RunFinished(metrics))


def connect_world(environ: Mapping[str, str] | None = None) -> World:
    """This process's `World`, its process group joined (once) when a launcher started several processes."""
    world = World.from_environment(environ)
    if not world.distributed:
        return world
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (world.rank, world.size):
            raise RuntimeError(f"a process group of rank {dist.get_rank()}/{dist.get_world_size()} is already "
                               f"initialised, but the launcher says rank {world.rank}/{world.size}")
        return world
    if torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)  # NCCL and "cuda" without an index then mean this rank's GPU
    dist.init_process_group("gloo", timeout=CONTROL_TIMEOUT)
    return world


_NCCL_GROUP: dist.ProcessGroup | None = None


def gradient_group(device: torch.device) -> dist.ProcessGroup | None:
    """The group DDP all-reduces gradients over: NCCL for CUDA tensors (made on first use; every rank makes its
    trainers in the same order, so they make it together), None (the default gloo group) for CPU tensors."""
    global _NCCL_GROUP
    if device.type != "cuda":
        return None
    if _NCCL_GROUP is None:
        _NCCL_GROUP = dist.new_group(backend="nccl")
    return _NCCL_GROUP
