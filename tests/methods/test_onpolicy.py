"""`method=onpolicy` end to end on the tiny model: trained through TRL, scored beside the student alone on the same
items, reported, resumed without retraining, and refused before any work without a same-tokenizer local teacher."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from compose import compose_config, isolated, needs_data, only_run_folder
from omegaconf import OmegaConf

from bench.__main__ import execute

pytestmark = needs_data


def onpolicy_config(tmp_path: Path, *extra: str):
    # teacher.seed=1: another random tiny model, so the teacher's distributions differ from the student's
    return compose_config([
        "method=onpolicy", "student=tiny", "teacher=tiny", "teacher.seed=1", "task=gsm8k", "task.limit=3",
        "task.max_new_tokens=6", "method.train_limit=3", "method.train.epochs=1", "method.train.optimizer=adamw",
        "method.train.lr=0.01", *isolated(tmp_path, "onpolicy"), *extra])


def samples(folder: Path, arm: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"samples/test_{arm}.jsonl").read_text().splitlines()]


def test_onpolicy_arm_is_trained_scored_and_reported_beside_the_student_alone(tmp_path: Path) -> None:
    metrics = execute(onpolicy_config(tmp_path), progress=False)
    folder = only_run_folder(tmp_path, "onpolicy")
    assert [row["arm"] for row in metrics["rows"]] == ["no_train", "onpolicy"]
    training = metrics["training"]["onpolicy"]
    assert training["steps"] == 3 and training["items"] == 3 and training["resumed_from_step"] == 0
    assert (training["beta"], training["temperature"], training["max_completion_length"]) == (1.0, 1.0, 6)
    costs = metrics["costs"]["onpolicy"]
    assert 0 < costs["rollout_tokens"] <= 3 * 6 < costs["forward_tokens"]  # the teacher reads prompt + rollout
    assert costs["steps"] == 3 and costs["train_s"] > 0
    losses = [json.loads(line) for line in (folder / "artifacts/onpolicy/losses.jsonl").read_text().splitlines()]
    assert [row["step"] for row in losses] == [1, 2, 3] and all(row["loss"] > 0 for row in losses)
    # the adapter was written, loads on the student, and is what the onpolicy arm was scored with
    adapter = folder / "artifacts/onpolicy/adapter"
    from omegaconf import OmegaConf
    from bench.models import build_model
    student = OmegaConf.to_object(onpolicy_config(tmp_path).student)
    loaded = build_model(dataclasses.replace(student, adapter_path=str(adapter)))
    assert "+lora:" in loaded.model_id
    assert {s["model_id"] for s in samples(folder, "onpolicy")} == {loaded.model_id}
    assert [s["task_id"] for s in samples(folder, "onpolicy")] == [s["task_id"] for s in samples(folder, "no_train")]
    assert "paired_vs_no_train" in metrics["arms"]["onpolicy"]
    row = metrics["rows"][1]
    assert {"diff", "mcnemar_p", "bootstrap_p"} <= set(row) and row["label"] == "On-policy KD"
    assert row["cost"]["teacher_forward_tokens"] == costs["forward_tokens"] and row["cost"]["train_steps"] == 3
    # the report's tables carry the arm and what it cost
    tables = tmp_path / "results" / "tables"
    table = (tables / "onpolicy.md").read_text()
    assert "| onpolicy | 3 |" in table and "| no_train | 3 |" in table
    assert "On-policy KD" in (tables / "onpolicy.cost.md").read_text()


def test_rerun_resumes_without_retraining(tmp_path: Path) -> None:
    first = execute(onpolicy_config(tmp_path), progress=False)
    adapter = only_run_folder(tmp_path, "onpolicy") / "artifacts/onpolicy/adapter/adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    second = execute(onpolicy_config(tmp_path), progress=False)
    assert adapter.stat().st_mtime_ns == stamp  # not retrained
    assert second["training"] == first["training"] and second["costs"] == first["costs"]
    assert all(arm["cached"] == arm["n"] for arm in second["arms"].values())  # no new generations


def assert_no_work_done(tmp_path: Path) -> None:
    """A run refused before any work leaves no run folder (it would hold only config.yaml and splits.json)."""
    assert not [path for path in (tmp_path / "results" / "onpolicy").iterdir() if not path.name.startswith("_")]


def test_a_teacher_with_another_tokenizer_fails_before_any_work(tmp_path: Path) -> None:
    from bench.models.embedded import build_tiny_llama
    model, tokenizer = build_tiny_llama(seed=1)
    tokenizer.add_tokens(["<teacher-only-token>"])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="share a tokenizer.*method=rpkd method.signal=sequence"):
        execute(onpolicy_config(tmp_path, "teacher.tiny=false", f"teacher.model_id={tmp_path / 'teacher'}"),
                progress=False)
    assert_no_work_done(tmp_path)


def test_an_api_teacher_fails_before_any_work(tmp_path: Path) -> None:
    # a local OpenAI-compatible address needs no key and is never called: the method refuses first
    with pytest.raises(ValueError, match="backend=openai.*next-token distributions"):
        execute(onpolicy_config(tmp_path, "teacher=openai_compatible", "teacher.base_url=http://127.0.0.1:9/v1",
                                "teacher.model_id=scripted"), progress=False)
    assert_no_work_done(tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("method.on_policy_fraction=0.5", "on_policy_fraction=0.5.*1.0 is the one value"),
    ("method.beta=1.5", r"method.beta=1.5 is impossible; it must be in \[0, 1\]"),
    ("method.temperature=0", "method.temperature must be > 0"),
])
def test_invalid_knobs_fail_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        execute(onpolicy_config(tmp_path, override), progress=False)
    assert not (tmp_path / "results").exists()


def test_lora_and_optimiser_defaults_are_rpkds() -> None:
    """Equal terms: without overrides, on-policy KD trains RP-KD's adapter with RP-KD's optimiser and budget."""
    onpolicy = compose_config(["method=onpolicy"]).method
    rpkd = compose_config(["method=rpkd"]).method
    assert OmegaConf.to_container(onpolicy.lora) == OmegaConf.to_container(rpkd.lora)
    assert OmegaConf.to_container(onpolicy.train) == OmegaConf.to_container(rpkd.train)
    assert onpolicy.train_limit == rpkd.train_limit


def test_onpolicy_shorthand_selects_the_method() -> None:
    from bench.__main__ import expand_method_shorthand
    assert expand_method_shorthand(["onpolicy.beta=0.5"]) == ["method=onpolicy", "++onpolicy.beta=0.5"]


def test_wandb_gets_the_training_curve_the_costs_and_the_adapter(tmp_path: Path) -> None:
    from wandb_offline import read_runs

    from bench.wandb_tracker import wandb_run_id
    execute(onpolicy_config(tmp_path, "logger=wandb", "logger.mode=offline"), progress=False)
    folder = only_run_folder(tmp_path, "onpolicy")
    (run,) = read_runs(folder / "wandb")
    curve = {name for name, metric in run.metrics.items() if metric.step_metric == "train/onpolicy/step"}
    assert {"train/onpolicy/loss", "train/onpolicy/lr", "train/onpolicy/grad_norm"} <= curve
    assert [row["train/onpolicy/step"] for row in run.history if "train/onpolicy/step" in row] == [1, 2, 3]
    assert run.summary["cost/onpolicy/train_steps"] == 3 and run.summary["cost/onpolicy/teacher_forward_tokens"] > 0
    assert {"eval/no_train/accuracy", "eval/onpolicy/delta", "eval/onpolicy/p_value"} <= set(run.summary)
    key = wandb_run_id(folder, tmp_path / "results")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= run.artifact_files(f"adapter-{key}-onpolicy")
    assert [a.name for a in run.artifacts if a.name.startswith("adapter-")] == [f"adapter-{key}-onpolicy"]
