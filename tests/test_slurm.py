"""SLURM sweeps: the launcher presets (conf/hydra/launcher/), real sweeps through submitit's local executor (each job
pickled and run in a process of its own, as on a cluster), and a results folder shared by jobs on several nodes
(the report written without a working flock, runs finishing while it is written).

Needs the `slurm` extra (hydra-submitit-launcher), which `./setup.sh --test` installs."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from compose import CONF, needs_data
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.config import register_configs
from bench.reporting import write as report_write
from bench.reporting.write import regeneration_lock, write_tables

REPO = Path(__file__).resolve().parents[1]
FAST = ["task.limit=2", "task.max_new_tokens=4", "student=tiny", "teacher=tiny", "logger=none"]


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


# ------------------------------------------------------------------------------------------- presets


class _SubmittedJob:
    def results(self) -> list[str]:
        return ["not run"]


def sbatch_of(overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    """The sbatch script and executor parameters the preset's launcher would submit, through the real launcher
    and submitit's real SlurmExecutor; only the submission itself (sbatch) is left out."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit's SlurmExecutor checks srun exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    config = compose_with_hydra([*overrides, f"results_dir={tmp_path / 'results'}"])
    launcher = instantiate(config.hydra.launcher)
    submitted: dict = {}
    real_executor = submitit.AutoExecutor

    def executor(**kwargs):
        made = real_executor(**kwargs)

        def map_array(function, *arguments):
            submitted["script"] = made._executor._make_submission_file_text("python -m submitit.core._submit", "x")
            submitted["parameters"] = dict(made._executor.parameters)
            return [_SubmittedJob() for _ in arguments[0]]

        made.map_array = map_array
        return made

    monkeypatch.setattr(submitit, "AutoExecutor", executor)
    launcher.setup(hydra_context=None, task_function=None, config=config)
    assert launcher.launch([["task=gsm8k"], ["task=multiarith"]], initial_job_idx=0) == ["not run"] * 2
    return submitted["script"], submitted["parameters"]


def test_the_gpu_preset_asks_for_one_gpu_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script, parameters = sbatch_of(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu",
                                    "hydra.launcher.timeout_min=30", "hydra.launcher.setup=[module load cuda]"],
                                   tmp_path, monkeypatch)
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--nodes=1", "--cpus-per-task=8", "--mem=64GB",
                 "--time=30", "--partition=gpu", "--job-name=bench"):
        assert f"#SBATCH {line}\n" in script, line
    assert "module load cuda\n" in script and parameters["array_parallelism"] == 16


def test_the_cpu_preset_asks_for_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script, _ = sbatch_of(["hydra/launcher=slurm_cpu"], tmp_path, monkeypatch)
    assert "gpu" not in script.replace("--signal", "") and "#SBATCH --cpus-per-task=8\n" in script
    assert "#SBATCH --partition" not in script  # null: the cluster's default partition


@pytest.mark.parametrize("preset", ["slurm_gpu", "slurm_cpu", "local"])
def test_every_preset_switches_the_cache_to_its_sharded_layout(preset: str, monkeypatch) -> None:
    """A launcher preset cannot set a run setting (Hydra composes its config first), so it sets the jobs'
    environment, which cache.layout reads; without a preset the cache stays the sqlite file."""
    monkeypatch.delenv("BENCH_CACHE_LAYOUT", raising=False)
    config = compose_with_hydra([f"hydra/launcher={preset}"])
    assert config.hydra.job.env_set.BENCH_CACHE_LAYOUT == "sharded"
    assert "BENCH_CACHE_LAYOUT" not in compose_with_hydra([]).hydra.job.env_set
    assert compose_with_hydra([]).cache.layout == "shared"
    monkeypatch.setenv("BENCH_CACHE_LAYOUT", "sharded")  # what the job's environment then holds
    assert config.cache.layout == "sharded"


# ------------------------------------------------------------------------------------------- real sweeps


def bench(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m bench -m hydra/launcher=local ...` with results, cache and Hydra folders under tmp_path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("BENCH_CACHE_LAYOUT", None)
    result = subprocess.run([sys.executable, "-m", "bench", "-m", "hydra/launcher=local",
                             f"results_dir={tmp_path / 'results'}", f"cache.path={tmp_path / 'cache.sqlite'}",
                             *FAST, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"bench failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@needs_data
@pytest.mark.slow  # two sweeps of two jobs, each job a fresh process importing torch: ~15 s alone, ~45 s on busy CPUs
def test_a_sweep_through_submitit_runs_each_job_in_a_process_of_its_own(tmp_path: Path) -> None:
    """The jobs are pickled and composed in other processes: each must still get its own run folder, its Hydra
    output must land in the sweep's folder, the cache must be the sharded one, and the report must list both."""
    bench(tmp_path, "experiment=slurm", "task=gsm8k,multiarith")
    experiment = tmp_path / "results" / "slurm"
    runs = {folder.name.split("-")[1]: folder for folder in experiment.glob("baseline-*")}
    assert sorted(runs) == ["gsm8k", "multiarith"]
    for folder in runs.values():
        assert (folder / "metrics.json").exists()
        assert "layout: sharded" in (folder / "config.yaml").read_text()
    (sweep,) = (experiment / "_hydra").iterdir()  # the jobs' .hydra/ and logs, in the folder the sweep named
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "1", "multirun.yaml"]
    assert (sweep / "0" / ".hydra" / "config.yaml").exists() and (sweep / ".submitit").is_dir()
    shards = list((tmp_path / "cache.shards").glob("*.jsonl"))
    assert len(shards) == 2 and not (tmp_path / "cache.sqlite").exists(), "one shard per job, and no sqlite"
    table = (tmp_path / "results" / "tables" / "slurm.md").read_text()
    assert "gsm8k" in table and "multiarith" in table

    bench(tmp_path, "experiment=slurm", "task=gsm8k,multiarith")  # the same sweep again: all from the shards
    for folder in runs.values():
        assert json.loads((folder / "metrics.json").read_text())["evaluation"]["cached"] == 2


@needs_data
def test_method_options_in_a_grid_over_methods_reach_the_submitit_jobs(tmp_path: Path) -> None:
    """`-m method=baseline,cd cd.<key>=...`: the cd job takes the option, the baseline job drops it, as under
    Hydra's basic launcher."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer with a number.")
    done = bench(tmp_path, "experiment=grid", "task=gsm8k", "task.limit=2", "method=baseline,cd",
                 f"cd.prompt_from={prompt}", check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    configs = {folder.name.split("-")[0]: (folder / "config.yaml").read_text()
               for folder in (tmp_path / "results" / "grid").glob("*-gsm8k-*")}
    assert sorted(configs) == ["baseline", "cd"]
    assert f"prompt_from: {prompt}" in configs["cd"] and "prompt_from" not in configs["baseline"]


# ------------------------------------------------------------------------------------------- a shared results folder


def _finished_run(results: Path, experiment: str, run: str, arm: str) -> None:
    folder = results / experiment / run
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "task": "gsm8k", "method": "baseline", "models": {"student": "tiny@x"},
        "rows": [{"arm": arm, "n": 10, "accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8}]}))


def test_the_report_is_written_where_flock_is_refused(tmp_path: Path, monkeypatch, caplog) -> None:
    """Lustre without its flock mount option answers ENOSYS: a finished job must still write its tables."""
    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    _finished_run(tmp_path, "exp", "run-a", "arm-a")
    monkeypatch.setattr(report_write.fcntl, "flock", refused)
    with caplog.at_level(logging.WARNING, logger=report_write.__name__):
        written = write_tables(tmp_path, tmp_path / "tables", "exp")
    assert tmp_path / "tables" / "exp.md" in written and "arm-a" in (tmp_path / "tables" / "exp.md").read_text()
    assert "refuses flock" in caplog.text


def test_a_run_finishing_during_a_regeneration_is_in_the_tables(tmp_path: Path, monkeypatch) -> None:
    """Jobs on two nodes, with a flock that only excludes on one node: job A reads the runs, job B's run finishes
    and B writes its tables, then A writes its older ones over them. A must look again and write again."""
    _finished_run(tmp_path, "exp", "run-a", "arm-a")
    real_write = report_write.write_experiment
    passes = []

    def write_then_another_run_finishes(name, runs, out_dir):
        written = real_write(name, runs, out_dir)
        passes.append(sorted(run.folder.name for run in runs))
        if len(passes) == 1:
            _finished_run(tmp_path, "exp", "run-b", "arm-b")
        return written

    monkeypatch.setattr(report_write, "write_experiment", write_then_another_run_finishes)
    write_tables(tmp_path, tmp_path / "tables", "exp")
    assert passes == [["run-a"], ["run-a", "run-b"]]
    assert "arm-b" in (tmp_path / "tables" / "exp.md").read_text()


def test_a_lock_held_too_long_is_gone_without(tmp_path: Path, monkeypatch, caplog) -> None:
    """A lock left by a node that died (network locks can outlive their holder) must not hang every later job."""
    _finished_run(tmp_path, "exp", "run-a", "arm-a")
    monkeypatch.setattr(report_write, "LOCK_WAIT_S", 0.3)
    with regeneration_lock(tmp_path / "tables"), caplog.at_level(logging.WARNING, logger=report_write.__name__):
        write_tables(tmp_path, tmp_path / "tables", "exp")
    assert "arm-a" in (tmp_path / "tables" / "exp.md").read_text() and "stayed locked" in caplog.text
