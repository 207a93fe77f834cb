"""Model backends behind one protocol; `build_model` picks the backend from config and adds the cache."""

from __future__ import annotations

from bench.config import CacheConfig, ModelConfig
from bench.models.base import ChatModel, Completion, GenerationRequest, Message, SamplingParams

BACKENDS = ("hf", "openai")


def build_model(config: ModelConfig, cache: CacheConfig | None = None) -> ChatModel:
    """The configured backend, wrapped in the persistent generation cache unless cache.enabled is false."""
    if config.backend == "hf":
        from bench.models.hf import HFChatModel

        model: ChatModel = HFChatModel.from_config(config)
    elif config.backend == "openai":
        from bench.models.openai_api import OpenAIChatModel

        model = OpenAIChatModel.from_config(config)
    else:
        raise ValueError(f"unknown backend {config.backend!r} for model {config.name!r}; expected one of {BACKENDS}")
    if cache is not None and cache.enabled:
        from bench.models.cache import CachedChatModel, open_generation_cache

        model = CachedChatModel(model, open_generation_cache(cache), flush_every=cache.flush_every)
    return model


__all__ = ["BACKENDS", "ChatModel", "Completion", "GenerationRequest", "Message", "SamplingParams", "build_model"]
