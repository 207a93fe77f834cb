"""The teacher's signal, computed once and kept on disk, so training never runs the teacher (which may be far larger
than the student):
- TopKCache: top-k logits at the aligned answer positions (`reference`, `primed_response` signals), k values and
  k indices per answer token instead of a full vocabulary row (49k floats for SmolLM2), plus the teacher's
  tempered mass outside its top k that the `rest_bucket` tail needs; TopKItemStore keeps the same entries one
  file per item while a served teacher fills them (bench/training/served_logprobs.py), so that path resumes
  item by item;
- FullLogitsStore: full-vocabulary logits at the first positions of the raw primed question (`published`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.training.batching import right_padded
from bench.training.kd import AlignedSequence, answer_logits, teacher_topk


class TopKCache:
    """example id -> (indices int32 [L, k], logits float16 [L, k][, log_rest float32 [L]]); one torch file.

    log_rest (kd.teacher_topk) is the log of the teacher's probability mass outside its top k at `temperature`;
    caches computed without a temperature hold only the first two.
    """

    def __init__(self, entries: dict[str, tuple[torch.Tensor, ...]], k: int,
                 temperature: float | None = None) -> None:
        self.entries = entries
        self.k = k
        self.temperature = temperature

    def __getitem__(self, example_id: str) -> tuple[torch.Tensor, ...]:
        return self.entries[example_id]

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        torch.save({"k": self.k, "temperature": self.temperature, "entries": self.entries}, temp)
        temp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TopKCache:
        data = torch.load(path, weights_only=True)
        return cls(data["entries"], data["k"], data.get("temperature"))

    def trimmed(self, lengths: dict[str, int]) -> TopKCache:
        """The first `lengths[id]` answer positions of each listed entry (the student's span may be shorter)."""
        return TopKCache({i: tuple(t[:n] for t in self.entries[i]) for i, n in lengths.items()}, self.k,
                         self.temperature)


SEQUENCE_REMEDY = "Use method.signal=sequence (the student learns from teacher-written solutions)."


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, remedy: str = SEQUENCE_REMEDY) -> None:
    """Token-level KD compares distributions token by token: both sides must share one vocabulary. `remedy` is the
    method's own way out, said in the error."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ValueError("token-level KD needs the teacher and the student to share a tokenizer; these differ. "
                         + remedy)


@torch.inference_mode()
def compute_topk(model, sequences: dict[str, AlignedSequence], k: int, batch_size: int = 4,
                 pad_token_id: int = 0, progress: bool = True, temperature: float | None = None) -> TopKCache:
    """Top-k teacher logits at each sequence's answer positions (right-padded batches, one forward each), and,
    given the KD `temperature`, the tempered log-mass outside the top k at each position (for `rest_bucket`)."""
    device = next(model.parameters()).device
    ids: Sequence[str] = list(sequences)
    entries: dict[str, tuple[torch.Tensor, ...]] = {}
    for start in tqdm(range(0, len(ids), batch_size), desc="teacher top-k", disable=not progress):
        batch = [sequences[i] for i in ids[start:start + batch_size]]
        input_ids, attention = right_padded([s.input_ids for s in batch], pad_token_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        lengths = [s.answer_length for s in batch]
        rows = answer_logits(logits, [s.answer_start for s in batch], lengths)
        if temperature is None:
            values, indices = rows.float().topk(k, dim=-1)
            parts: tuple[torch.Tensor, ...] = (indices.to(torch.int32), values.to(torch.float16))
        else:
            parts = teacher_topk(rows, k, temperature)
        offset = 0
        for example_id, length in zip(ids[start:start + batch_size], lengths):
            entries[example_id] = tuple(part[offset:offset + length].cpu() for part in parts)
            offset += length
    return TopKCache(entries, k, temperature)


def item_path(directory: Path, example_id: str) -> Path:
    """One file per example id: a readable slug plus a hash, so ids that slug alike never share a file."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", example_id)
    return directory / f"{slug}-{hashlib.sha1(example_id.encode()).hexdigest()[:8]}.pt"


class TopKItemStore:
    """example id -> (TopKCache entry, the teacher tokens it cost), one torch file per item in a folder.

    A served teacher answers item by item over the network; keeping each answer as it arrives means a killed or
    failed priming phase re-asks only for the items it lacks, and the tokens already paid for are still counted.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __contains__(self, example_id: str) -> bool:
        return item_path(self.directory, example_id).exists()

    def __getitem__(self, example_id: str) -> tuple[tuple[torch.Tensor, ...], dict[str, int]]:
        path = item_path(self.directory, example_id)
        if not path.exists():
            raise KeyError(f"no teacher top-k stored for {example_id!r} in {self.directory}")
        data = torch.load(path, weights_only=True)
        return tuple(data["parts"]), dict(data["usage"])

    def put(self, example_id: str, parts: tuple[torch.Tensor, ...], usage: dict[str, int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = item_path(self.directory, example_id)
        temp = path.with_suffix(".tmp")
        torch.save({"parts": [part.contiguous().clone() for part in parts], "usage": dict(usage)}, temp)
        temp.replace(path)


class FullLogitsStore:
    """example id -> the teacher's full-vocabulary logits [n, V] (float16), one file per example in a folder.

    For the `published` signal, which compares full distributions position by position as the public RP-KD code
    did (it saved the 405B teacher's logits to disk the same way). Only the first n = min(teacher, student,
    label lengths) positions are kept: the loss never reads past them. One file per example makes priming
    resumable item by item and keeps training memory at one batch of rows, whatever the number of items.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, example_id: str) -> Path:
        return item_path(self.directory, example_id)

    def __contains__(self, example_id: str) -> bool:
        return self._path(example_id).exists()

    def __getitem__(self, example_id: str) -> torch.Tensor:
        path = self._path(example_id)
        if not path.exists():
            raise KeyError(f"no teacher logits stored for {example_id!r} in {self.directory}")
        return torch.load(path, weights_only=True)

    def put(self, example_id: str, logits: torch.Tensor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(example_id)
        temp = path.with_suffix(".tmp")
        torch.save(logits.to(torch.float16).cpu().contiguous().clone(), temp)
        temp.replace(path)


def check_disk_room(directory: Path, needed_bytes: int) -> None:
    """Fail before the teacher runs when its logits cannot fit on the disk, saying how much they need."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed_bytes > 0.95 * free:
        raise ValueError(f"the published signal stores full-vocabulary teacher logits: about "
                         f"{needed_bytes / 2**30:.1f} GiB for these items, but {directory} has "
                         f"{free / 2**30:.1f} GiB free. Free space, lower method.train_limit, or use "
                         "method.signal=reference (top-k logits on aligned answer tokens).")


@torch.inference_mode()
def compute_full_logits(model, sequences: dict[str, tuple[Sequence[int], int]], store: FullLogitsStore,
                        batch_size: int = 4, pad_token_id: int = 0, progress: bool = True) -> FullLogitsStore:
    """The teacher's logits at the first `n` positions of each (token ids, n), into `store`; items already there
    are skipped, so a killed priming phase resumes where it stopped."""
    device = next(model.parameters()).device
    todo = [example_id for example_id in sequences if example_id not in store]
    for start in tqdm(range(0, len(todo), batch_size), desc="teacher logits", disable=not progress):
        ids = todo[start:start + batch_size]
        input_ids, attention = right_padded([list(sequences[i][0]) for i in ids], pad_token_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, example_id in enumerate(ids):
            store.put(example_id, logits[row, :sequences[example_id][1]])
    return store
