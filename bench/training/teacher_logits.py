"""The teacher's signal for token-level KD: one forward pass, top-k logits at the answer positions, on disk.

Training then never runs the teacher (which may be far larger than the student) and memory stays bounded:
k values and k indices per answer token instead of a full vocabulary row (49k floats for SmolLM2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.training.kd import AlignedSequence, answer_logits


class TopKCache:
    """example id -> (indices int32 [L, k], logits float16 [L, k]); saved atomically as one torch file."""

    def __init__(self, entries: dict[str, tuple[torch.Tensor, torch.Tensor]], k: int) -> None:
        self.entries = entries
        self.k = k

    def __getitem__(self, example_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entries[example_id]

    def __contains__(self, example_id: str) -> bool:
        return example_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        torch.save({"k": self.k, "entries": self.entries}, temp)
        temp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TopKCache:
        data = torch.load(path, weights_only=True)
        return cls(data["entries"], data["k"])


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Token-level KD compares distributions token by token: both sides must share one vocabulary."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ValueError("token-level KD needs the teacher and the student to share a tokenizer; these differ. "
                         "Use method.signal=sequence (the student learns from teacher-written solutions).")


@torch.inference_mode()
def compute_topk(model, sequences: dict[str, AlignedSequence], k: int, batch_size: int = 4,
                 pad_token_id: int = 0, progress: bool = True) -> TopKCache:
    """Top-k teacher logits at each sequence's answer positions (right-padded batches, one forward each)."""
    device = next(model.parameters()).device
    ids: Sequence[str] = list(sequences)
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in tqdm(range(0, len(ids), batch_size), desc="teacher top-k", disable=not progress):
        batch = [sequences[i] for i in ids[start:start + batch_size]]
        width = max(len(s.input_ids) for s in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(batch):
            input_ids[row, :len(sequence.input_ids)] = torch.tensor(sequence.input_ids)
            attention[row, :len(sequence.input_ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        lengths = [s.answer_length for s in batch]
        rows = answer_logits(logits, [s.answer_start for s in batch], lengths)
        values, indices = rows.float().topk(k, dim=-1)
        offset = 0
        for example_id, length in zip(ids[start:start + batch_size], lengths):
            entries[example_id] = (indices[offset:offset + length].to(torch.int32).cpu(),
                                   values[offset:offset + length].to(torch.float16).cpu())
            offset += length
    return TopKCache(entries, k)
