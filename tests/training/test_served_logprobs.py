"""Token-level KD from a served teacher (bench/training/served_logprobs.py): the parser on vLLM's exact response shape,
the top-k math, and the cache a local OpenAI-compatible server fills from the tiny model's real logits against the
cache compute_topk fills from the same model in process."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
import torch
from compose import compose_config, isolated, needs_data, only_run_folder
from scripted_server import ScriptedServer, Step

from bench.models.openai_api import OpenAIChatModel
from bench.training.kd import aligned_sequence, answer_ids, teacher_topk, topk_bucket_log_probs
from bench.training.served_logprobs import (LOGPROB_FLOOR, ServedLogprobsError, ServedTeacher, TopKRows,
                                            cache_entry, check_served_tokenizer, fill_served_topk,
                                            parse_prompt_logprobs, served_kd_problem, tempered_rest_bounds)
from bench.training.teacher_logits import TopKCache, TopKItemStore, compute_topk

# ------------------------------------------------------------------ vLLM's response, written by hand
# CompletionResponse as vllm/entrypoints/openai/completion/serving.py returns it for prompt=[5, 7, 9, 11],
# prompt_logprobs=2: one entry per prompt token, the first null; keys are token ids as JSON strings; the prompt
# token comes first with its full-vocabulary rank, then the top 2 with ranks 1 and 2 (vllm/logprobs.py
# append_logprobs_for_next_position), so it is listed once: 2 keys when it is in the top 2 (positions 1 and 2), 3 when
# not (position 3, rank 37). -inf is clamped to -9999.0 by clamp_prompt_logprobs.
VLLM_RESPONSE = """{
  "id": "cmpl-5f0c", "object": "text_completion", "created": 1735000000, "model": "teacher-70b",
  "choices": [{
    "index": 0, "text": " the", "logprobs": null, "finish_reason": "length", "stop_reason": null,
    "prompt_logprobs": [
      null,
      {"7": {"logprob": -0.25, "rank": 1, "decoded_token": " b"},
       "3": {"logprob": -1.75, "rank": 2, "decoded_token": " z"}},
      {"9": {"logprob": -2.5, "rank": 2, "decoded_token": " c"},
       "4": {"logprob": -0.125, "rank": 1, "decoded_token": " y"}},
      {"11": {"logprob": -9999.0, "rank": 37, "decoded_token": " d"},
       "2": {"logprob": -0.5, "rank": 1, "decoded_token": " x"},
       "6": {"logprob": -1.0, "rank": 2, "decoded_token": " w"}}
    ]
  }],
  "usage": {"prompt_tokens": 4, "total_tokens": 5, "completion_tokens": 1}
}"""
PROMPT = [5, 7, 9, 11]


def vllm_response() -> dict:
    return json.loads(VLLM_RESPONSE)


def test_parser_reads_the_rows_that_predict_the_answer_tokens_in_rank_order() -> None:
    rows = parse_prompt_logprobs(vllm_response(), PROMPT, answer_start=2, k=2)
    # answer tokens 9 and 11: entries 2 and 3; the prompt token 11, outside the top 2, is dropped
    assert rows.indices.tolist() == [[4, 9], [2, 6]] and rows.indices.dtype == torch.int32
    assert rows.logprobs.tolist() == [[-0.125, -2.5], [-0.5, -1.0]]
    whole = parse_prompt_logprobs(vllm_response(), PROMPT, answer_start=1, k=2)
    assert whole.indices.tolist() == [[7, 3], [4, 9], [2, 6]]


def test_parser_floors_minus_infinity_however_the_server_wrote_it() -> None:
    text = VLLM_RESPONSE.replace('"6": {"logprob": -1.0', '"6": {"logprob": -Infinity')  # python json's spelling
    rows = parse_prompt_logprobs(json.loads(text), PROMPT, answer_start=3, k=2)
    assert rows.logprobs.tolist() == [[-0.5, LOGPROB_FLOOR]]
    text = VLLM_RESPONSE.replace('"6": {"logprob": -1.0', '"6": {"logprob": null')  # pydantic's spelling of -inf
    assert parse_prompt_logprobs(json.loads(text), PROMPT, 3, 2).logprobs.tolist() == [[-0.5, LOGPROB_FLOOR]]


def test_parser_without_ranks_orders_by_log_prob() -> None:
    response = vllm_response()
    for entry in response["choices"][0]["prompt_logprobs"][1:]:
        for value in entry.values():
            del value["rank"]
    rows = parse_prompt_logprobs(response, PROMPT, answer_start=2, k=2)
    assert rows.indices.tolist() == [[4, 9], [2, 6]]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["choices"][0].pop("prompt_logprobs"), "vLLM extension"),
    (lambda r: r["choices"][0]["prompt_logprobs"].insert(0, None), "add a BOS"),
    (lambda r: r["choices"][0]["prompt_logprobs"][3].pop("11"), "lacks the prompt token 11"),
    (lambda r: r["choices"][0]["prompt_logprobs"][2].pop("4"), "1 of the top 2"),
    (lambda r: r["choices"][0].update(prompt_token_ids=[5, 7, 9, 12]), "prompt_token_ids differ"),
    (lambda r: r["choices"][0]["prompt_logprobs"][2].update({"x": {"logprob": -1.0}}), "not a token id"),
    (lambda r: r.update(choices=[]), "no choices"),
])
def test_parser_refuses_what_does_not_describe_the_ids_sent(edit, message: str) -> None:
    response = vllm_response()
    edit(response)
    with pytest.raises(ServedLogprobsError, match=message):
        parse_prompt_logprobs(response, PROMPT, answer_start=2, k=2)


# ------------------------------------------------------------------ the top-k math
def rows_from_logits(logits: torch.Tensor, k: int) -> TopKRows:
    """What vLLM reports for these logits: log_softmax at T = 1, its top k (float64 here, for exact checks)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    values, indices = logprobs.topk(k, dim=-1)
    return TopKRows(indices.to(torch.int32), values)


def test_the_tempered_top_k_shape_is_exact_from_temperature_one_log_probs() -> None:
    logits = torch.randn(6, 300, dtype=torch.float64) * 4
    rows = rows_from_logits(logits, k=8)
    for temperature in (0.7, 1.0, 5.942267335064758):
        truth = torch.log_softmax(logits.gather(-1, rows.indices.long()) / temperature, dim=-1)
        assert torch.allclose(torch.log_softmax(rows.logprobs / temperature, dim=-1), truth, atol=1e-12)
        indices, values = cache_entry(rows, None)
        assert values.dtype == torch.float16 and float(values.max()) == 0.0  # z - max(z): fp16 keeps it fine
        rounding = float(values.abs().max()) * 2.0**-11 / temperature  # fp16's half spacing, then divided by T
        assert torch.allclose(torch.log_softmax(values.double() / temperature, dim=-1), truth, atol=2 * rounding)


def test_the_rest_mass_at_temperature_one_is_exact_and_the_loss_sees_the_local_caches_buckets() -> None:
    logits = torch.randn(5, 400) * 3
    rows = rows_from_logits(logits, k=10)
    served = cache_entry(rows, 1.0)
    local = teacher_topk(logits, 10, 1.0)
    assert torch.equal(served[0], local[0])
    assert torch.allclose(served[2], local[2], atol=1e-6)
    truth = torch.log1p(-torch.softmax(logits.double(), -1).gather(-1, rows.indices.long()).sum(-1))
    assert torch.allclose(served[2].double(), truth, atol=1e-6)
    student = torch.randn(5, 400)
    for tail in ("renormalize", "rest_bucket"):
        served_p, _ = topk_bucket_log_probs(student, served[0], served[1], 1.0, tail, served[2])
        local_p, _ = topk_bucket_log_probs(student, local[0], local[1], 1.0, tail, local[2])
        assert torch.allclose(served_p, local_p, atol=1e-2), tail  # both store fp16: 0.004 at logits near 10


def test_no_rest_mass_is_claimed_at_another_temperature() -> None:
    rows = rows_from_logits(torch.randn(2, 50), k=4)
    with pytest.raises(ValueError, match="T=1 only"):
        cache_entry(rows, 5.94)
    assert served_kd_problem("rest_bucket", 5.94) and "method.topk_tail=renormalize" in served_kd_problem(
        "rest_bucket", 5.94)
    assert served_kd_problem("rest_bucket", 1.0) is None and served_kd_problem("renormalize", 5.94) is None


def tempered_rest(probs: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """The exact log mass outside the top k at `temperature`, from a full probability row."""
    weights = probs.double() ** (1.0 / temperature)
    top = probs.topk(k, dim=-1).indices
    return torch.log(1 - weights.gather(-1, top).sum(-1) / weights.sum(-1))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 5.942267335064758])
def test_tempered_rest_bounds_hold_the_true_mass(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 8.0):  # flat to peaked
        logits = torch.randn(40, 2000, generator=generator, dtype=torch.float64) * scale
        rows = rows_from_logits(logits, k=20)
        low, high = tempered_rest_bounds(rows.logprobs, 2000, temperature)
        truth = tempered_rest(torch.softmax(logits, -1), 20, temperature)
        assert bool((low <= truth + 1e-9).all() and (truth <= high + 1e-9).all()), (scale, temperature)


def test_tempered_rest_bounds_are_attained_and_meet_at_temperature_one() -> None:
    top = torch.tensor([0.5, 0.2, 0.1, 0.07], dtype=torch.float64)  # R = 0.13 over 96 other tokens, each <= 0.07
    even = torch.cat([top, torch.full((96,), 0.13 / 96, dtype=torch.float64)])
    packed = torch.cat([top, torch.tensor([0.07, 0.06], dtype=torch.float64), torch.zeros(94, dtype=torch.float64)])
    rows = TopKRows(torch.arange(4, dtype=torch.int32).unsqueeze(0), top.log().unsqueeze(0))
    for temperature, (lowest, highest) in ((3.0, (packed, even)), (0.5, (even, packed))):
        low, high = tempered_rest_bounds(rows.logprobs, 100, temperature)
        assert float(low) == pytest.approx(float(tempered_rest(lowest, 4, temperature)), abs=1e-12)
        assert float(high) == pytest.approx(float(tempered_rest(highest, 4, temperature)), abs=1e-12)
    low, high = tempered_rest_bounds(rows.logprobs, 100, 1.0)
    assert float(low) == pytest.approx(math.log(0.13), abs=1e-12) and float(high) == pytest.approx(math.log(0.13))


# ------------------------------------------------------------------ a local vLLM-shaped server on the tiny model
def vllm_routes(model, tokenizer, max_model_len: int = 2048) -> dict:
    """/v1/completions with prompt_logprobs and /tokenize as vLLM answers them, from the model's real logits."""

    @torch.inference_mode()
    def completions(body: dict) -> dict:
        ids, k = body["prompt"], body["prompt_logprobs"]
        assert isinstance(ids, list) and all(isinstance(i, int) for i in ids), "prompt must be token ids"
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        entries: list[dict | None] = [None]
        for position in range(1, len(ids)):
            row, actual = logprobs[position - 1], ids[position]
            values, indices = row.topk(k)
            entry = {actual: {"logprob": max(float(row[actual]), -9999.0), "rank": int((row >= row[actual]).sum()),
                              "decoded_token": tokenizer.decode([actual])}}
            for rank, (token, value) in enumerate(zip(indices.tolist(), values.tolist()), start=1):
                entry[token] = {"logprob": max(value, -9999.0), "rank": rank,
                                "decoded_token": tokenizer.decode([token])}
            entries.append(entry)
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length",
                             "stop_reason": None, "prompt_logprobs": entries}],
                "usage": {"prompt_tokens": len(ids), "total_tokens": len(ids) + 1, "completion_tokens": 1}}

    def tokenize(body: dict) -> dict:
        if "messages" in body:
            text = tokenizer.apply_chat_template(body["messages"], tokenize=False,
                                                 add_generation_prompt=body.get("add_generation_prompt", True))
            tokens = tokenizer(text, add_special_tokens=body.get("add_special_tokens", False)).input_ids
        else:
            tokens = tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True)).input_ids
        return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens, "token_strs": None}

    return {"/v1/completions": completions, "/tokenize": tokenize}


@pytest.fixture(scope="module")
def tiny():
    from bench.models.embedded import build_tiny_llama

    model, tokenizer = build_tiny_llama(seed=0)
    return model.eval(), tokenizer


QUESTIONS = {"q0": ("What is 2 + 3?", "2 + 3 = 5. The answer is 5."),
             "q1": ("Tom has 4 apples and eats one. How many are left?", "4 - 1 = 3 apples are left.\n#### 3"),
             "q2": ("Double 21.", "21 * 2 = 42")}


def sequences_of(tokenizer):
    return {i: aligned_sequence(tokenizer, question, answer_ids(tokenizer, answer), 192)
            for i, (question, answer) in QUESTIONS.items()}


def served(server: ScriptedServer, concurrency: int = 2, sleeps: list[float] | None = None) -> ServedTeacher:
    api = OpenAIChatModel("teacher-70b", base_url=server.base_url, max_concurrency=concurrency, max_retries=2)
    return ServedTeacher(api, sleep=(sleeps.append if sleeps is not None else lambda _: None))


def assert_same_cache(served_cache: TopKCache, local: TopKCache) -> None:
    assert list(served_cache.entries) == list(local.entries) and served_cache.k == local.k
    assert served_cache.temperature == local.temperature
    for example_id, entry in local.entries.items():
        mine = served_cache[example_id]
        assert len(mine) == len(entry) and mine[0].shape == entry[0].shape
        assert torch.equal(mine[0], entry[0]), example_id
        shifted = entry[1].float() - entry[1].float().amax(dim=-1, keepdim=True)
        assert torch.allclose(mine[1].float(), shifted, atol=1e-2), example_id  # fp16 storage of either
        if len(entry) > 2:
            assert torch.allclose(mine[2], entry[2], atol=1e-5), example_id


@pytest.mark.parametrize("temperature", [1.0, 5.942267335064758])
def test_the_served_cache_equals_the_local_one(tiny, tmp_path: Path, temperature: float, caplog) -> None:
    model, tokenizer = tiny
    sequences = sequences_of(tokenizer)
    local = compute_topk(model, sequences, 5, batch_size=2, pad_token_id=tokenizer.pad_token_id, progress=False,
                         temperature=temperature)
    with ScriptedServer(routes=vllm_routes(model, tokenizer)) as server, caplog.at_level(logging.INFO):
        cache, usage = fill_served_topk(served(server), sequences, TopKItemStore(tmp_path / "items"), 5,
                                        temperature, progress=False, vocab_size=len(tokenizer))
    if temperature == 1.0:
        assert_same_cache(cache, local)  # rest mass included, at T = 1
    else:  # the top-k shape only: the tempered rest mass is not in the server's answer
        assert cache.temperature is None and all(len(entry) == 2 for entry in cache.entries.values())
        assert_same_cache(cache, TopKCache({i: e[:2] for i, e in local.entries.items()}, 5, None))
        assert "topk_tail=renormalize leaves out" in caplog.text
    bodies = server.requests
    assert sorted(map(tuple, (b["prompt"] for b in bodies))) == sorted(tuple(s.input_ids) for s in sequences.values())
    assert all(b["prompt_logprobs"] == 5 and b["max_tokens"] == 1 for b in bodies)
    assert (usage.calls, usage.completion_tokens) == (3, 3)
    assert usage.prompt_tokens == sum(len(s.input_ids) for s in sequences.values())


def test_a_failed_priming_resumes_item_by_item(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    sequences = sequences_of(tokenizer)
    store = TopKItemStore(tmp_path / "items")
    sleeps: list[float] = []
    with ScriptedServer([Step(delay_s=0), 503, 400], routes=vllm_routes(model, tokenizer)) as server:
        with pytest.raises(Exception, match="400"):  # 503 is retried; 400 fails at once and stops the priming
            fill_served_topk(served(server, concurrency=1, sleeps=sleeps), sequences, store, 5, 1.0, progress=False)
    assert len(sleeps) == 1 and len(server.requests) == 3
    assert "q0" in store and "q1" not in store and "q2" not in store
    with ScriptedServer(routes=vllm_routes(model, tokenizer)) as again:
        cache, usage = fill_served_topk(served(again), sequences, store, 5, 1.0, progress=False)
    assert sorted(tuple(b["prompt"]) for b in again.requests) == sorted(
        tuple(sequences[i].input_ids) for i in ("q1", "q2"))  # only the missing items are asked
    assert usage.calls == 3 and usage.prompt_tokens == sum(len(s.input_ids) for s in sequences.values())
    local = compute_topk(model, sequences, 5, pad_token_id=tokenizer.pad_token_id, progress=False, temperature=1.0)
    assert_same_cache(cache, local)


def test_a_teacher_budget_keeps_the_items_that_fit(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    sequences = sequences_of(tokenizer)
    first = len(sequences["q0"].input_ids) + 1
    with ScriptedServer(routes=vllm_routes(model, tokenizer)) as server:
        cache, usage = fill_served_topk(served(server), sequences, TopKItemStore(tmp_path), 5, None,
                                        budget_tokens=first + 1, progress=False)
    assert list(cache.entries) == ["q0"] and len(server.requests) == 1
    assert usage.stopped and "1 of 3 items" in usage.stopped


def test_the_tokenizer_check_asks_vllms_tokenize(tiny, caplog) -> None:
    model, tokenizer = tiny
    question, answer = QUESTIONS["q0"]
    with ScriptedServer(routes=vllm_routes(model, tokenizer, max_model_len=4096)) as server:
        check_served_tokenizer(served(server), tokenizer, question, answer, longest=100)
        assert [r.path for r in server.log] == ["/tokenize", "/tokenize"]
        assert server.log[0].body["messages"] == [{"role": "user", "content": question}]
        assert server.log[1].body == {"model": "teacher-70b", "prompt": answer, "add_special_tokens": False}
    routes = vllm_routes(model, tokenizer, max_model_len=64)
    with ScriptedServer(routes=routes) as server, pytest.raises(ValueError, match="max_model_len=64"):
        check_served_tokenizer(served(server), tokenizer, question, answer, longest=64)
    other = dict(routes, **{"/tokenize": lambda body: {**routes["/tokenize"](body),
                                                       "tokens": [t + 1 for t in routes["/tokenize"](body)["tokens"]]}})
    with ScriptedServer(routes=other) as server, pytest.raises(ValueError, match="tokenizes the chat-templated"):
        check_served_tokenizer(served(server), tokenizer, question, answer, longest=10)
    with ScriptedServer([404, 404], routes=routes) as server, caplog.at_level(logging.WARNING):
        check_served_tokenizer(served(server), tokenizer, question, answer, longest=10)
    assert "has no vLLM /tokenize" in caplog.text


# ------------------------------------------------------------------ method=rpkd with a served teacher
def rpkd_config(tmp_path: Path, *extra: str):
    return compose_config([
        "method=rpkd", "student=tiny", "task=gsm8k", "task.limit=2", "task.max_new_tokens=4",
        "method.train_limit=3", "method.train.epochs=1", "method.train.max_length=128",
        "method.train.optimizer=adamw", "method.train.lr=0.01", "method.arms=[ground_truth]",
        *isolated(tmp_path, "rpkd"), *extra])


@needs_data
def test_rpkd_distils_a_served_teacher_from_the_cache_a_local_teacher_fills(tiny, tmp_path: Path) -> None:
    from bench.__main__ import execute

    model, tokenizer = tiny
    execute(rpkd_config(tmp_path / "local", "teacher=tiny", "method.temperature=1"), progress=False)
    local = TopKCache.load(only_run_folder(tmp_path / "local", "rpkd") / "artifacts/ground_truth/teacher_topk.pt")
    with ScriptedServer(routes=vllm_routes(model, tokenizer)) as server:
        metrics = execute(rpkd_config(tmp_path / "served", "teacher=openai_compatible",
                                      f"teacher.base_url={server.base_url}", "teacher.model_id=tiny-served",
                                      "method.temperature=1"), progress=False)
    folder = only_run_folder(tmp_path / "served", "rpkd")
    assert_same_cache(TopKCache.load(folder / "artifacts/ground_truth/teacher_topk.pt"), local)
    assert len(list((folder / "artifacts/ground_truth/served_topk").glob("*.pt"))) == 3
    usage = json.loads((folder / "artifacts/ground_truth/teacher_usage.json").read_text())
    completions = [r.body for r in server.log if r.path == "/v1/completions"]
    assert usage["calls"] == len(completions) == 3 and usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] == sum(len(body["prompt"]) for body in completions) and usage["forward_tokens"] == 0
    losses = [json.loads(line) for line in (folder / "artifacts/ground_truth/losses.jsonl").read_text().splitlines()]
    assert all(row["kl"] > 0 for row in losses) and metrics["training"]["ground_truth"]["steps"] == 3


@needs_data
def test_rpkd_refuses_a_rest_bucket_a_served_teacher_cannot_give_before_asking_it(tmp_path: Path) -> None:
    from bench.__main__ import execute

    with ScriptedServer() as server, pytest.raises(ValueError, match="topk_tail=rest_bucket"):
        execute(rpkd_config(tmp_path, "teacher=openai_compatible", f"teacher.base_url={server.base_url}",
                            "teacher.model_id=tiny-served"), progress=False)  # T = 5.94, rest_bucket: defaults
    assert server.requests == []


def test_a_request_that_fails_for_good_stops_the_others_retries(tiny, tmp_path: Path) -> None:
    """A 400 stops the priming, but a sibling backing off after a 503 went on retrying (its retries did not see
    the shared stop), sending a request after the run had already failed."""
    model, tokenizer = tiny
    with ScriptedServer([503, Step(400, delay_s=0.2)], routes=vllm_routes(model, tokenizer)) as server:
        api = OpenAIChatModel("teacher-70b", base_url=server.base_url, max_concurrency=2, max_retries=2)
        teacher = ServedTeacher(api, sleep=lambda _: time.sleep(0.6))  # the 503's backoff outlasts the 400
        with pytest.raises(Exception, match="400"):
            fill_served_topk(teacher, sequences_of(tokenizer), TopKItemStore(tmp_path / "items"), 5, 1.0,
                             progress=False)
        time.sleep(0.8)  # past the backoff: a retry that ignored the stop would have been sent by now
    assert len(server.requests) == 2
