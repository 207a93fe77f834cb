"""`method=rpkd` end to end on the tiny model: token-level arms, sequence-level filtering, resume, equal budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compose import compose_config, isolated, needs_data, only_run_folder
from scripted_server import ScriptedServer

from bench.__main__ import execute


pytestmark = needs_data
TRAIN_0_QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                    "How many clips did Natalia sell altogether in April and May?")


def rpkd_config(tmp_path: Path, *extra: str):
    return compose_config([
        "method=rpkd", "student=tiny", "teacher=tiny", "task=gsm8k", "task.limit=3", "task.max_new_tokens=6",
        "method.train_limit=3", "method.train.epochs=1", "method.train.max_length=192",
        "method.train.optimizer=adamw", "method.train.lr=0.01",
        *isolated(tmp_path, "rpkd"), *extra])


def run_folder(tmp_path: Path) -> Path:
    return only_run_folder(tmp_path, "rpkd")


def test_token_level_arms_train_equally_and_are_evaluated_on_the_same_items(tmp_path: Path) -> None:
    metrics = execute(rpkd_config(tmp_path, "method.arms=[no_train,gt_finetune,ground_truth,confidence]"),
                      progress=False)
    folder = run_folder(tmp_path)
    assert [row["arm"] for row in metrics["rows"]] == ["no_train", "gt_finetune", "ground_truth", "confidence"]
    training = metrics["training"]
    assert {arm: t["steps"] for arm, t in training.items()} == {"gt_finetune": 3, "ground_truth": 3,
                                                                "confidence": 3}
    assert training["gt_finetune"]["alpha"] == 1.0 and training["ground_truth"]["alpha"] == pytest.approx(0.609335, abs=1e-6)
    for arm in ("ground_truth", "confidence"):
        assert (folder / "artifacts" / arm / "teacher_topk.pt").exists()
        losses = [json.loads(line) for line in (folder / "artifacts" / arm / "losses.jsonl").read_text().splitlines()]
        assert all(row["kl"] > 0 for row in losses)
    ids = {arm: [json.loads(line)["task_id"] for line in (folder / f"samples/test_{arm}.jsonl").read_text().splitlines()]
           for arm in ("no_train", "gt_finetune", "ground_truth")}
    assert ids["no_train"] == ids["gt_finetune"] == ids["ground_truth"]
    assert "paired_vs_no_train" in metrics["arms"]["ground_truth"]
    models = {json.loads((folder / f"samples/test_{arm}.jsonl").read_text().splitlines()[0])["model_id"]
              for arm in ids}
    assert len(models) == 3  # each adapter is a distinct model (and cache key)


def test_rerun_resumes_every_finished_phase(tmp_path: Path) -> None:
    execute(rpkd_config(tmp_path), progress=False)
    folder = run_folder(tmp_path)
    adapter = folder / "artifacts" / "ground_truth" / "adapter" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    metrics = execute(rpkd_config(tmp_path), progress=False)
    assert adapter.stat().st_mtime_ns == stamp  # not retrained
    assert all(arm["cached"] == arm["n"] for arm in metrics["arms"].values())  # no new generations


def test_a_resumed_run_does_not_read_a_trained_arms_teacher_signal_back(tmp_path: Path, monkeypatch) -> None:
    """A finished arm only needs its adapter: the resumed run loaded its teacher cache (teacher_topk.pt, the
    largest artifact of a real run) from disk before finding that the arm was trained already."""
    from bench.methods.rpkd_signal import TeacherPriming

    execute(rpkd_config(tmp_path), progress=False)
    loaded: list[str] = []
    monkeypatch.setattr(TeacherPriming, "load", lambda self, ctx, arm: loaded.append(arm))
    metrics = execute(rpkd_config(tmp_path), progress=False)
    assert loaded == [] and "ground_truth" in metrics["training"]


def test_sequence_level_keeps_only_accepted_teacher_solutions(tmp_path: Path) -> None:
    # The scripted teacher always answers 72: right for "Natalia" (train item 0), wrong for the others.
    with ScriptedServer(reply="48 / 2 = 24 and 48 + 24 = 72.\nThe answer is 72.") as teacher:
        metrics = execute(rpkd_config(tmp_path, "method.signal=sequence", "method.arms=[no_train,ground_truth]",
                                      "method.priming=teacher",
                                      "teacher=openai_compatible", f"teacher.base_url={teacher.base_url}",
                                      "teacher.model_id=scripted"), progress=False)
    folder = run_folder(tmp_path)
    solutions = [json.loads(line) for line in
                 (folder / "artifacts" / "teacher" / "teacher_solutions.jsonl").read_text().splitlines()]
    assert [s["kept"] for s in solutions] == [True, False, False]
    assert metrics["training"]["teacher"]["items"] == 1
    assert list(metrics["arms"]) == ["no_train", "teacher"]  # method.priming replaced ground_truth
    # the published Teacher string, a raw prefix glued to the question inside the user turn
    teacher_prefix = ("As a teacher, guide your student through solving the question below. Provide a clear, simple "
                      "explanation for someone unfamiliar with the problem. ")
    contents = [request["messages"][0]["content"] for request in teacher.requests]
    assert all(content.startswith(teacher_prefix) for content in contents)
    assert any(content.startswith(teacher_prefix + "Natalia sold clips") for content in contents)


def test_published_signal_stores_raw_primed_logits_and_trains_the_public_computation(tmp_path: Path) -> None:
    metrics = execute(rpkd_config(tmp_path, "method.signal=published", "method.train.max_length=64"),
                      progress=False)
    folder = run_folder(tmp_path)
    assert metrics["signal"] == "published" and metrics["priming_wording"] == "published"
    priming = json.loads((folder / "artifacts/ground_truth/priming.json").read_text())
    assert priming["raw_prefix"] and priming["text"].startswith("As a smart language model")
    stored = sorted((folder / "artifacts/ground_truth/teacher_logits").glob("*.pt"))
    assert len(stored) == 3
    from bench.models.embedded import build_tiny_llama
    _, tokenizer = build_tiny_llama(seed=0)
    question = "Natalia sold clips to 48 of her friends in April"
    logits = next(torch.load(path) for path in stored if path.name.startswith("gsm8k_train_0-"))
    teacher_ids = tokenizer(priming["text"] + TRAIN_0_QUESTION, add_special_tokens=False).input_ids
    student_ids = tokenizer(TRAIN_0_QUESTION, truncation=True, max_length=64).input_ids
    assert TRAIN_0_QUESTION.startswith(question)
    assert logits.shape[0] == min(len(teacher_ids), len(student_ids), 64)  # n = min(teacher, student, labels)
    assert logits.shape[1] == len(tokenizer)
    training = metrics["training"]
    assert training["ground_truth"]["signal"] == "published"
    assert training["gt_finetune"]["alpha"] == 1.0 and training["ground_truth"]["alpha"] < 1.0
    losses = [json.loads(line) for line in (folder / "artifacts/ground_truth/losses.jsonl").read_text().splitlines()]
    assert all(row["kl"] > 0 for row in losses)


def test_published_signal_refuses_a_forward_kl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kl_direction=reverse"):
        execute(rpkd_config(tmp_path, "method.signal=published", "method.kl_direction=forward"), progress=False)


def test_a_misspelt_dropout_arm_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora_dropout_by_arm names unknown arms \\['bsae'\\]"):
        execute(rpkd_config(tmp_path, "+method.lora_dropout_by_arm.bsae=0.2"), progress=False)
    assert not (tmp_path / "results").exists()


def test_primed_response_distils_the_teachers_own_kept_solution(tmp_path: Path) -> None:
    # The tiny teacher's solutions are never right: keep them all to see the alignment, then check the filter.
    metrics = execute(rpkd_config(tmp_path, "method.signal=primed_response", "method.filter_correct=false",
                                  "method.arms=[no_train,ground_truth]"),
                      progress=False)
    folder = run_folder(tmp_path)
    solutions = [json.loads(line) for line in
                 (folder / "artifacts/ground_truth/teacher_solutions.jsonl").read_text().splitlines()]
    assert [s["kept"] for s in solutions] == [True, True, True]
    from bench.models.embedded import build_tiny_llama
    from bench.training.kd import answer_ids
    from bench.training.teacher_logits import TopKCache
    _, tokenizer = build_tiny_llama(seed=0)
    cache = TopKCache.load(folder / "artifacts/ground_truth/teacher_topk.pt")
    for solution in solutions:  # one teacher row per token of ITS OWN text (+ EOS): the text the student learns
        assert len(cache[solution["task_id"]][0]) == len(answer_ids(tokenizer, solution["text"]))
    assert metrics["training"]["ground_truth"]["items"] == 3 and metrics["training"]["ground_truth"]["alpha"] < 1.0


def test_primed_response_keeps_only_solutions_the_scorer_accepts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accepted none of the 3 teacher solutions"):
        execute(rpkd_config(tmp_path, "method.signal=primed_response", "method.arms=[ground_truth]"),
                progress=False)


def test_the_old_signal_name_token_still_means_reference(tmp_path: Path) -> None:
    metrics = execute(rpkd_config(tmp_path, "method.signal=token", "method.arms=[no_train,ground_truth]"),
                      progress=False)
    assert metrics["signal"] == "reference"


def test_teacher_token_budget_primes_a_prefix_and_says_where_it_stopped(tmp_path: Path) -> None:
    metrics = execute(rpkd_config(tmp_path, "method.arms=[no_train,ground_truth]"), progress=False)
    first = json.loads((run_folder(tmp_path) / "artifacts/ground_truth/teacher_usage.json").read_text())
    assert first["primed_items"] == 3 and first["stopped"] is None and first["forward_tokens"] > 0
    budget = first["forward_tokens"] // 3  # below the three sequences' total, above the shortest one alone
    metrics = execute(rpkd_config(tmp_path / "b", "method.arms=[no_train,ground_truth]",
                                  f"method.teacher_token_budget={budget}"), progress=False)
    usage = metrics["priming"]["ground_truth"]
    assert usage["primed_items"] < 3 and usage["forward_tokens"] <= budget
    assert usage["stopped"].startswith(f"teacher budget of {budget} tokens reached")
    assert metrics["training"]["ground_truth"]["items"] == usage["primed_items"]


def test_sequence_signal_under_a_budget_stops_generating(tmp_path: Path) -> None:
    with ScriptedServer(reply="The answer is 72.") as teacher:
        metrics = execute(rpkd_config(tmp_path, "method.signal=sequence", "method.arms=[no_train,ground_truth]",
                                      "method.teacher_token_budget=1", "teacher=openai_compatible",
                                      f"teacher.base_url={teacher.base_url}", "teacher.model_id=scripted",
                                      "teacher.batch_size=1"), progress=False)
        assert len(teacher.requests) == 1  # one batch of one, then the 1-token budget is spent
    usage = metrics["priming"]["ground_truth"]
    assert usage["calls"] == 1 and usage["stopped"].endswith("solutions for 1 of 3 items")
