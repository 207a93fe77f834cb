"""`method=compare` end to end on the tiny model: every arm on the same items, every pair tested, costs recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compose import compose_config, isolated, needs_data, only_run_folder

from bench.__main__ import execute
from bench.methods.compare import PrefixedTracker
from bench.tracking import Tracker

pytestmark = needs_data


def compare_config(tmp_path: Path, *extra: str):
    return compose_config([
        "method=compare", "student=tiny", "teacher=tiny", "task=gsm8k", "task.limit=3", "task.max_new_tokens=6",
        "task.validation_size=4", "method.cd.train_sample=4", "method.cd.max_mistakes=2",
        "method.cd.mistakes_per_call=2", "method.cd.malformed_retries=0", "method.cd.teacher_max_new_tokens=8",
        "method.rpkd.train_limit=3", "method.rpkd.train.epochs=1", "method.rpkd.train.max_length=128",
        *isolated(tmp_path, "compare"), *extra])


def test_every_arm_on_the_same_items_with_every_pair_tested(tmp_path: Path) -> None:
    metrics = execute(compare_config(tmp_path, "method.signals=[reference,published]"), progress=False)
    folder = only_run_folder(tmp_path, "compare")
    arms = [row["arm"] for row in metrics["rows"]]
    # the aligned GT fine-tune once (reference), the published fine-tune control with the published signal
    assert arms == ["student", "cd", "gt_finetune", "rpkd/reference/ground_truth", "gt_finetune/published",
                    "rpkd/published/ground_truth"]
    rows = {row["arm"]: row for row in metrics["rows"]}
    assert rows["student"]["label"] == "Student alone" and "diff" not in rows["student"]
    assert rows["rpkd/published/ground_truth"]["label"] == "RP-KD Ground Truth (published)"
    assert all("mcnemar_p" in row for name, row in rows.items() if name != "student")
    assert len(metrics["pairs"]) == 6 * 5 // 2
    pair = next(p for p in metrics["pairs"] if (p["a"], p["b"]) == ("cd", "rpkd/reference/ground_truth"))
    assert pair["n"] == 3 and set(pair) >= {"diff", "ci_low", "ci_high", "mcnemar_p", "bootstrap_p"}
    # same items, read back from each sub-run's own samples file
    samples = {"student": folder / "samples/test_student.jsonl", "cd": folder / "cd/samples/test_cd_prompt.jsonl",
               "ground_truth": folder / "rpkd-reference/samples/test_ground_truth.jsonl"}
    ids = {name: [json.loads(line)["task_id"] for line in path.read_text().splitlines()]
           for name, path in samples.items()}
    assert ids["student"] == ids["cd"] == ids["ground_truth"]
    # costs: the teacher's forward tokens and cache for the KD arm, training steps, evaluation tokens for all
    kd = rows["rpkd/reference/ground_truth"]["cost"]
    assert kd["teacher_forward_tokens"] > 0 and kd["teacher_cache_bytes"] > 0 and kd["train_steps"] == 3
    assert rows["gt_finetune"]["cost"]["teacher_forward_tokens"] == 0 and rows["gt_finetune"]["cost"]["train_steps"] == 3
    assert rows["cd"]["cost"]["teacher_prompt_tokens"] > 0  # the induction calls (tiny teacher: no rule parses)
    assert all(row["cost"]["eval_completion_tokens"] > 0 for row in metrics["rows"])
    assert (folder / rows["rpkd/reference/ground_truth"]["losses"]).exists()
    assert metrics["student_name"] == "tiny" and metrics["seed"] == 0


def test_one_teacher_budget_stops_both_methods_and_says_where(tmp_path: Path) -> None:
    settings = ("method.cd.max_mistakes=4", "method.cd.mistakes_per_call=1", "method.cd.calls_per_round=1")
    free = execute(compare_config(tmp_path / "free", *settings), progress=False)
    free_rows = {row["arm"]: row["cost"] for row in free["rows"]}
    assert free_rows["cd"]["stopped"] is None and free_rows["rpkd/reference/ground_truth"]["stopped"] is None
    budget = free_rows["rpkd/reference/ground_truth"]["teacher_forward_tokens"] - 1  # all but the last item fit
    assert budget < free_rows["cd"]["teacher_prompt_tokens"] + free_rows["cd"]["teacher_completion_tokens"]
    metrics = execute(compare_config(tmp_path / "capped", *settings, f"method.teacher_token_budget={budget}"),
                      progress=False)
    rows = {row["arm"]: row["cost"] for row in metrics["rows"]}
    assert rows["cd"]["stopped"].startswith("teacher budget reached")
    assert rows["rpkd/reference/ground_truth"]["stopped"].startswith(f"teacher budget of {budget} tokens reached")
    assert rows["rpkd/reference/ground_truth"]["teacher_forward_tokens"] <= budget
    assert rows["rpkd/reference/ground_truth"]["train_steps"] < 3  # trained on the items primed within budget
    assert rows["gt_finetune"]["stopped"] is None and rows["gt_finetune"]["train_steps"] == 3  # no teacher


def test_bad_study_settings_fail_before_any_model_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="families"):
        execute(compare_config(tmp_path, "method.families=[cd,dspy]"), progress=False)
    with pytest.raises(ValueError, match="signal"):
        execute(compare_config(tmp_path, "method.signals=[tokens]"), progress=False)


def test_prefixed_tracker_keeps_sub_runs_apart() -> None:
    logged: list[dict] = []

    class Recorder(Tracker):
        def log(self, metrics):
            logged.append(dict(metrics))

    tracker = PrefixedTracker(Recorder(), "rpkd-reference")
    tracker.log({"train/ground_truth": {"step": 1}, "test_ground_truth": {"n": 3}})
    assert logged == [{"train/rpkd-reference/ground_truth": {"step": 1},
                       "rpkd-reference/test_ground_truth": {"n": 3}}]


def test_the_on_policy_arm_joins_on_rpkds_items_and_budget(tmp_path: Path) -> None:
    config = compare_config(tmp_path, "method.families=[rpkd,onpolicy]", "method.rpkd.arms=[gt_finetune]",
                            "method.onpolicy.train_limit=99", "method.onpolicy.train.epochs=3")
    from bench.methods import make_method

    study = make_method(config.method)
    assert study.onpolicy.config.train_limit == 3 and study.onpolicy.config.train.epochs == 1  # rpkd's, enforced
    metrics = execute(config, progress=False)
    rows = {row["arm"]: row for row in metrics["rows"]}
    assert list(rows) == ["student", "gt_finetune", "onpolicy"]
    assert rows["onpolicy"]["label"] == "On-policy KD" and rows["onpolicy"]["family"] == "onpolicy"
    assert rows["onpolicy"]["cost"]["train_steps"] == rows["gt_finetune"]["cost"]["train_steps"] == 3
    assert rows["onpolicy"]["cost"]["teacher_forward_tokens"] > 0
    folder = only_run_folder(tmp_path, "compare")
    assert (folder / rows["onpolicy"]["losses"]).exists()
    assert any(p["a"] == "gt_finetune" and p["b"] == "onpolicy" for p in metrics["pairs"])
