"""`backend: hf`: a transformers model in this process (bench/models/hf.py), GPU or CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.models.backends import register_backend

if TYPE_CHECKING:
    from bench.config import ModelConfig
    from bench.models.base import ChatModel


@register_backend("hf")
def hf_backend(config: ModelConfig) -> ChatModel:
    from bench.models.hf import HFChatModel

    return HFChatModel.from_config(config)
