"""Model backends behind one protocol; `build_model` picks the backend from config and adds the cache."""

from __future__ import annotations

from pathlib import Path

from bench.config import CacheConfig, ModelConfig
from bench.models.backends import BACKENDS
from bench.models.base import ChatModel, Completion, GenerationRequest, Message, SamplingParams


def build_model(config: ModelConfig, cache: CacheConfig | None = None, server_log: Path | None = None) -> ChatModel:
    """The configured backend (bench/models/backends/), wrapped in the persistent generation cache unless
    cache.enabled is false. A config with server.engine set is served by a server the harness starts on first use
    (bench/models/served.py), whose output goes to `server_log`; stop it with the model's `stop_server()`."""
    if config.server.managed:
        from bench.models.served import ServedModel

        model: ChatModel = ServedModel(config, log_path=server_log).chat_model()
    else:
        model = BACKENDS.get(config.backend)(config)  # an unknown name is refused, listing the registered ones
    return with_cache(model, cache)


def with_cache(model: ChatModel, cache: CacheConfig | None) -> ChatModel:
    """`model` behind the persistent generation cache, unless there is no cache config or it is disabled."""
    if cache is None or not cache.enabled:
        return model
    from bench.models.cache import CachedChatModel, open_generation_cache

    return CachedChatModel(model, open_generation_cache(cache), flush_every=cache.flush_every)


__all__ = ["BACKENDS", "ChatModel", "Completion", "GenerationRequest", "Message", "SamplingParams", "build_model",
           "with_cache"]
