"""The `published` teacher signal: the public RP-KD computation, defects included, to test whether it reproduces.

What the public code does (github.com/alonso130r/knowledge-distillation, */distill.ipynb and
llama-3.1-405b-6bpw/inference_gsm8k*.ipynb; shared/REFERENCE.md):
- teacher: ONE forward pass over the raw string `priming + question` (no chat template, no solution), encoded
  without special tokens (exllamav2's `encode` adds no BOS by default); its full-vocabulary logits are saved;
- student: the raw question, `tokenizer(question, truncation=True, max_length=256)` (the tokenizer's own special
  tokens: Llama-3.1's BOS), no chat template;
- labels: `tokenizer(answer, truncation=True, max_length=256)`, the dataset's solution verbatim (GSM8K: with its
  `<<...>>` calculator annotations and `#### N`), BOS included where the tokenizer adds one;
- loss at the first n = min(student, labels, teacher) positions, position by position, no shift
  (`kd.published_kd_loss`); the plain fine-tune control is the same computation with CE only.
So the student's question positions are trained against answer tokens and against the teacher's logits at the
same indices of a longer (primed) sequence. The corrected signals live in bench/training/kd.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.training.batching import right_padded
from bench.training.kd import published_kd_loss


@dataclass(frozen=True)
class PublishedItem:
    """One training item as the public code builds it: question-only student ids and the answer's ids as labels."""

    example_id: str
    student_ids: tuple[int, ...]
    label_ids: tuple[int, ...]

    @property
    def positions(self) -> int:
        """How many positions the loss can use before the teacher's length is known: min(student, labels)."""
        return min(len(self.student_ids), len(self.label_ids))


def published_item(tokenizer, example_id: str, question: str, answer: str, max_length: int) -> PublishedItem:
    """`tokenizer(text, truncation=True, max_length=max_length)` for the question and the answer, as published."""
    student = tokenizer(question, truncation=True, max_length=max_length).input_ids
    labels = tokenizer(answer, truncation=True, max_length=max_length).input_ids
    if not student or not labels:
        raise ValueError(f"{example_id}: empty question or answer after tokenization")
    return PublishedItem(example_id, tuple(student), tuple(labels))


def published_teacher_ids(tokenizer, primed_question: str) -> list[int]:
    """The teacher's input: the raw primed string, no chat template and no special tokens (exllamav2 `encode`)."""
    return tokenizer(primed_question, add_special_tokens=False).input_ids


def published_batch_loss(model, items: list[PublishedItem], teacher, temperature: float, alpha: float,
                         pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean over `items` of each item's published loss (at batch size 1, as published, exactly that loss).

    `teacher` maps example id -> full-vocabulary logits [n, V] (teacher_logits.FullLogitsStore), or is None for
    the published fine-tune control (CE only). Items run in one right-padded forward pass; each keeps its own
    first n positions, so padding never enters a loss. Returns (loss, ce, kl) with kl without the T^2 factor.
    """
    device = next(model.parameters()).device
    input_ids, attention = right_padded([item.student_ids for item in items], pad_token_id)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    losses, ces, kds = [], [], []
    for row, item in enumerate(items):
        labels = torch.tensor(item.label_ids, device=device)[None]
        student = logits[row:row + 1, :item.positions]
        if teacher is None or alpha == 1.0:
            n = min(student.size(1), labels.size(1))
            ce = F.cross_entropy(student[0, :n].float(), labels[0, :n])
            losses.append(ce)
            ces.append(ce.detach())
            kds.append(torch.zeros((), device=device))
            continue
        loss, ce, kd = published_kd_loss(student, teacher[item.example_id].to(device)[None], labels, temperature,
                                         alpha)
        losses.append(loss)
        ces.append(ce)
        kds.append(kd / temperature**2)  # logged as the KL itself, like the other signals' `kl`
    return torch.stack(losses).mean(), torch.stack(ces).mean(), torch.stack(kds).mean()
