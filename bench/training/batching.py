"""Batches of token sequences of different lengths, as every forward pass of the harness's training side takes them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def right_padded(sequences: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, attention_mask) [batch, longest] with each sequence at the left and `pad_value` after it: a causal
    model's real positions never attend to the padding, so each row's logits equal its logits alone. `pad_value`
    is the pad token for input ids, or the ignore index for labels."""
    width = max(len(tokens) for tokens in sequences)
    values = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        values[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, :len(tokens)] = 1
    return values, attention
