"""The openai backend against real OpenAI-protocol servers on localhost: `transformers serve` and a scripted one."""

from __future__ import annotations

import email.utils
import time

import openai
import pytest
from scripted_server import ScriptedServer, Step

from bench.config import ModelConfig
from bench.models.base import GenerationRequest, PartialGenerationError, SamplingParams
from bench.models.cache import CachedChatModel, GenerationCache
from bench.models.cost import Price
from bench.models.openai_api import (EmptyReplyError, MissingAPIKeyError, OpenAIChatModel, UnreadableReplyError,
                                     retry_after_s)

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
    inner._complete = (  # type: ignore[method-assign]
        lambda request, stop: calls.append(request) or original(request, stop))
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


# ---------------------------------------------------------------- a failure among siblings, and stopping a batch

def test_one_failed_request_keeps_its_answered_siblings() -> None:
    """It used to raise the one 400 alone: the two replies the server had served (and billed) were dropped."""
    with ScriptedServer([Step(400, delay_s=0.5)], completion_tokens=5) as server:  # the others answer meanwhile
        model = OpenAIChatModel("m", base_url=server.base_url, max_concurrency=3, price=Price(0.0, 1e5))
        with pytest.raises(PartialGenerationError, match="1 of 3 requests .* failed .2 answered") as caught:
            model.generate(_requests(3), progress=False)
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value.__cause__, openai.BadRequestError)
    arrived = [c for c in caught.value.completions if c is not None]
    assert len(caught.value.completions) == 3 and len(arrived) == 2 == server.served
    assert all(c.text == "The answer is 4." and c.cost_usd == pytest.approx(0.5) for c in arrived)


def test_a_failed_request_stops_the_batch_sending_nothing_new() -> None:
    with ScriptedServer([400]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_concurrency=2)
        with pytest.raises((openai.BadRequestError, PartialGenerationError)):  # the sibling may have been answered
            model.generate(_requests(12), progress=False)
    assert len(server.requests) <= 3, "after a request failed for good, the queued ones were still sent"


def test_a_failure_ends_a_sibling_backoff_at_once_instead_of_retrying() -> None:
    # first request: 503 asking for 30 s; second: a 400 after 0.5 s, which must end the first one's wait
    with ScriptedServer([Step(503, headers={"Retry-After": "30"}), Step(400, delay_s=0.5)]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_concurrency=2, max_retries=3)
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError):
            model.generate(_requests(2), progress=False)
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"generate took {elapsed:.1f}s: the backoff was slept out"
    assert len(server.requests) == 2, "the request in backoff was re-sent after its sibling failed"


# ---------------------------------------------------------------- Retry-After

def test_retry_after_is_honoured_in_seconds_and_as_a_date_and_capped() -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    steps = [Step(429, headers={"Retry-After": "7"}), Step(503, headers={"Retry-After": "3600"}),
             Step(429, headers={"Retry-After": date}), Step(429, headers={"retry-after-ms": "250"})]
    delays: list[float] = []
    with ScriptedServer(steps) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_retries=5, sleep=delays.append,
                                max_retry_after_s=60)
        assert model.generate(_requests(1), progress=False)[0].text == "The answer is 4."
    assert delays[:2] == [7.0, 60.0] and 27 <= delays[2] <= 31 and delays[3] == pytest.approx(0.25)


def test_an_unreadable_retry_after_falls_back_to_backoff() -> None:
    delays: list[float] = []
    with ScriptedServer([Step(429, headers={"Retry-After": "soon"})]) as server:
        OpenAIChatModel("m", base_url=server.base_url, sleep=delays.append).generate(_requests(1), progress=False)
    assert len(delays) == 1 and 0.5 <= delays[0] <= 1.0


def test_retry_after_parser_ignores_errors_without_a_response() -> None:
    assert retry_after_s(ValueError("no response")) is None


# ---------------------------------------------------------------- replies that are not chat completions

@pytest.mark.parametrize(("step", "why"), [
    (Step(200, body="<html><body>Welcome to the gateway</body></html>", content_type="text/html"), "text/html"),
    (Step(200, body='{"choices": [{"index": 0, "mess'), "not valid JSON"),
    (Step(200, body='{"error": {"message": "upstream model overloaded"}}'), "without a 'choices' list"),
    (Step(200, body='{"choices": [{"index": 0, "finish_reason": "stop"}]}'), "without a 'message'"),
])
def test_a_200_that_is_not_a_chat_completion_is_a_clear_error_not_retried(step: Step, why: str) -> None:
    """They used to surface as a raw AttributeError / JSONDecodeError naming neither the server nor the body."""
    with ScriptedServer([step]) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, sleep=lambda _: None)
        with pytest.raises(UnreadableReplyError) as caught:
            model.generate(_requests(1), progress=False)
    message = str(caught.value)
    assert f"{server.base_url}/chat/completions answered 200" in message and why in message
    assert step.body[:30] in message  # the start of the body, as the server sent it
    assert len(server.requests) == 1


def test_an_html_error_page_names_the_url_status_and_body_after_the_retries() -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 500 + "</body></html>"
    with ScriptedServer([Step(502, body=page, content_type="text/html")] * 3) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, max_retries=2, sleep=lambda _: None)
        with pytest.raises(openai.APIStatusError) as caught:
            model.generate(_requests(1), progress=False)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert f"{server.base_url}/chat/completions answered 502" in notes and "<title>502 Bad Gateway" in notes
    assert len(notes) < 400 and len(server.requests) == 3  # the body is cut, and 502 was retried


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize(("key", "value", "rule"), [
    ("max_retries", -1, "must be >= 0"), ("max_concurrency", 0, "must be >= 1"),
    ("request_timeout_s", 0.0, "must be > 0"),
])
def test_impossible_settings_fail_when_the_model_is_built(key: str, value: float, rule: str) -> None:
    """max_retries=-1 used to be accepted and then crash on the first request (`response` never assigned)."""
    config = ModelConfig(name="t", backend="openai", model_id="m", base_url="http://127.0.0.1:9/v1", **{key: value})
    with pytest.raises(ValueError, match=rf"teacher\.{key} \(or student\.{key}\) {rule}.*, got {value}"):
        OpenAIChatModel.from_config(config)
