"""OpenAI and any OpenAI-compatible server (vLLM, `transformers serve`) behind the ChatModel protocol.

Retries are done here rather than by the client (max_retries=0 there) so the policy is explicit and testable:
exponential backoff with jitter on 429, 5xx, timeouts and dropped connections; other errors (400, 401, 404) mean
the request itself is wrong and fail at once with the server's message.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import openai
from tqdm.auto import tqdm

from bench.config import ModelConfig
from bench.models.base import Completion, GenerationRequest
from bench.models.cost import Price

logger = logging.getLogger(__name__)

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class EmptyReplyError(RuntimeError):
    """The server answered 200 but without the completions asked for."""


class MissingAPIKeyError(RuntimeError):
    pass


def _retryable(error: Exception) -> bool:
    if isinstance(error, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                          openai.InternalServerError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def _is_local(base_url: str | None) -> bool:
    return base_url is not None and urlparse(base_url).hostname in _LOCAL_HOSTS


class OpenAIChatModel:
    backend = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 5, request_timeout_s: float = 120.0,
                 price: Price | None = None, client: openai.OpenAI | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            if not _is_local(base_url):
                target = base_url or "the OpenAI API"
                raise MissingAPIKeyError(f"model {model!r} at {target} needs an API key: set the environment "
                                         f"variable {api_key_env} (or teacher/student.api_key_env)")
            api_key = "local-no-key"  # local servers ignore the key, but the client insists on one
        self.model = model
        self.base_url = base_url
        self.max_concurrency = max(1, max_concurrency)
        self.max_retries = max_retries
        self.price = price or Price()
        self._sleep = sleep
        self.client = client or openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                              timeout=request_timeout_s)

    @classmethod
    def from_config(cls, config: ModelConfig) -> OpenAIChatModel:
        return cls(config.model_id, base_url=config.base_url, api_key_env=config.api_key_env,
                   max_concurrency=config.max_concurrency, max_retries=config.max_retries,
                   request_timeout_s=config.request_timeout_s,
                   price=Price(config.price_input_per_mtok, config.price_output_per_mtok))

    @property
    def model_id(self) -> str:
        return f"{self.model}@{self.base_url or 'api.openai.com'}"

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            results = pool.map(self._complete, requests)
            return list(tqdm(results, total=len(requests), desc=f"generate {self.model[:40]}", unit="req",
                             disable=not progress))

    def _complete(self, request: GenerationRequest) -> Completion:
        params = request.params
        arguments = dict(model=self.model, messages=[{"role": m.role, "content": m.content} for m in request.messages],
                         max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                         seed=params.seed, n=params.n)
        if params.stop:
            arguments["stop"] = list(params.stop)
        started = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(**arguments)
                break
            except Exception as error:
                if not _retryable(error) or attempt == self.max_retries:
                    raise
                delay = min(60.0, 2.0**attempt) * (0.5 + random.random() / 2)
                logger.warning("%s: %s; retry %d/%d in %.1fs", self.model, type(error).__name__, attempt + 1,
                               self.max_retries, delay)
                self._sleep(delay)
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        choices = sorted(response.choices or [], key=lambda choice: choice.index)
        if len(choices) != params.n:  # raised, so never cached: a re-run asks again
            raise EmptyReplyError(f"{self.model} answered with {len(choices)} choices for a request of n={params.n}; "
                                  "a reply without its completions is an error, not a result")
        finish = "length" if any(c.finish_reason == "length" for c in choices) else "stop"
        return Completion(texts=tuple(c.message.content or "" for c in choices), prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, finish_reason=finish,
                          latency_s=time.perf_counter() - started,
                          cost_usd=self.price.cost(prompt_tokens, completion_tokens))
