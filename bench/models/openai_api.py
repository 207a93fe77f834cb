"""OpenAI and any OpenAI-compatible server (vLLM, `transformers serve`) behind the ChatModel protocol.

Retries are done here rather than by the client (max_retries=0 there) so the policy is explicit and testable:
exponential backoff with jitter on 429, 5xx, timeouts and dropped connections, or exactly the wait the server asks
for in `Retry-After` (seconds or an HTTP date; `retry-after-ms` too), capped at `max_retry_after_s`; other errors
(400, 401, 404) mean the request itself is wrong and fail at once with the server's message.

A batch runs on daemon worker threads that share one stop event:
- a request that fails for good stops the batch: nothing new is sent (queued requests stay unsent, retries
  waiting in backoff give up), the requests already on the wire are awaited because they are paid for, and
  `generate` raises PartialGenerationError carrying every reply that arrived (the error itself when none did);
- Ctrl-C (any BaseException in the calling thread) stops the batch the same way but does not wait: it raises
  GenerationInterrupted with the replies that had arrived. Workers are daemon threads, so a request still on the
  wire cannot hold up interpreter exit for the request timeout (a ThreadPoolExecutor's threads are joined at exit).

A 200 whose body is not a chat completion (an HTML page, truncated JSON, `{"error": ...}`) raises
UnreadableReplyError naming the URL, status and the start of the body. It is not retried: such a 200 almost
always means base_url points at something that is not an OpenAI-compatible /v1 endpoint, which no retry heals,
while a proxy that is briefly failing answers 502/503/504, and those are retried by status.
"""

from __future__ import annotations

import email.utils
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from urllib.parse import urlparse

import openai
from openai.types.chat import ChatCompletion

from bench.config import ModelConfig
from bench.models.base import Completion, GenerationInterrupted, GenerationRequest, PartialGenerationError
from bench.models.cost import Price
from bench.models.progress import GenerationProgress, progress_for

logger = logging.getLogger(__name__)

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
BACKOFF_CAP_S = 60.0
RETRY_AFTER_CAP_S = 60.0  # a server asking for longer (a spent daily quota) is not waited out, the run fails
BODY_EXCERPT_CHARS = 200


class EmptyReplyError(RuntimeError):
    """The server answered 200 but without the completions asked for."""


class UnreadableReplyError(RuntimeError):
    """The server answered 200 with something that is not a chat completion (HTML, truncated JSON, an error)."""


class RequestNotSent(RuntimeError):
    """The batch was stopped (a sibling failed, or Ctrl-C) before this request was sent or re-sent."""


class MissingAPIKeyError(RuntimeError):
    pass


def _retryable(error: Exception) -> bool:
    if isinstance(error, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                          openai.InternalServerError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def _is_local(base_url: str | None) -> bool:
    return base_url is not None and urlparse(base_url).hostname in _LOCAL_HOSTS


def retry_after_s(error: Exception, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, or `Retry-After` as seconds or an HTTP date), if any.

    Servers that rate-limit say when capacity returns; retrying sooner only earns more 429s."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own backoff
    return None if when.tzinfo is None else max(0.0, when.timestamp() - now())


def _check_settings(model: str, max_concurrency: int, max_retries: int, request_timeout_s: float,
                    max_retry_after_s: float) -> None:
    """Refuse impossible settings when the model is built, naming the config key, not deep in a worker thread
    (max_retries=-1 used to pass here and crash on the first request)."""
    checks = [("max_concurrency", max_concurrency >= 1, f"must be >= 1, got {max_concurrency}"),
              ("max_retries", max_retries >= 0, f"must be >= 0 (0 = no retries), got {max_retries}"),
              ("request_timeout_s", request_timeout_s > 0, f"must be > 0, got {request_timeout_s}"),
              ("max_retry_after_s", max_retry_after_s >= 0, f"must be >= 0, got {max_retry_after_s}")]
    problems = [f"teacher.{key} (or student.{key}) {rule}" for key, valid, rule in checks if not valid]
    if problems:
        raise ValueError(f"model {model!r}: " + "; ".join(problems))


def _excerpt(text: str) -> str:
    return repr(text[:BODY_EXCERPT_CHARS]) + (" ..." if len(text) > BODY_EXCERPT_CHARS else "")


def _describe_status_error(error: Exception) -> None:
    """Add the URL, status and start of the body to a final HTTP error (the client's message can be just
    'Error code: 503' when a proxy answered with an HTML page)."""
    if isinstance(error, openai.APIStatusError):
        response = error.response
        error.add_note(f"POST {response.request.url} answered {response.status_code}; body: "
                       f"{_excerpt(response.text)}")


@dataclass
class _Batch:
    """One `generate` call's shared state: worker threads fill `results`/`errors`, the caller waits on `done`."""

    requests: list[GenerationRequest]
    stop: threading.Event = field(default_factory=threading.Event)
    pending: queue.Queue = field(default_factory=queue.Queue)  # indexes not yet taken by a worker
    done: queue.Queue = field(default_factory=queue.Queue)  # finished indexes; None = a worker exited
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[Completion | None] = field(init=False)
    errors: list[Exception | None] = field(init=False)
    first_error: Exception | None = None

    def __post_init__(self) -> None:
        self.results = [None] * len(self.requests)
        self.errors = [None] * len(self.requests)
        for index in range(len(self.requests)):
            self.pending.put(index)

    def fail(self, index: int, error: Exception) -> None:
        """Record a failed slot; a real failure (not a request the stop left unsent) stops the batch."""
        with self.lock:
            self.errors[index] = error
            if not isinstance(error, RequestNotSent) and self.first_error is None:
                self.first_error = error
                self.stop.set()

    def answered(self) -> int:
        return sum(result is not None for result in self.results)


class OpenAIChatModel:
    backend = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 5, request_timeout_s: float = 120.0,
                 price: Price | None = None, client: openai.OpenAI | None = None,
                 sleep: Callable[[float], None] | None = None, max_retry_after_s: float = RETRY_AFTER_CAP_S) -> None:
        """`sleep` replaces the backoff wait (tests); by default the wait is on the batch's stop event, so Ctrl-C
        or a failed sibling ends it at once instead of after the full backoff."""
        _check_settings(model, max_concurrency, max_retries, request_timeout_s, max_retry_after_s)
        api_key = os.environ.get(api_key_env)
        if not api_key:
            if not _is_local(base_url):
                target = base_url or "the OpenAI API"
                raise MissingAPIKeyError(f"model {model!r} at {target} needs an API key: set the environment "
                                         f"variable {api_key_env} (or teacher/student.api_key_env)")
            api_key = "local-no-key"  # local servers ignore the key, but the client insists on one
        self.model = model
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.price = price or Price()
        self._sleep = sleep
        self.client = client or openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                              timeout=request_timeout_s)

    @classmethod
    def from_config(cls, config: ModelConfig, model: str | None = None, base_url: str | None = None
                    ) -> OpenAIChatModel:
        """`model`/`base_url` replace the config's: a managed server (bench/models/served.py) serves model_id under
        a name of its own, at an address it picked."""
        return cls(model or config.model_id, base_url=base_url or config.base_url, api_key_env=config.api_key_env,
                   max_concurrency=config.max_concurrency, max_retries=config.max_retries,
                   request_timeout_s=config.request_timeout_s,
                   price=Price(config.price_input_per_mtok, config.price_output_per_mtok))

    @property
    def model_id(self) -> str:
        return f"{self.model}@{self.base_url or 'api.openai.com'}"

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: bool | GenerationProgress = True) -> list[Completion]:
        """One completion per request, in order. Raises PartialGenerationError (arrived replies attached) when a
        request fails and others were answered, the failure itself when none was, GenerationInterrupted on Ctrl-C."""
        if not requests:
            return []
        batch = _Batch(list(requests))
        workers = [threading.Thread(target=self._work, args=(batch,), daemon=True, name=f"openai-request-{i}")
                   for i in range(min(self.max_concurrency, len(requests)))]
        bar, owned = progress_for(progress, len(requests), f"generate {self.model[:40]}")
        try:
            for worker in workers:  # started inside the try: a Ctrl-C landing here still stops those running
                worker.start()
            self._await(batch, len(workers), bar)
        except KeyboardInterrupt as interrupt:
            batch.stop.set()  # no request is sent after this; those on the wire are abandoned, not awaited
            raise GenerationInterrupted(f"interrupted: {batch.answered()} of {len(requests)} requests to "
                                        f"{self.model_id} had been answered; no further request was sent",
                                        batch.results) from interrupt
        except BaseException:
            batch.stop.set()
            raise
        finally:
            if owned:
                bar.close()
        return self._outcome(batch)

    @staticmethod
    def _await(batch: _Batch, workers: int, bar: GenerationProgress) -> None:
        """Wait until every worker has exited: all requests answered or failed, or the batch stopped and the
        requests on the wire came back. Queue.get blocks interruptibly, so Ctrl-C lands here at once."""
        exited = 0
        while exited < workers:
            index = batch.done.get()
            if index is None:
                exited += 1
            else:
                bar.completed(index, batch.results[index])

    def _outcome(self, batch: _Batch) -> list[Completion]:
        if batch.first_error is None:
            return batch.results  # type: ignore[return-value]  # no failure: every slot is filled
        _describe_status_error(batch.first_error)
        answered = batch.answered()
        if answered == 0:
            raise batch.first_error  # nothing to keep: the error as the client raised it
        failed = sum(error is not None and not isinstance(error, RequestNotSent) for error in batch.errors)
        unsent = len(batch.requests) - answered - failed
        raise PartialGenerationError(
            f"{failed} of {len(batch.requests)} requests to {self.model_id} failed ({answered} answered, {unsent} "
            f"not sent after the failure); first error: {type(batch.first_error).__name__}: {batch.first_error}",
            batch.results) from batch.first_error

    def _work(self, batch: _Batch) -> None:
        """A worker: take requests until none is left or the batch is stopped; always report its exit."""
        try:
            while not batch.stop.is_set():
                try:
                    index = batch.pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    batch.results[index] = self._complete(batch.requests[index], batch.stop)
                except Exception as error:  # recorded per slot, raised by generate
                    batch.fail(index, error)
                batch.done.put(index)
        finally:
            batch.done.put(None)

    def _arguments(self, request: GenerationRequest) -> dict:
        params = request.params
        arguments = dict(model=self.model, messages=[{"role": m.role, "content": m.content} for m in request.messages],
                         max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                         seed=params.seed, n=params.n)
        if params.stop:
            arguments["stop"] = list(params.stop)
        return arguments

    def _complete(self, request: GenerationRequest, stop: threading.Event | None = None) -> Completion:
        """One request with retries; checks `stop` before every attempt and waits on it between attempts."""
        arguments = self._arguments(request)
        started = time.perf_counter()
        raw = self.with_retries(lambda: self.client.chat.completions.with_raw_response.create(**arguments), stop)
        return self._completion(raw, request, started)

    def with_retries(self, call: Callable[[], Any], stop: threading.Event | None = None,
                     sleep: Callable[[float], None] | None = None) -> Any:
        """`call()` under this model's retry policy: 429, 5xx, timeouts and dropped connections back off (or wait
        what the server asks, capped); other errors, or the last attempt's, are raised. `stop` set: no further
        attempt is sent (RequestNotSent). `sleep` replaces the wait between attempts (else the model's own)."""
        stop = stop or threading.Event()
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                raise RequestNotSent(f"{self.model}: batch stopped before attempt {attempt + 1} was sent")
            try:
                return call()
            except Exception as error:
                if not _retryable(error) or attempt == self.max_retries:
                    raise
                delay, reason = self._retry_delay(error, attempt)
                logger.warning("%s: %s; retry %d/%d in %.1fs (%s)", self.model, type(error).__name__, attempt + 1,
                               self.max_retries, delay, reason)
                if sleep is not None:
                    sleep(delay)
                else:
                    self._wait(delay, stop)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(self, error: Exception, attempt: int) -> tuple[float, str]:
        asked = retry_after_s(error)
        if asked is not None:
            return min(asked, self.max_retry_after_s), f"server asked for {asked:g}s, cap {self.max_retry_after_s:g}s"
        return min(BACKOFF_CAP_S, 2.0**attempt) * (0.5 + random.random() / 2), "backoff"

    def _wait(self, delay: float, stop: threading.Event) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        else:
            stop.wait(delay)

    def _completion(self, raw, request: GenerationRequest, started: float) -> Completion:
        params = request.params
        response = self._parse(raw)
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        choices = sorted(response.choices, key=lambda choice: choice.index)
        if len(choices) != params.n:  # raised, so never cached: a re-run asks again
            raise EmptyReplyError(f"{self.model} answered with {len(choices)} choices for a request of n={params.n}; "
                                  "a reply without its completions is an error, not a result")
        finish = "length" if any(c.finish_reason == "length" for c in choices) else "stop"
        return Completion(texts=tuple(c.message.content or "" for c in choices), prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, finish_reason=finish,
                          latency_s=time.perf_counter() - started,
                          cost_usd=self.price.cost(prompt_tokens, completion_tokens))

    @staticmethod
    def _parse(raw) -> ChatCompletion:
        """The reply as a ChatCompletion, or UnreadableReplyError saying where it came from and what it said."""
        http = raw.http_response

        def unreadable(why: str) -> UnreadableReplyError:
            return UnreadableReplyError(
                f"POST {http.request.url} answered {http.status_code} with {why}; the body starts: "
                f"{_excerpt(http.text)}. Is base_url an OpenAI-compatible /v1 endpoint? (not retried: a 200 that "
                "is not a chat completion does not heal on retry)")

        try:
            response = raw.parse()
        except ValueError as error:  # json.JSONDecodeError
            raise unreadable(f"a body that is not valid JSON ({error})") from error
        if not isinstance(response, ChatCompletion):
            raise unreadable(f"a {http.headers.get('content-type', 'untyped')} body, not a chat completion")
        if not isinstance(response.choices, list):
            raise unreadable("JSON without a 'choices' list")
        if any(choice.message is None for choice in response.choices):
            raise unreadable("a choice without a 'message'")
        return response
