"""The Hydra app end to end on the tiny model: config errors, results files, resume via cache, multirun."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compose import compose_config, needs_data
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from bench.__main__ import check_preset_spelling, config_identity, expand_method_shorthand, format_table

REPO = Path(__file__).resolve().parents[1]
FAST = ["task=gsm8k", "student=tiny", "teacher=tiny", "task.limit=4", "task.max_new_tokens=8", "logger=none"]


compose_run = compose_config


def run_bench(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags = [arg for arg in args if arg.startswith("-")]  # Hydra's flags (-m) must precede the overrides
    overrides = [arg for arg in args if not arg.startswith("-")]
    result = subprocess.run([sys.executable, "-m", "bench", *flags, f"results_dir={tmp_path / 'results'}",
                             f"cache.path={tmp_path / 'cache.sqlite'}", *overrides],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"bench failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def test_default_config_composes_and_validates() -> None:
    config = compose_run([])
    assert (config.method.name, config.task.name, config.student.name) == ("baseline", "multiarith", "smollm2")
    assert config.scoring.sandbox == "nsjail"


def test_misspelt_key_fails_at_once() -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_run(["task.limt=5"])


def test_wrong_type_fails_at_once() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_run(["task.limit=many"])


def test_unknown_option_lists_the_valid_ones(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "student=nope", check=False)
    assert result.returncode != 0
    assert "Could not find 'student/nope'" in result.stderr
    assert "smollm2" in result.stderr and "tiny" in result.stderr


def test_identity_ignores_logging_but_not_content() -> None:
    base = config_identity(compose_run(FAST))
    assert base == config_identity(compose_run([*FAST, "logger=wandb", "experiment=other"]))
    assert base != config_identity(compose_run([*FAST, "task.limit=5"]))


@needs_data
def test_baseline_run_writes_results_and_reruns_from_cache(tmp_path: Path) -> None:
    first = run_bench(tmp_path, *FAST, "experiment=t")
    runs = list((tmp_path / "results" / "t").glob("baseline-gsm8k-s_tiny-*"))
    assert len(runs) == 1
    run = runs[0]
    for name in ("config.yaml", "splits.json", "metrics.json", "samples/student.jsonl", "metrics/student.json"):
        assert (run / name).exists(), name
    samples = [json.loads(line) for line in (run / "samples/student.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    assert {"task_id", "messages", "completion", "status", "detail", "prompt_tokens", "completion_tokens",
            "latency_s", "scores"} <= set(samples[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["n"] == 4 and metrics["evaluation"]["cached"] == 0
    assert {"mean", "ci_low", "ci_high"} <= set(metrics["evaluation"]["accuracy"])
    splits = json.loads((run / "splits.json").read_text())
    assert samples[0]["task_id"] in splits["test"] and not set(splits["test"]) & set(splits["train"])
    assert [row["arm"] for row in metrics["rows"]] == ["student"]  # the role: arm names never embed the model
    assert "(student=tiny)" in first.stdout  # the model is named beside the summary table instead

    run_bench(tmp_path, *FAST, "experiment=t")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["cached"] == 4, "a re-run must be served entirely from the cache"


@needs_data
def test_multirun_gives_each_job_its_own_folder(tmp_path: Path) -> None:
    run_bench(tmp_path, "-m", *FAST, "experiment=sweep", "task=gsm8k,multiarith")
    runs = sorted(p.name.split("-")[1] for p in (tmp_path / "results" / "sweep").glob("baseline-*"))
    assert runs == ["gsm8k", "multiarith"]


@needs_data
def test_missing_api_key_fails_before_any_work(tmp_path: Path) -> None:
    env_key = os.environ.pop("OPENAI_API_KEY", None)
    try:
        result = run_bench(tmp_path, *FAST, "teacher=gpt4o", "method.model=teacher", check=False)
    finally:
        if env_key is not None:
            os.environ["OPENAI_API_KEY"] = env_key
    assert result.returncode != 0 and "OPENAI_API_KEY" in result.stderr
    assert not list((tmp_path / "results").rglob("samples"))


def test_format_table() -> None:
    table = format_table([{"arm": "a", "accuracy": 0.5}, {"arm": "bb", "accuracy": 0.25, "extra": 1}])
    assert table.splitlines()[0].split() == ["arm", "accuracy", "extra"]
    assert "0.250" in table


def test_method_shorthand_becomes_method_overrides_and_selects_the_method() -> None:
    assert expand_method_shorthand(["cd.prompt_from=runs/x", "task=gsm8k"]) == \
        ["method=cd", "method.prompt_from=runs/x", "task=gsm8k"]
    assert expand_method_shorthand(["-m", "method=rpkd", "rpkd.priming=teacher,confidence", "++rpkd.top_k=5"]) == \
        ["-m", "method=rpkd", "method.priming=teacher,confidence", "++method.top_k=5"]
    untouched = ["task=gsm8k", "student.name=cd.x", "+experiments=cd_smollm2"]
    assert expand_method_shorthand(untouched) == untouched


def test_method_shorthand_composes_into_the_method_schema() -> None:
    config = compose_run(expand_method_shorthand(["rpkd.priming=confidence", "rpkd.alpha=0.5"]))
    assert (config.method.name, config.method.priming, config.method.alpha) == ("rpkd", "confidence", 0.5)
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_run(expand_method_shorthand(["cd.max_rulez=3"]))


@pytest.mark.parametrize("overrides", [["method=rpkd", "cd.max_rules=3"], ["cd.max_rules=3", "rpkd.top_k=5"]])
def test_contradictory_method_shorthand_fails_before_any_work(overrides: list[str]) -> None:
    with pytest.raises(SystemExit, match="method"):
        expand_method_shorthand(overrides)


def test_sampled_humaneval_scores_every_completion(tmp_path: Path) -> None:
    """task.samples=n: n completions per problem, all run in the sandbox, pass@k reported and tabled."""
    run_bench(tmp_path, *FAST, "experiment=sampled", "task=humaneval", "task.limit=2", "task.samples=3",
              "task.temperature=0.8", "task.pass_k=[1,2]")
    (run,) = (tmp_path / "results" / "sampled").glob("baseline-humaneval-*")
    samples = [json.loads(line) for line in (run / "samples/student.jsonl").read_text().splitlines()]
    assert [len(s["completions"]) for s in samples] == [3, 3]
    assert all(len(s["verdicts"]) == 3 and "program" in s["verdicts"][0]["extracted"] for s in samples)
    metrics = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert metrics["samples_per_item"] == 3 and set(metrics["pass_at_k"]) == {"1", "2"}
    assert sum(metrics["statuses"].values()) == 6
    assert "pass@2" in (tmp_path / "results" / "tables" / "sampled.md").read_text()


def test_sampling_without_temperature_fails_before_any_work(tmp_path: Path) -> None:
    result = run_bench(tmp_path, *FAST, "task=humaneval", "task.samples=4", check=False)
    assert result.returncode != 0
    assert "task.temperature" in result.stderr
    assert not list((tmp_path / "results").rglob("samples"))


def test_help_answers_and_lists_each_group_once(tmp_path: Path) -> None:
    """`--help` used to scan the whole repository (the presets' search path was its root), .venv/ and results/
    included: minutes on a checkout with its virtual environment. The presets are now a config group in conf/."""
    heavy = REPO / "results" / "_help_probe"  # where the old search path looked: it listed this as a group
    for index in range(200):
        (heavy / f"d{index}").mkdir(parents=True, exist_ok=True)
    (heavy / "stray.yaml").write_text("x: 1\n")
    try:
        done = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        shutil.rmtree(heavy, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    section = done.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = [line.split(":")[0] for line in section.splitlines() if re.match(r"^[a-z_/]+: ", line)]
    assert "experiments" in groups and "method" in groups
    assert len(groups) == len(set(groups))
    assert "_help_probe" not in done.stdout and not any(group.startswith("results") for group in groups)


def test_experiment_named_like_a_preset_says_how_to_load_it() -> None:
    with pytest.raises(SystemExit, match=r"\+experiments=cd_smollm2"):
        check_preset_spelling(["experiment=cd_smollm2"])
    check_preset_spelling(["experiment=my_study"])  # a plain results folder name is fine
    check_preset_spelling(["+experiments=cd_smollm2", "experiment=cd_smollm2"])


def _run_in_process(tmp_path: Path, *overrides: str) -> dict:
    from bench.__main__ import execute

    config = compose_config([*FAST, "experiment=fixed", "run_name=fixed", f"results_dir={tmp_path / 'results'}",
                             f"cache.path={tmp_path / 'cache.sqlite'}", *overrides])
    return execute(config, progress=False)


@needs_data
def test_resume_false_starts_afresh(tmp_path: Path) -> None:
    """resume=false used to delete only the phase markers, so RP-KD found its old checkpoint and 'resumed'."""
    _run_in_process(tmp_path)
    folder = tmp_path / "results" / "fixed" / "fixed"
    stale = folder / "artifacts" / "ground_truth" / "checkpoint"
    stale.mkdir(parents=True)
    (stale / "state.pt").write_text("from a killed run")
    (folder / "phases").mkdir(exist_ok=True)
    (folder / "phases" / "train_ground_truth.done").write_text("{}")
    _run_in_process(tmp_path, "resume=false")
    assert not (folder / "artifacts").exists() and not (folder / "phases" / "train_ground_truth.done").exists()
    assert (folder / "metrics.json").exists()


@needs_data
def test_a_run_folder_refuses_another_config(tmp_path: Path) -> None:
    """A fixed run_name used to reuse a folder (and its adapters) made by a different config."""
    _run_in_process(tmp_path)
    with pytest.raises(ValueError, match=r"different config \(changed: task.max_new_tokens\)"):
        _run_in_process(tmp_path, "task.max_new_tokens=9")
    _run_in_process(tmp_path, "task.max_new_tokens=9", "resume=false")  # starting afresh is allowed
    _run_in_process(tmp_path, "task.max_new_tokens=9", "logger=none")  # and so is resuming with the same config


@pytest.mark.parametrize("override", ["task.limit=0", "task.limit=-3", "task.samples=0", "task.max_new_tokens=0"])
def test_impossible_values_fail_before_any_work(tmp_path: Path, override: str) -> None:
    with pytest.raises(ValueError, match="impossible"):
        _run_in_process(tmp_path, override)
    assert not (tmp_path / "results").exists()  # no folder, no model loaded, no teacher call
