"""Run store atomicity, long-format results, run artifacts, and the W&B runs real jobs write (offline, read back
from the run's own transaction log by tests/wandb_offline.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from compose import compose_config, isolated, needs_data, only_run_folder
from scripted_server import ScriptedServer
from wandb_offline import read_runs

from bench.__main__ import execute
from bench.result_records import COST_FIELDS, ResultRecord, RunFacts, result_records
from bench.run_artifacts import report_artifact, run_artifacts
from bench.tracking import RunStore, atomic_write_text, read_jsonl
from bench.wandb_tracker import WandbTracker, wandb_run_id

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_leaves_no_temp_files_and_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("crash while writing")

    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError):
        store.write_jsonl("metrics.json", iter([{"a": 1}, Boom()]))  # type: ignore[list-item]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_store_round_trips_and_phase_markers(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_json("a/b.json", {"x": 1})
    store.write_jsonl("s.jsonl", [{"i": 1}, {"i": 2}])
    assert store.read_json("a/b.json") == {"x": 1} and store.read_jsonl("s.jsonl") == [{"i": 1}, {"i": 2}]
    assert not store.phase_done("init")
    store.mark_phase_done("init", {"n": 3})
    assert store.phase_done("init")
    store.clear_phases()
    assert not store.phase_done("init")


# ------------------------------------------------------------------ one run per folder, no junk folders
HOLD_LOCK = """
import sys
from bench.tracking import RunFolderLock
lock = RunFolderLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_the_run_folder_lock_refuses_a_second_holder_at_once(tmp_path: Path) -> None:
    """flock locks open file descriptions: two in one process contend like two processes would."""
    from bench.tracking import RunFolderBusy, RunFolderLock

    first, second = RunFolderLock(tmp_path), RunFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderBusy, match=rf"run folder {tmp_path} is in use by process {os.getpid()} on "):
        second.acquire()
    first.release()
    second.acquire()  # free again
    second.release()


def test_the_run_folder_lock_names_another_process_holding_it(tmp_path: Path) -> None:
    from bench.tracking import RunFolderBusy, RunFolderLock

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"in use by process {holder.pid} "):
            RunFolderLock(tmp_path).acquire()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    lock = RunFolderLock(tmp_path)
    lock.acquire()  # released by the holder's exit
    lock.release()


def test_reset_keeps_the_lock_of_the_run_holding_the_folder(tmp_path: Path) -> None:
    from bench.tracking import RunFolderBusy, claim_run_folder

    with claim_run_folder(tmp_path / "run") as store:
        store.write_json("phases/train.done", {})
        store.reset()
        assert [path.name for path in store.root.iterdir()] == [".lock"]
        with pytest.raises(RunFolderBusy):
            with claim_run_folder(tmp_path / "run"):
                pass


@pytest.mark.parametrize("existed, written, kept", [
    (False, ["config.yaml", "splits.json"], False),  # failed before producing anything: no junk folder
    (False, ["config.yaml", "splits.json", "samples/student.jsonl"], True),  # partial results are kept
    (True, ["config.yaml", "splits.json"], True),  # the folder of an earlier run is never removed
])
def test_a_failed_run_removes_only_the_empty_folder_it_made(tmp_path: Path, existed: bool, written: list[str],
                                                             kept: bool) -> None:
    from bench.tracking import claim_run_folder

    folder = tmp_path / "run"
    if existed:
        folder.mkdir()
    with pytest.raises(RuntimeError, match="model failed to load"):
        with claim_run_folder(folder) as store:
            (folder / "artifacts").mkdir()  # an empty folder is nothing
            for name in written:
                store.write_text(name, "x")
            raise RuntimeError("model failed to load")
    assert folder.exists() == kept


def test_a_finished_run_keeps_its_folder(tmp_path: Path) -> None:
    from bench.tracking import claim_run_folder

    with claim_run_folder(tmp_path / "run") as store:
        store.write_text("config.yaml", "x")
    assert (tmp_path / "run" / "config.yaml").exists()


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{bad\n')
    with pytest.raises(ValueError, match="x.jsonl:2"):
        read_jsonl(path)


FACTS = RunFacts(experiment="h2h", task="gsm8k", method="rpkd", student="smollm2", teacher="smollm2", seed=0)
OLD_ROW = {"arm": "no_train", "n": 50, "accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.3, "interval": "wilson"}
OLD_PAIRED = {"arm": "gt_finetune", "n": 50, "accuracy": 0.3, "ci_low": 0.2, "ci_high": 0.4, "interval": "wilson",
              "diff": 0.1, "mcnemar_p": 0.04, "bootstrap_p": 0.05}
COST = {"teacher_prompt_tokens": 1200, "teacher_completion_tokens": 300, "teacher_usd": 0.25,
        "teacher_forward_tokens": 0, "teacher_cache_bytes": 0, "train_steps": 0, "train_s": 0.0,
        "eval_completion_tokens": 900, "eval_s": 12.5, "stopped": None}
COMPARE = {"task": "gsm8k", "method": "compare", "seed": 3, "student_name": "tiny", "teacher_name": "gpt4o", "rows": [
    {"arm": "student", "label": "student", "family": "baseline", "n": 3, "accuracy": 0.0, "ci_low": 0.0,
     "ci_high": 0.56, "interval": "wilson", "cost": {**COST, "teacher_usd": 0.0}, "losses": None},
    {"arm": "cd", "label": "CD prompt", "family": "cd", "n": 3, "accuracy": 1 / 3, "ci_low": 0.06, "ci_high": 0.79,
     "interval": "wilson", "diff": 1 / 3, "mcnemar_p": 0.5, "bootstrap_p": 0.3, "cost": COST, "losses": None},
    {"arm": "rpkd/reference/teacher", "label": "RP-KD teacher", "family": "rpkd", "n": 3, "accuracy": 2 / 3,
     "ci_low": 0.2, "ci_high": 0.94, "interval": "wilson", "diff": 2 / 3, "mcnemar_p": None, "bootstrap_p": 0.1,
     "cost": {**COST, "train_steps": 6, "train_s": 3.5}, "losses": "artifacts/rpkd/reference/teacher/losses.jsonl"},
]}


def test_old_and_compare_rows_become_the_same_long_records() -> None:
    old = result_records({"rows": [OLD_ROW, OLD_PAIRED]}, FACTS)
    assert [(r.arm, r.label, r.method, r.seed, r.delta, r.p_value) for r in old] == [
        ("no_train", "no_train", "rpkd", 0, None, None), ("gt_finetune", "gt_finetune", "rpkd", 0, 0.1, 0.04)]
    assert not old[0].has_cost and old[1].metric_keys() == {
        "eval/gt_finetune/accuracy": 0.3, "eval/gt_finetune/ci_low": 0.2, "eval/gt_finetune/ci_high": 0.4,
        "eval/gt_finetune/n": 50, "eval/gt_finetune/delta": 0.1, "eval/gt_finetune/p_value": 0.04}
    new = result_records(COMPARE, FACTS)
    # metrics.json's own task, method, seed and model names win over the config's
    assert {(r.method, r.seed, r.student, r.teacher, r.experiment) for r in new} == {
        ("compare", 3, "tiny", "gpt4o", "h2h")}
    assert [(r.arm, r.label, r.family) for r in new] == [("student", "student", "baseline"), ("cd", "CD prompt", "cd"),
                                                         ("rpkd/reference/teacher", "RP-KD teacher", "rpkd")]
    assert new[2].p_value == 0.1  # no McNemar p recorded: the paired bootstrap's
    keys = new[2].metric_keys()
    assert keys["eval/rpkd/reference/teacher/accuracy"] == 2 / 3 and keys["cost/rpkd/reference/teacher/train_steps"] == 6
    assert {key.rsplit("/", 1)[1] for key in keys if key.startswith("cost/")} == set(COST_FIELDS)
    assert ResultRecord.columns()[:15] == ("experiment", "task", "student", "teacher", "method", "arm", "label",
                                           "family", "seed", "n", "accuracy", "ci_low", "ci_high", "delta", "p_value")
    assert set(COST_FIELDS) <= set(ResultRecord.columns())
    with pytest.raises(ValueError, match="ambiguous"):
        result_records({"rows": [{**OLD_ROW, "arm": "rpkd//teacher"}]}, FACTS)


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_run_artifacts_find_metrics_prompt_files_and_every_adapter(tmp_path: Path) -> None:
    run = tmp_path / "results" / "h2h" / "run"
    for name in ("metrics.json", "config.yaml", "final_prompt.txt", "candidate_rules.jsonl",
                 "artifacts/teacher/adapter/adapter_config.json", "artifacts/teacher/adapter/adapter_model.safetensors",
                 "artifacts/rpkd/reference/teacher/adapter/adapter_config.json",
                 "rpkd-published/artifacts/ground_truth/adapter/adapter_config.json", "cd/final_prompt.txt",
                 "artifacts/teacher/checkpoint/state.pt", "wandb/offline-run-1/files/final_prompt.txt"):
        _touch(run / name)
    specs = {spec.name: spec for spec in run_artifacts(run, "abc")}
    assert set(specs) == {"metrics-abc", "prompt-abc", "adapter-abc-teacher", "adapter-abc-rpkd_reference_teacher",
                          "adapter-abc-rpkd-published_ground_truth"}  # compare's sub-run adapters too
    assert [name for name, _ in specs["metrics-abc"].files] == ["metrics.json", "config.yaml"]
    assert [name for name, _ in specs["prompt-abc"].files] == ["cd/final_prompt.txt", "final_prompt.txt",
                                                               "candidate_rules.jsonl"]
    assert {name for name, _ in specs["adapter-abc-teacher"].files} == {"adapter_config.json",
                                                                       "adapter_model.safetensors"}
    assert specs["adapter-abc-teacher"].type == "lora_adapter"


def test_report_artifact_takes_only_its_own_experiments_tables(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for experiment in ("cd", "cd_smollm2"):
        (results / experiment).mkdir(parents=True)
    for name in ("cd.md", "cd.tex", "cd_accuracy.png", "cd_smollm2.md", "cdx.md", "cd.json"):
        _touch(results / "tables" / name)
    spec = report_artifact(results / "tables", "cd", results)
    assert spec is not None and spec.name == "tables-cd" and spec.type == "report"
    assert [name for name, _ in spec.files] == ["cd.md", "cd.tex", "cd_accuracy.png"]
    assert report_artifact(results / "tables", "other", results) is None


def test_wandb_run_id_is_a_function_of_the_run_folder(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert wandb_run_id(results / "e" / "run-1", results) == wandb_run_id(results / "e" / "run-1", results)
    assert len({wandb_run_id(results / e / r, results) for e in ("e", "f") for r in ("run-1", "run-2")}) == 4


def test_tracker_logs_long_results_own_step_axes_and_artifacts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = WandbTracker(project="bench-test", entity=None, mode="offline", run_id="abc123", name="job",
                           group="h2h", job_type="compare", tags=["mine", "task:gsm8k"], config={"seed": 3},
                           directory=tmp_path)
    for arm in ("rpkd", "rpkd/reference/teacher"):  # one arm's name is a path prefix of the other's
        for step in (1, 2, 3):
            tracker.log({f"train/{arm}": {"step": step, "lr": 0.1, "loss": 1.0 / step, "grad_norm": 2.0}})
    tracker.log_samples("test_cd", [{"task_id": "a", "split": "test", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "reference": "4",
        "extracted": {"strict": None, "flexible": "4"}, "status": "passed", "passed": True, "completion": "4"}])
    tracker.log_results(result_records(COMPARE, FACTS))
    _touch(tmp_path / "metrics.json", "{}")
    tracker.log_artifacts(run_artifacts(tmp_path, "abc123"))
    tracker.finish()

    (run,) = read_runs(tmp_path / "wandb")
    assert (run.run_id, run.run.run_group, run.run.job_type, run.exit_code) == ("abc123", "h2h", "compare", 0)
    for arm in ("rpkd", "rpkd/reference/teacher"):
        for field in ("lr", "loss", "grad_norm"):
            assert run.metrics[f"train/{arm}/{field}"].step_metric == f"train/{arm}/step"
    assert not any(metric.glob_name for metric in run.metrics.values())  # exact names: no prefix-glob overlap
    steps = [row["train/rpkd/reference/teacher/step"] for row in run.history if "train/rpkd/reference/teacher/step" in row]
    assert steps == [1, 2, 3]
    assert run.summary["eval/rpkd/reference/teacher/accuracy"] == pytest.approx(2 / 3)
    assert run.summary["eval/cd/p_value"] == 0.5 and run.summary["cost/cd/teacher_usd"] == 0.25
    assert "eval/student/delta" not in run.summary
    rows = run.table("results")
    assert [row["arm"] for row in rows] == ["student", "cd", "rpkd/reference/teacher"]
    assert rows[2]["train_steps"] == 6 and rows[2]["seed"] == 3 and rows[1]["label"] == "CD prompt"
    assert list(rows[0]) == list(ResultRecord.columns())
    (sample,) = run.table("samples/test_cd")
    assert sample["prompt"] == "[system]\nBe brief.\n\n[user]\n2+2?"
    assert (sample["reference"], sample["extracted"], sample["status"], sample["passed"]) == (
        "4", "strict: None; flexible: 4", "passed", True)
    assert run.artifact_files("metrics-abc123") == {"metrics.json"}


def _runs(folder: Path):
    runs = read_runs(folder / "wandb")
    assert runs and {run.run_id for run in runs} == {wandb_run_id(folder, folder.parent.parent)}
    return runs


WANDB = ["logger=wandb", "logger.mode=offline", "logger.tags=[mine]"]


@needs_data
def test_a_rerun_resumes_the_same_wandb_run_with_stable_keys_table_and_artifacts(tmp_path: Path) -> None:
    config = compose_config(["student=tiny", "task=gsm8k", "task.limit=2", "task.max_new_tokens=4", *WANDB,
                             *isolated(tmp_path, "wb")])
    metrics = execute(config, progress=False)
    assert [row["arm"] for row in metrics["rows"]] == ["student"]  # the role, not "student (tiny)"
    execute(config, progress=False)
    folder = only_run_folder(tmp_path, "wb")
    runs = _runs(folder)
    assert len(runs) == 2  # two offline folders (one per invocation), one W&B run id: resumed, not duplicated
    run = runs[-1]
    assert (run.run.run_group, run.run.job_type, run.run.display_name) == ("wb", "baseline", folder.name)
    assert {"mine", "task:gsm8k", "student:tiny", "arm:student"} <= set(run.run.tags)
    assert not any(tag.startswith("teacher:") for tag in run.run.tags)  # baseline uses no teacher
    assert run.summary["eval/student/n"] == 2
    assert run.summary["eval/student/accuracy"] == metrics["rows"][0]["accuracy"]
    assert {"eval/student/ci_low", "eval/student/ci_high"} <= set(run.summary)
    (row,) = run.table("results")
    assert (row["experiment"], row["task"], row["student"], row["teacher"], row["method"], row["arm"], row["seed"],
            row["n"]) == ("wb", "gsm8k", "tiny", None, "baseline", "student", 0, 2)
    samples = run.table("samples/student")
    assert len(samples) == 2 and all(s["prompt"].startswith("[") and s["reference"] for s in samples)
    key = wandb_run_id(folder, tmp_path / "results")
    assert run.artifact_files(f"metrics-{key}") == {"metrics.json", "config.yaml", "splits.json"}
    assert {"wb.md", "wb.tex"} <= run.artifact_files("tables-wb")


@needs_data
def test_rpkd_job_plots_each_arm_on_its_own_step_axis_and_keeps_each_adapter(tmp_path: Path) -> None:
    execute(compose_config([
        "method=rpkd", "student=tiny", "teacher=tiny", "task=gsm8k", "task.limit=2", "task.max_new_tokens=4",
        "method.arms=[no_train,gt_finetune,ground_truth]", "method.train_limit=2", "method.train.epochs=1",
        "method.train.max_length=160", *WANDB, *isolated(tmp_path, "wb")]), progress=False)
    folder = only_run_folder(tmp_path, "wb")
    (run,) = _runs(folder)
    assert run.run.job_type == "rpkd" and {"teacher:tiny", "arm:gt_finetune", "arm:ground_truth"} <= set(run.run.tags)
    for arm in ("gt_finetune", "ground_truth"):
        assert {name for name, metric in run.metrics.items() if metric.step_metric == f"train/{arm}/step"} == {
            f"train/{arm}/{field}" for field in ("lr", "loss", "ce", "kl", "grad_norm")}
        steps = [row[f"train/{arm}/step"] for row in run.history if f"train/{arm}/step" in row]
        assert steps == [1, 2]  # its own axis restarts at 1; W&B's global step does not
        norms = [row[f"train/{arm}/grad_norm"] for row in run.history if f"train/{arm}/grad_norm" in row]
        assert len(norms) == 2 and all(norm > 0 for norm in norms)
    assert {"eval/no_train/accuracy", "eval/gt_finetune/delta", "eval/ground_truth/p_value"} <= set(run.summary)
    assert [row["arm"] for row in run.table("results")] == ["no_train", "gt_finetune", "ground_truth"]
    key = wandb_run_id(folder, tmp_path / "results")
    for arm in ("gt_finetune", "ground_truth"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= run.artifact_files(f"adapter-{key}-{arm}")
    assert all(a.type == "lora_adapter" for a in run.artifacts if a.name.startswith("adapter-"))


GOOD_RULES = ("EXPLANATION: The student did not compute step by step.\nRULES:\n"
              "- Write every intermediate calculation on its own line.\n")


@needs_data
def test_cd_job_keeps_its_final_prompt_and_candidate_rules(tmp_path: Path) -> None:
    with ScriptedServer(reply=GOOD_RULES) as teacher:
        execute(compose_config([
            "method=cd", "student=tiny", "teacher=openai_compatible", f"teacher.base_url={teacher.base_url}",
            "teacher.model_id=scripted-teacher", "task=gsm8k", "task.limit=2", "task.max_new_tokens=4",
            "task.validation_size=2", "method.train_sample=2", "method.max_mistakes=2", "method.mistakes_per_call=2",
            "method.calls_per_round=1", *WANDB, *isolated(tmp_path, "wb")]), progress=False)
    folder = only_run_folder(tmp_path, "wb")
    (run,) = _runs(folder)
    key = wandb_run_id(folder, tmp_path / "results")
    assert run.artifact_files(f"prompt-{key}") == {"final_prompt.txt", "candidate_rules.jsonl"}
    assert {"teacher:local", "arm:base prompt", "arm:CD prompt"} <= set(run.run.tags)
    assert {"eval/base prompt/accuracy", "eval/CD prompt/delta"} <= set(run.summary)


@needs_data
def test_compare_job_logs_every_arm_long_and_keeps_its_sub_runs_files(tmp_path: Path) -> None:
    metrics = execute(compose_config([
        "method=compare", "student=tiny", "teacher=tiny", "task=gsm8k", "task.limit=2", "task.max_new_tokens=4",
        "task.validation_size=2", "method.cd.train_sample=2", "method.cd.max_mistakes=2",
        "method.cd.mistakes_per_call=2", "method.cd.malformed_retries=0", "method.cd.teacher_max_new_tokens=4",
        "method.rpkd.arms=[gt_finetune,ground_truth]", "method.rpkd.train_limit=2", "method.rpkd.train.epochs=1",
        "method.rpkd.train.max_length=128", "method.signals=[reference]", *WANDB, *isolated(tmp_path, "wb")]),
        progress=False)
    folder = only_run_folder(tmp_path, "wb")
    (run,) = _runs(folder)
    arms = [row["arm"] for row in metrics["rows"]]
    assert arms == ["student", "cd", "gt_finetune", "rpkd/reference/ground_truth"]
    rows = run.table("results")
    assert [row["arm"] for row in rows] == arms and all(row["method"] == "compare" for row in rows)
    assert rows[3]["label"] == "RP-KD Ground Truth (reference)" and rows[3]["family"] == "rpkd"
    assert rows[3]["train_steps"] == 2 and rows[3]["teacher_forward_tokens"] > 0
    assert run.summary["eval/rpkd/reference/ground_truth/accuracy"] == metrics["rows"][3]["accuracy"]
    assert run.summary["cost/cd/teacher_prompt_tokens"] > 0 and "eval/cd/p_value" in run.summary
    assert run.metrics["train/rpkd-reference/ground_truth/loss"].step_metric == "train/rpkd-reference/ground_truth/step"
    key = wandb_run_id(folder, tmp_path / "results")
    assert {"cd/final_prompt.txt", "cd/candidate_rules.jsonl"} <= run.artifact_files(f"prompt-{key}")
    for arm in ("gt_finetune", "ground_truth"):
        assert "adapter_config.json" in run.artifact_files(f"adapter-{key}-rpkd-reference_{arm}")


def test_results_are_readable_by_colleagues_as_the_umask_allows(tmp_path: Path) -> None:
    """Files were written 0600 (mkstemp's mode, carried over by the rename): a shared cluster's colleagues could
    not read a run's results."""
    from bench.tracking import RunStore

    previous = os.umask(0o022)
    try:
        path = RunStore(tmp_path / "run").write_json("metrics.json", {"n": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)  # a private umask is respected too
        path = RunStore(tmp_path / "run").write_text("config.yaml", "x: 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    """Lustre mounted without flock answers ENOSYS: every run failed there; now it runs and says what is lost."""
    import errno
    import fcntl

    from bench.tracking import RunFolderLock

    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = RunFolderLock(tmp_path)
    with caplog.at_level("WARNING"):
        lock.acquire()
    assert "running unlocked" in caplog.text
    lock.release()

    def broken(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):
        RunFolderLock(tmp_path).acquire()
