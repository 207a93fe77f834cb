"""The one model interface students and teachers share: chat requests in, completions out.

Kept deliberately small (as lm-evaluation-harness's `LM`): batching, retries and caching live inside or around a
backend, never in the methods that call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bench.models.progress import GenerationProgress


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

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: bool | GenerationProgress = True) -> list[Completion]:
        ...


class PartialGenerationError(RuntimeError):
    """Some requests of a batch failed after others had been answered (and, for paid APIs, billed).

    `completions` has one slot per request, in request order: the Completion that arrived, or None where the request
    failed or was never sent. It exists so no layer drops a paid reply: the cache stores the arrived ones and the
    methods' usage meters count them before the error reaches the user. The first failure is the `__cause__`.
    """

    def __init__(self, message: str, completions: Sequence[Completion | None]) -> None:
        super().__init__(message)
        self.completions: list[Completion | None] = list(completions)


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another interrupt) stopped a batch; `completions` holds the replies that had already arrived.

    A KeyboardInterrupt subclass, so everything that handles Ctrl-C still does; it only carries the finished work
    (same slots as PartialGenerationError.completions) so the cache and usage meters can keep it.
    """

    def __init__(self, message: str, completions: Sequence[Completion | None]) -> None:
        super().__init__(message)
        self.completions: list[Completion | None] = list(completions)


def carried_completions(error: BaseException) -> list[Completion | None]:
    """The per-request slots an error carries (PartialGenerationError, GenerationInterrupted); [] for any other."""
    if isinstance(error, (PartialGenerationError, GenerationInterrupted)):
        return error.completions
    return []


def with_completions(error: BaseException, completions: Sequence[Completion | None]) -> BaseException:
    """`error` re-addressed to a caller's request order, so a wrapper can pass on the replies it holds.

    A carrier error gets its slots replaced (the same exception object travels on, traceback intact); a plain
    KeyboardInterrupt or Exception becomes a GenerationInterrupted / PartialGenerationError; anything else
    (SystemExit, ...) is returned unchanged. Callers `raise result` when it is `error`, else `raise result from error`.
    """
    if isinstance(error, (PartialGenerationError, GenerationInterrupted)):
        error.completions = list(completions)
        return error
    arrived = sum(completion is not None for completion in completions)
    message = f"{arrived} of {len(completions)} requests had completed before: {type(error).__name__}: {error}"
    if isinstance(error, KeyboardInterrupt):
        return GenerationInterrupted(message, completions)
    if isinstance(error, Exception):
        return PartialGenerationError(message, completions)
    return error
