"""`backend: openai`: any OpenAI-compatible chat endpoint (OpenAI, vLLM, `transformers serve`, ...),
bench/models/openai_api.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.models.backends import register_backend

if TYPE_CHECKING:
    from bench.config import ModelConfig
    from bench.models.base import ChatModel


@register_backend("openai")
def openai_backend(config: ModelConfig) -> ChatModel:
    from bench.models.openai_api import OpenAIChatModel

    return OpenAIChatModel.from_config(config)
