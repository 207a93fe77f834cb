"""The one right-padding helper every training-side forward pass and label batch goes through."""

from __future__ import annotations

import torch

from bench.models.embedded import build_tiny_llama
from bench.training.batching import right_padded
from bench.training.kd import IGNORE, aligned_sequence, answer_ids
from bench.training.lora_trainer import TrainItem, collate


def test_sequences_sit_at_the_left_with_padding_after_them() -> None:
    values, attention = right_padded([(5, 6, 7), [8], (9, 10)], 0)
    assert values.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert attention.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert values.dtype == attention.dtype == torch.long


def test_collate_pads_ids_with_the_pad_token_and_labels_with_the_ignore_index() -> None:
    _, tokenizer = build_tiny_llama(seed=0)
    answers = [answer_ids(tokenizer, "x " * (2 * i + 1)) for i in range(3)]  # different lengths: padding
    items = [TrainItem(f"ex{i}", aligned_sequence(tokenizer, f"Question {i}?", answer, 64))
             for i, answer in enumerate(answers)]
    batch = collate(items, tokenizer.pad_token_id)
    for row, item in enumerate(items):
        ids, n = list(item.sequence.input_ids), len(item.sequence.input_ids)
        padding = batch["input_ids"].size(1) - n
        assert batch["input_ids"][row].tolist() == ids + [tokenizer.pad_token_id] * padding
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * padding
        start = item.sequence.answer_start
        assert batch["labels"][row].tolist() == [IGNORE] * start + ids[start:] + [IGNORE] * padding
    assert any(batch["attention_mask"][row, -1] == 0 for row in range(3))  # the case with padding was exercised
