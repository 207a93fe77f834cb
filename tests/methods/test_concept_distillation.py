"""`method=cd` end to end: tiny HF student, a teacher behind a real OpenAI-protocol server on localhost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compose import compose_config, isolated, needs_data, only_run_folder
from scripted_server import ScriptedServer

from bench.__main__ import execute

GOOD_REPLY = ("EXPLANATION: The student did not compute step by step.\nRULES:\n"
              "- Write every intermediate calculation on its own line.\n"
              "- Finish with the sentence 'The answer is N.' using only digits for N.\n")


pytestmark = needs_data


def rules_reply(body: dict) -> str:
    """A different pair of rules per mistake batch, so deduplication keeps them apart."""
    tag = body["messages"][-1]["content"].split("### Mistake 1\nProblem:\n", 1)[1][:40]
    return GOOD_REPLY.replace("every intermediate", f"every intermediate ({tag})")


def cd_config(tmp_path: Path, base_url: str, *extra: str):
    return compose_config([
        "method=cd", "student=tiny", "teacher=openai_compatible", f"teacher.base_url={base_url}",
        "teacher.model_id=scripted-teacher", "task=gsm8k", "task.limit=3", "task.max_new_tokens=6",
        "task.validation_size=4", "method.train_sample=6", "method.max_mistakes=4",
        "method.mistakes_per_call=2", "method.calls_per_round=1",
        *isolated(tmp_path, "cd"), *extra])


def run_folder(tmp_path: Path) -> Path:
    return only_run_folder(tmp_path, "cd")


def test_cd_end_to_end_records_every_artifact(tmp_path: Path) -> None:
    with ScriptedServer(reply=rules_reply) as teacher:
        metrics = execute(cd_config(tmp_path, teacher.base_url, "method.acceptance=gain", "method.min_gain=-1.0",
                                    "method.max_rules=3"), progress=False)
    folder = run_folder(tmp_path)
    mistakes = [json.loads(line) for line in (folder / "mistakes.jsonl").read_text().splitlines()]
    assert len(mistakes) == 4  # the random tiny student gets everything wrong; capped at max_mistakes
    assert {"question", "student_output", "reference", "status", "detail"} <= set(mistakes[0])
    assert "expected" in mistakes[0]["detail"]
    assert len(teacher.requests) == 2  # 4 mistakes, 2 per call
    rules = [json.loads(line) for line in (folder / "candidate_rules.jsonl").read_text().splitlines()]
    assert len(rules) == 3  # the shared second rule is deduplicated: 2 distinct + 1 common
    assert all(r["gain"] is not None for r in rules)  # min_gain=-1 keeps every rule; each got a validation gain
    assert sum(r["kept"] for r in rules) == 3
    # every candidate's paired evidence and decision is recorded, in the rules file and the phase metrics
    assert all(r["accepted"] and r["decision"].startswith("accepted (gain") for r in rules)
    assert all(isinstance(r["wins"], int) and isinstance(r["losses"], int) and 0 < r["p_value"] <= 1 for r in rules)
    assert metrics["acceptance"]["mode"] == "gain"
    assert [t["rule_id"] for t in metrics["rule_tests"]] == [r["rule_id"] for r in rules]
    final_prompt = (folder / "final_prompt.txt").read_text()
    assert "Follow these rules:" in final_prompt and "The answer is N." in final_prompt
    assert metrics["paired"]["n"] == 3 and metrics["cd_prompt"]["n"] == metrics["base_prompt"]["n"] == 3
    assert [row["arm"] for row in metrics["rows"]] == ["base prompt", "CD prompt"]
    assert metrics["teacher_usage"]["calls"] == 2


def test_selection_never_touches_test_items(tmp_path: Path) -> None:
    with ScriptedServer(reply=rules_reply) as teacher:
        metrics = execute(cd_config(tmp_path, teacher.base_url), progress=False)
    # the default acceptance is the paired test; the random student wins no validation item, so nothing passes
    assert metrics["acceptance"]["mode"] == "mcnemar" and metrics["kept_rules"] == 0
    assert all(t["accepted"] is False and t["p_value"] == 1.0 for t in metrics["rule_tests"])
    folder = run_folder(tmp_path)
    splits = json.loads((folder / "splits.json").read_text())
    test_ids = set(splits["test"])
    for samples in (folder / "samples").rglob("*.jsonl"):
        ids = {json.loads(line)["task_id"] for line in samples.read_text().splitlines()}
        if samples.name.startswith("test_"):
            assert ids <= test_ids
        else:
            assert not ids & test_ids, f"{samples.name} used test items"
            assert ids <= set(splits["train"]) | set(splits["validation"])
    for mistake in (folder / "mistakes.jsonl").read_text().splitlines():
        assert json.loads(mistake)["task_id"] in set(splits["train"])


def test_resume_after_induction_makes_no_teacher_calls(tmp_path: Path) -> None:
    with ScriptedServer(reply=rules_reply) as teacher:
        execute(cd_config(tmp_path, teacher.base_url), progress=False)
    folder = run_folder(tmp_path)
    (folder / "phases" / "deduce.done").unlink()  # as if killed during deduction
    (folder / "metrics.json").unlink()
    with ScriptedServer(reply=rules_reply) as second_teacher:
        execute(cd_config(tmp_path, teacher.base_url), progress=False)  # same config => same folder
        assert second_teacher.requests == []
    assert (folder / "metrics.json").exists()
    assert len(teacher.requests) == 2


def test_malformed_replies_are_retried_then_skipped(tmp_path: Path) -> None:
    replies = iter(["I am not sure what went wrong."] * 3 + [GOOD_REPLY] * 10)
    with ScriptedServer(reply=lambda body: next(replies)) as teacher:
        execute(cd_config(tmp_path, teacher.base_url, "method.malformed_retries=1"), progress=False)
    folder = run_folder(tmp_path)
    log = [json.loads(line) for line in (folder / "induction_log.jsonl").read_text().splitlines()]
    outcomes = [entry["outcome"] for entry in log]
    # attempt 0: both batches malformed; attempt 1: batch 0 malformed again, batch 1 fine; then batch 0 skipped
    assert outcomes[:2] == ["malformed: no 'RULES:' section"] * 2
    assert "2 rules" in outcomes and outcomes[-1] == "skipped: still malformed after retries"
    assert len(teacher.requests) == 4


def test_budget_cap_stops_induction_cleanly(tmp_path: Path) -> None:
    # each scripted reply uses 5 completion tokens; at $200k per Mtok that is $1 per call
    with ScriptedServer(reply=rules_reply) as teacher:
        metrics = execute(cd_config(tmp_path, teacher.base_url, "method.max_mistakes=8", "method.train_sample=8",
                                    "method.mistakes_per_call=1", "teacher.price_output_per_mtok=200000",
                                    "method.budget_usd=1.5"), progress=False)
        assert len(teacher.requests) == 2
        assert metrics["teacher_usage"]["cost_usd"] == pytest.approx(2.0)
        assert metrics["teacher_usage"]["spent_usd"] == pytest.approx(2.0)
        log = (run_folder(tmp_path) / "induction_log.jsonl").read_text()
        assert log.count("skipped: budget exhausted") == 6
        # A re-run served from the cache costs nothing new but stops at the same point: the budget counts cache hits.
        metrics = execute(cd_config(tmp_path, teacher.base_url, "method.max_mistakes=8", "method.train_sample=8",
                                    "method.mistakes_per_call=1", "teacher.price_output_per_mtok=200000",
                                    "method.budget_usd=1.5", "resume=false"), progress=False)
        assert len(teacher.requests) == 2
        usage = metrics["teacher_usage"]
        assert (usage["calls"], usage["cached"], usage["spent_usd"]) == (2, 2, 0.0)
        assert usage["cost_usd"] == pytest.approx(2.0) and usage["completion_tokens"] == 10
        assert (run_folder(tmp_path) / "induction_log.jsonl").read_text().count("skipped: budget exhausted") == 6


def test_token_budget_stops_induction_like_a_dollar_budget(tmp_path: Path) -> None:
    with ScriptedServer(reply=rules_reply) as teacher:
        metrics = execute(cd_config(tmp_path, teacher.base_url, "method.max_mistakes=8", "method.train_sample=8",
                                    "method.mistakes_per_call=1", "method.calls_per_round=1",
                                    "method.budget_tokens=1"), progress=False)
        assert len(teacher.requests) == 1  # one round, then the budget (1 token) is spent
    usage = metrics["teacher_usage"]
    assert usage["budget_tokens"] == 1 and usage["prompt_tokens"] + usage["completion_tokens"] >= 1
    assert (run_folder(tmp_path) / "induction_log.jsonl").read_text().count("skipped: budget exhausted") >= 1


def test_transfer_evaluates_a_learned_prompt_without_a_teacher(tmp_path: Path, monkeypatch) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Follow these rules:\n1. Check every step.\n")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = compose_config([
        "method=cd", f"method.prompt_from={prompt}", "student=tiny", "teacher=gpt4o", "task=multiarith",
        "task.limit=3", "task.max_new_tokens=6", f"results_dir={tmp_path / 'results'}",
        f"cache.path={tmp_path / 'cache.sqlite'}"])
    metrics = execute(config, progress=False)
    assert metrics["transfer_from"] == str(prompt) and metrics["final_prompt"].endswith("Check every step.")
    assert list(metrics["models"]) == ["student"]


# ------------------------------------------------------------------ deduction on hand-made validation outcomes
class ScriptedValidation:
    """A stand-in RunContext for the deduce phase: 60 validation items, the first 20 right with the base prompt;
    each rule text in the system prompt turns the items it `wins` right and those it `loses` wrong."""

    def __init__(self, root: Path, effects: dict[str, tuple[set[int], set[int]]]) -> None:
        from types import SimpleNamespace

        from bench.tracking import RunStore

        self.effects = effects
        self.store = RunStore(root)
        self.task = SimpleNamespace(name="scripted")

    def examples(self, split: str, limit: int | None = None) -> list[int]:
        return list(range(60))

    def model(self, role: str) -> None:
        return None

    student = None

    def evaluate(self, model, examples, *, split: str, name: str, system_prompt: str):
        from bench.evaluation import EvalResult, SampleRecord, summarise

        right = set(range(20))
        for text, (wins, losses) in self.effects.items():
            if text in system_prompt:
                right = (right | wins) - losses
        samples = [SampleRecord(run_id="r", evaluation=name, task_id=str(i), split=split, model_id="m",
                                messages=[], completion="", status="passed" if i in right else "failed",
                                passed=i in right, detail="", n_correct=int(i in right), score=float(i in right))
                   for i in examples]
        return EvalResult(name, samples, summarise(samples))


LUCKY = "Read the question twice before answering."  # wins 1 item, loses none
STRONG = "Write every intermediate result on its own line."  # wins 8 items, loses none


def deduce_with(tmp_path: Path, acceptance: str) -> tuple[str, dict]:
    from bench.config import CDConfig
    from bench.methods.cd_rules import Rule
    from bench.methods.concept_distillation import ConceptDistillation

    ctx = ScriptedValidation(tmp_path / acceptance, {LUCKY: ({30}, set()), STRONG: (set(range(40, 48)), set())})
    rules = [Rule(rule_id="r0.0", text=LUCKY, source_task_ids=[]),
             Rule(rule_id="r1.0", text=STRONG, source_task_ids=[])]
    return ConceptDistillation(CDConfig(acceptance=acceptance)).deduce(ctx, "Solve it.", rules)


def test_mcnemar_acceptance_rejects_one_lucky_item_and_keeps_a_real_gain(tmp_path: Path) -> None:
    final_prompt, summary = deduce_with(tmp_path, "mcnemar")
    assert STRONG in final_prompt and LUCKY not in final_prompt
    lucky, strong = summary["rule_tests"]
    assert (lucky["wins"], lucky["losses"], lucky["p_value"], lucky["accepted"]) == (1, 0, 0.5, False)
    assert (strong["wins"], strong["losses"], strong["accepted"], strong["kept"]) == (8, 0, True, True)
    assert strong["p_value"] == pytest.approx(1 / 256)
    recorded = [json.loads(line) for line in (tmp_path / "mcnemar" / "candidate_rules.jsonl").read_text().splitlines()]
    assert [(r["wins"], r["losses"], r["accepted"]) for r in recorded] == [(1, 0, False), (8, 0, True)]


def test_gain_acceptance_keeps_the_original_one_item_rule(tmp_path: Path) -> None:
    final_prompt, summary = deduce_with(tmp_path, "gain")
    assert LUCKY in final_prompt and STRONG in final_prompt
    assert [t["accepted"] for t in summary["rule_tests"]] == [True, True]
    assert summary["acceptance"]["mode"] == "gain"
