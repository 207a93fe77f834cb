"""The openai backend against real OpenAI-protocol servers on localhost: `transformers serve` and a scripted one."""

from __future__ import annotations

import openai
import pytest
from scripted_server import ScriptedServer

from bench.models.base import GenerationRequest, SamplingParams
from bench.models.cache import CachedChatModel, GenerationCache
from bench.models.cost import Price
from bench.models.openai_api import EmptyReplyError, MissingAPIKeyError, OpenAIChatModel

pytestmark = pytest.mark.timeout(300)


def _requests(n: int = 3, **params) -> list[GenerationRequest]:
    return [GenerationRequest.chat("Be brief.", f"What is {i} + {i}?", SamplingParams(max_new_tokens=8, **params))
            for i in range(n)]


def test_generates_against_transformers_serve(openai_server) -> None:
    base_url, model_name = openai_server
    model = OpenAIChatModel(model_name, base_url=base_url, max_concurrency=2, price=Price(1.0, 2.0))
    completions = model.generate(_requests(3), progress=False)
    assert len(completions) == 3
    for completion in completions:
        assert completion.text  # the tiny random model always says something
        assert completion.prompt_tokens > 5 and 0 < completion.completion_tokens <= 8
        assert completion.latency_s > 0
        assert completion.cost_usd == pytest.approx((completion.prompt_tokens + 2 * completion.completion_tokens) / 1e6)
    assert model.model_id == f"{model_name}@{base_url}"


def test_cache_makes_a_rerun_free(openai_server, tmp_path) -> None:
    base_url, model_name = openai_server
    inner = OpenAIChatModel(model_name, base_url=base_url)
    calls = []
    original = inner._complete
    inner._complete = lambda request: calls.append(request) or original(request)  # type: ignore[method-assign]
    cached = CachedChatModel(inner, GenerationCache(tmp_path / "cache.sqlite"))
    first = cached.generate(_requests(2), progress=False)
    assert len(calls) == 2
    second = cached.generate(_requests(2), progress=False)
    assert len(calls) == 2, "a re-run must not reach the server"
    assert [c.text for c in first] == [c.text for c in second] and all(c.cached for c in second)


def test_retries_on_429_and_500_then_succeeds() -> None:
    delays: list[float] = []
    with ScriptedServer([429, 500, 503]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_retries=5, sleep=delays.append)
        completion = model.generate(_requests(1), progress=False)[0]
    assert completion.text == "The answer is 4."
    assert len(server.requests) == 4 and len(delays) == 3
    assert delays[0] < delays[2]  # exponential backoff


def test_gives_up_after_max_retries() -> None:
    with ScriptedServer([500] * 10) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_retries=2, sleep=lambda _: None)
        with pytest.raises(openai.InternalServerError):
            model.generate(_requests(1), progress=False)
    assert len(server.requests) == 3


@pytest.mark.parametrize(("status", "error"), [(400, openai.BadRequestError), (401, openai.AuthenticationError)])
def test_client_errors_fail_at_once(status: int, error: type[Exception]) -> None:
    with ScriptedServer([status]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, sleep=lambda _: None)
        with pytest.raises(error, match="scripted status"):
            model.generate(_requests(1), progress=False)
    assert len(server.requests) == 1


def test_sends_all_sampling_parameters() -> None:
    with ScriptedServer([]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url)
        params = SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.9, stop=("\n\n",), seed=3, n=2)
        completion = model.generate([GenerationRequest.chat("s", "u", params)], progress=False)[0]
    body = server.requests[0]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"], body["seed"], body["n"]) == (
        7, 0.7, 0.9, ["\n\n"], 3, 2)
    assert body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert len(completion.texts) == 2


def test_missing_api_key_is_a_clear_error_before_any_call(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        OpenAIChatModel("gpt-4o")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="MY_KEY"):
        OpenAIChatModel("llama", base_url="https://example.org/v1", api_key_env="MY_KEY")
    OpenAIChatModel("local", base_url="http://127.0.0.1:9/v1")  # local servers need no key


def test_a_reply_without_choices_is_an_error_and_never_cached(tmp_path) -> None:
    """It used to be cached as a completion whose .text raised IndexError on every later run, without a request."""
    cache = GenerationCache(tmp_path / "cache.sqlite")
    with ScriptedServer(choices=0) as server:
        model = CachedChatModel(OpenAIChatModel("m", base_url=server.base_url, max_retries=0), cache)
        with pytest.raises(EmptyReplyError, match="0 choices for a request of n=1"):
            model.generate(_requests(1), progress=False)
        assert len(cache) == 0
        server.choices = None  # the server recovers: the same request is sent again, and answered
        assert model.generate(_requests(1), progress=False)[0].text == "The answer is 4."
        assert len(server.requests) == 2 and len(cache) == 1
