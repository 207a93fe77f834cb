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
from compose import compose_config, isolated, needs_data
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
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


def test_method_shorthand_becomes_method_options_and_selects_the_method() -> None:
    """Each shorthand becomes the option dict of its method (merged into the method after composition, see
    tests/test_cli.py), in place; a `method=` it selects goes right before it, among the overrides."""
    assert expand_method_shorthand(["cd.prompt_from=runs/x", "task=gsm8k"]) == \
        ["method=cd", "++cd.prompt_from=runs/x", "task=gsm8k"]
    assert expand_method_shorthand(["-m", "method=rpkd", "rpkd.priming=teacher,confidence", "++rpkd.top_k=5"]) == \
        ["-m", "method=rpkd", "++rpkd.priming=teacher,confidence", "++rpkd.top_k=5"]
    assert expand_method_shorthand(["task=gsm8k", "-m", "cd.max_rules=1,2"]) == \
        ["task=gsm8k", "-m", "method=cd", "++cd.max_rules=1,2"]
    untouched = ["task=gsm8k", "student.name=cd.x", "+experiments=cd_smollm2", "-cn", "cd.yaml"]
    assert expand_method_shorthand(untouched) == untouched
    assert expand_method_shorthand(["+experiments=rpkd_smollm2", "rpkd.top_k=5"]) == \
        ["+experiments=rpkd_smollm2", "++rpkd.top_k=5"]  # the preset chooses the method


def test_method_shorthand_composes_into_the_method_schema() -> None:
    from bench.cli import method_options_at_composition

    with method_options_at_composition():
        config = compose_run(expand_method_shorthand(["rpkd.priming=confidence", "rpkd.alpha=0.5"]))
        assert (config.method.name, config.method.priming, config.method.alpha) == ("rpkd", "confidence", 0.5)
        with pytest.raises(ConfigCompositionException, match="max_rulez"):
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
    included: minutes on a checkout with its virtual environment. The presets are now a config group in conf/.
    It also listed the schemas (`baseline_schema`, `model_schema`, ...) among each group's options."""
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
    options = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in section.splitlines()
               if re.match(r"^[a-z_/]+: ", line)}
    assert options["method"] == ["baseline", "cd", "compare", "onpolicy", "rpkd"]
    assert options["logger"] == ["none", "wandb"] and "model_schema" not in options["student"]
    assert not [option for group in options.values() for option in group if option.endswith("_schema")]


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


# ------------------------------------------------------------------ headline: what a job returns to a sweeper
@pytest.mark.parametrize("overrides, rows, arm, value", [
    (["method=baseline"], [{"arm": "student", "accuracy": 0.25}], "student", 0.25),
    (["method=baseline", "method.model=teacher"], [{"arm": "teacher", "accuracy": 0.5}], "teacher", 0.5),
    (["method=cd"], [{"arm": "base prompt", "accuracy": 0.4}, {"arm": "CD prompt", "accuracy": 0.3}],
     "CD prompt", 0.3),
    (["method=rpkd", "method.arms=[no_train,gt_finetune,teacher,ground_truth]"],
     [{"arm": "no_train", "accuracy": 0.5}, {"arm": "gt_finetune", "accuracy": 0.6},
      {"arm": "teacher", "accuracy": 0.4}, {"arm": "ground_truth", "accuracy": 0.3}], "teacher", 0.4),
    (["method=rpkd", "method.arms=[no_train,gt_finetune]"],
     [{"arm": "no_train", "accuracy": 0.5}, {"arm": "gt_finetune", "accuracy": 0.6}], "gt_finetune", 0.6),
    (["method=onpolicy"], [{"arm": "no_train", "accuracy": 0.5}, {"arm": "onpolicy", "accuracy": 0.2}],
     "onpolicy", 0.2),
    (["method=compare"], [{"arm": "student", "accuracy": 0.9}, {"arm": "cd", "accuracy": 0.1},
                          {"arm": "gt_finetune", "accuracy": 0.8},
                          {"arm": "rpkd/reference/ground_truth", "accuracy": 0.3}],
     "rpkd/reference/ground_truth", 0.3),
], ids=["baseline", "baseline-teacher", "cd", "rpkd", "rpkd-controls-only", "onpolicy", "compare"])
def test_each_method_names_its_headline(overrides: list[str], rows: list[dict], arm: str, value: float) -> None:
    """Baseline: the evaluated model; CD: the learned prompt; RP-KD: the best primed arm; on-policy: the distilled
    student; compare: the best distilled arm (not the student alone, nor the GT fine-tune control)."""
    from bench.methods import make_method
    from bench.methods.base import Headline

    assert make_method(compose_run(overrides).method).headline(rows) == Headline(arm=arm, value=value)


@needs_data
def test_the_task_function_returns_the_headline(tmp_path: Path) -> None:
    """So a sweeper (hydra/sweeper=optuna, Ax) can optimise over runs: main() returned None."""
    from bench.__main__ import main

    config = compose_config([*FAST, "experiment=headline", f"results_dir={tmp_path / 'results'}",
                             f"cache.path={tmp_path / 'cache.sqlite'}"])
    returned = main(config)
    (folder,) = (tmp_path / "results" / "headline").glob("baseline-*")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert isinstance(returned, float)
    assert returned == metrics["headline"]["value"] == metrics["evaluation"]["accuracy"]["mean"]
    assert metrics["headline"] == {"arm": "student", "value": returned, "metric": "accuracy"}


# ------------------------------------------------------------------ the run folder: one run at a time, no junk
@needs_data
def test_a_run_that_fails_before_producing_anything_leaves_no_folder(tmp_path: Path) -> None:
    """A missing API key (or a model that fails to load) used to leave a folder of config.yaml and splits.json."""
    env_key = os.environ.pop("OPENAI_API_KEY", None)
    try:
        with pytest.raises(Exception, match="OPENAI_API_KEY"):
            _run_in_process(tmp_path, "teacher=gpt4o", "method.model=teacher")
    finally:
        if env_key is not None:
            os.environ["OPENAI_API_KEY"] = env_key
    assert not (tmp_path / "results" / "fixed" / "fixed").exists()


def test_a_failed_run_keeps_a_folder_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "fixed" / "fixed"
    folder.mkdir(parents=True)
    other = compose_config([*FAST, "task.max_new_tokens=9"])
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(other, resolve=True))  # an earlier run's, alone
    with pytest.raises(ValueError, match="different config"):
        _run_in_process(tmp_path)
    assert (folder / "config.yaml").exists()


def test_a_second_identical_run_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    """Two identical runs (the same folder) used to reset and rewrite each other's phases and adapters."""
    from bench.tracking import RunFolderBusy, RunFolderLock

    folder = tmp_path / "results" / "fixed" / "fixed"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    holder = RunFolderLock(folder)
    holder.acquire()
    try:
        with pytest.raises(RunFolderBusy, match=rf"{folder}.*process {os.getpid()}"):
            _run_in_process(tmp_path, "resume=false")  # would have emptied the folder
    finally:
        holder.release()
    assert (folder / "metrics.json").read_text() == "{}"


# Defect: method.train_limit=0 failed after the models loaded, naming task.limit; train.epochs=0 "trained" 0 steps
# and reported results; lora.r=0 surfaced as peft's message; cache.flush_every=0 rewrote a finished run's config.
@pytest.mark.parametrize("overrides", [
    ["method=rpkd", "method.train_limit=0"], ["method=rpkd", "method.train.epochs=0"],
    ["method=rpkd", "method.lora.r=0"], ["method=rpkd", "method.lora.dropout=1.0"], ["method=rpkd", "method.alpha=1.5"],
    ["method=onpolicy", "method.train.grad_accum=0"], ["method=cd", "method.max_rules=0"],
    ["method=compare", "method.rpkd.train.lr=0"], ["cache.flush_every=0"], ["student.batch_size=0"],
])
def test_impossible_method_model_and_cache_values_are_named_before_any_work(overrides: list[str]) -> None:
    from bench.__main__ import check_run_config

    key = overrides[-1].split("=")[0]
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=\S+ is impossible"):
        check_run_config(compose_run(overrides))


def test_possible_values_pass_the_checks() -> None:
    from bench.__main__ import check_run_config

    for overrides in ([], ["method=rpkd"], ["method=cd"], ["method=onpolicy"], ["method=compare"],
                      ["+experiments=rpkd_gsm8k_paper"], ["method=rpkd", "method.train_limit=null"]):
        check_run_config(compose_run(overrides))


def test_every_method_is_registered_under_its_name_with_its_schema() -> None:
    from bench.config import MethodConfig
    from bench.methods import METHODS, method_class

    assert METHODS.names() == ["baseline", "cd", "compare", "onpolicy", "rpkd"]
    for name in METHODS.names():
        cls = method_class(name)
        assert cls.name == name and issubclass(cls.config_class, MethodConfig)
        assert cls.config_class().name == name  # the schema's default name selects the class that reads it


def test_listed_nested_keys_leave_the_identity_alone(monkeypatch) -> None:
    """A new engine/launcher setting is listed in NOT_IDENTITY_PATHS so it does not rename every earlier run."""
    import bench.__main__ as cli

    config = OmegaConf.create(OmegaConf.to_container(compose_run([])))  # untyped: new keys may be added
    before = cli.config_identity(config)
    config.student.engine_knob = "x"
    config.teacher.engine_knob = "y"
    assert cli.config_identity(config) != before
    import bench.identity as identity

    monkeypatch.setattr(identity, "NOT_IDENTITY_PATHS", (*identity.NOT_IDENTITY_PATHS, "student.engine_knob"))
    assert cli.config_identity(config) == before
    config.student.batch_size = 3  # what is not listed still counts
    assert cli.config_identity(config) != before


def test_a_model_the_method_does_not_use_may_be_left_incomplete(tmp_path: Path) -> None:
    """A baseline of the student never builds the teacher, and its config may leave the teacher unfinished
    (teacher=openai_compatible has no model_id until one is given); the value checks read it all the same and
    failed with omegaconf's MissingMandatoryValue on teacher.model_id."""
    from bench.__main__ import execute

    metrics = execute(compose_config(["method=baseline", "student=tiny", "teacher=openai_compatible", "task=gsm8k",
                                      "task.limit=1", "task.max_new_tokens=2", "logger=none",
                                      *isolated(tmp_path, "unused")]), progress=False)
    assert list(metrics["models"]) == ["student"]
