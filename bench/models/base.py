"""The one model interface students and teachers share: chat requests in, completions out.

Kept deliberately small (as lm-evaluation-harness's `LM`): batching, retries and caching live inside or around a
backend, never in the methods that call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Everything that changes what a model returns for the same messages; all of it is part of the cache key."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 with temperature 0 would return n identical greedy samples; set temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def chat(cls, system: str | None, user: str, params: SamplingParams | None = None) -> GenerationRequest:
        messages = ((Message("system", system),) if system else ()) + (Message("user", user),)
        return cls(messages, params or SamplingParams())

    def to_dict(self) -> dict:
        return {"messages": [asdict(m) for m in self.messages], "params": asdict(self.params)}


@dataclass(frozen=True)
class Completion:
    """One sample for one request. `texts` holds n samples when params.n > 1; `text` is the first."""

    texts: tuple[str, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Completion:
        return cls(**{**data, "texts": tuple(data["texts"])})


@runtime_checkable
class ChatModel(Protocol):
    """A chat model: `generate` returns one Completion per request, in request order."""

    @property
    def model_id(self) -> str:
        """Identifies the weights (name + revision/adapter/quantisation): part of every cache key."""
        ...

    @property
    def backend(self) -> str:
        ...

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        ...
