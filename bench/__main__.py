"""`bench ...` (or `python -m bench ...`): compose the config with Hydra, build the run context, dispatch to the method.

Runs, single or `-m` multirun, each get their own results folder and W&B run; nothing mutable is shared
between jobs. The folder name is derived from the method, task, models and a hash of the config, so re-running
the same command resumes (finished phases and cached generations are reused) while any change starts afresh. A run
holds its folder while it runs (an identical run started meanwhile fails at once), and a run that fails before
producing anything leaves no folder behind.

Each job returns its headline metric (`Method.headline`: one test accuracy), so a Hydra sweeper (Optuna, Ax, ...)
can optimise over the harness.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bench.cli import (check_preset_spelling, expand_method_shorthand, method_options_at_composition,
                       prepare_job_config, sweeps_methods)
from bench.config import CONF_DIR, REPO_ROOT, register_configs
from bench.identity import NOT_IDENTITY as _NOT_IDENTITY
from bench.identity import config_identity

if TYPE_CHECKING:
    from bench.methods import Method
    from bench.registry import Registry
    from bench.result_records import RunFacts
    from bench.tracking import RunStore, Tracker
    from bench.training.distributed import World

logger = logging.getLogger("bench")

def run_name(config: DictConfig, roles: tuple[str, ...]) -> str:
    if config.run_name:
        return str(config.run_name)
    models = "-".join(f"{role[0]}_{config[role].name}" for role in ("student", "teacher") if role in roles)
    return f"{config.method.name}-{config.task.name}-{models}-{config_identity(config)}"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "git_commit": _git_commit(), "argv": sys.argv}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the run's arms, printed at the end of every run."""
    if not rows:
        return "(no results)"
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    widths = {c: max(len(c), *(len(cell(row.get(c, ""))) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(cell(row.get(c, "")).ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(lines)


def execute(config: DictConfig, progress: bool = True, strict: bool = True) -> dict[str, Any]:
    """Run one job from a composed config; returns the metrics written to metrics.json, `headline` among them.

    The config is prepared first (method options merged, unknown keys refused: bench.cli), as the CLI does at
    composition, so a config composed any other way is held to the same rules."""
    from bench.methods import make_method
    from bench.tracking import claim_run_folder

    prepare_job_config(config, strict=strict)
    check_run_config(config, roles=())  # before the method is built: a refused value answers in a second
    method = make_method(config.method)
    check_model_configs(config, method.roles)  # only the models it uses: another may be left incomplete
    world = _join_launch(method)
    if not world.is_main:  # under torchrun / accelerate launch: rank 0 is the run, the others help it train
        from bench.training.lora_trainer import serve_train_jobs

        return serve_train_jobs()
    name = run_name(config, method.roles)
    with claim_run_folder(Path(config.results_dir) / config.experiment / name) as store:
        metrics = _execute_in(store, config, method, name, progress)
    world.finish_run(metrics)
    return metrics


def _join_launch(method: Method) -> World:
    """This process's place in a multi-process launch (rank 0 of 1 without one), its process group joined. Only a
    method that trains across processes may be launched so: any other would leave ranks idle or repeat its work."""
    from bench.training.distributed import World, connect_world

    world = World.from_environment()
    if world.distributed and not method.trains_across_processes:
        raise ValueError(f"method={method.name} does not train across processes (only rpkd does): run it as one "
                         f"process (python -m bench ...), not under a launcher with {world.size} processes")
    return connect_world()


def _execute_in(store: RunStore, config: DictConfig, method: Method, name: str, progress: bool) -> dict[str, Any]:
    """The run itself, in its claimed folder."""
    from bench.context import RunContext
    from bench.report import write_tables
    from bench.result_records import result_records
    from bench.run_artifacts import report_artifact, run_artifacts
    from bench.tasks import make_task

    if not config.resume:
        store.reset()  # a fresh start is fresh: no old checkpoint, cache of the teacher or losses is reused
    else:
        check_same_config(store, config)
    store.write_text("config.yaml", OmegaConf.to_yaml(config, resolve=True))
    task_config = OmegaConf.to_object(config.task)
    task = make_task(task_config, OmegaConf.to_object(config.scoring))  # the task builds its own scorer
    store.write_json("splits.json", {"seed": config.task.seed, "source": task.splits.source, **task.splits.ids()})
    facts = run_facts(config, method.roles)
    tracker = make_tracker(config, facts, store.root, name)
    ctx = RunContext.from_config(config, method.roles, task=task, store=store, tracker=tracker, run_id=name,
                                 progress=progress)
    started = time.time()
    tables_dir = Path(config.results_dir) / "tables"
    try:
        for role in method.roles:  # build models (and check API keys) before any work is done
            ctx.model(role)
        for role in method.evaluated_roles:
            ctx.evaluation_sampling(role)
        result = method.run(ctx)
        metrics = {"run_id": name, "method": config.method.name, "task": config.task.name,
                   "models": {role: ctx.model(role).model_id for role in method.roles},
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                   "wall_s": round(time.time() - started, 2), "environment": _environment(),
                   **result.metrics, "rows": result.rows,
                   "headline": dataclasses.asdict(method.headline(result.rows))}
        store.write_json("metrics.json", metrics)
        tables = write_tables(Path(config.results_dir), tables_dir, config.experiment)
        tracker.log_results(result_records(metrics, facts))
        report = report_artifact(tables_dir, config.experiment, Path(config.results_dir))
        tracker.log_artifacts([*run_artifacts(store.root, _run_key(config, store.root)),
                               *([report] if report else [])])
    except BaseException:
        tracker.finish(failed=True)
        raise
    finally:
        ctx.stop_servers()  # managed servers (bench/models/served.py) end with the run, whatever ended it
    tracker.finish()
    models = ", ".join(f"{role}={config[role].name}" for role in method.roles)
    print(f"\n{config.method.name} on {config.task.name} ({models}) — results in {store.root}\n"
          f"{format_table(result.rows)}")
    print(f"tables of experiment {config.experiment!r}: {', '.join(str(path) for path in tables)}")
    headline = metrics["headline"]
    print(f"headline: {headline['metric']} of {headline['arm']} = {headline['value']:.3f}")
    return metrics


def check_run_config(config: DictConfig, roles: Sequence[str] = ("student", "teacher")) -> None:
    """Values no run can use, refused before any model is loaded or any teacher call is paid for: the task's, the
    method's, the cache's, and those of the models in `roles`."""
    task = config.task
    for key in ("limit", "validation_size", "test_size"):
        value = task.get(key)
        if value is not None and value < (0 if key == "validation_size" else 1):
            raise ValueError(f"task.{key}={value} is impossible; use a positive number (or null for all)")
    if task.samples < 1:
        raise ValueError(f"task.samples={task.samples} is impossible; use 1 (greedy) or more (pass@k)")
    if task.max_new_tokens < 1:
        raise ValueError(f"task.max_new_tokens={task.max_new_tokens} is impossible; use a positive number")
    from bench.methods import METHODS
    from bench.tasks import TASKS

    for key, name, registry in (("task.name", task.name, TASKS), ("method.name", config.method.name, METHODS)):
        _check_registered(key, name, registry)
    _check_bounds(config, ("method", "cache"))
    check_model_configs(config, roles)


def check_model_configs(config: DictConfig, roles: Sequence[str]) -> None:
    """The backend and bounded values of each model in `roles` (a method's roles: an unused model is not read)."""
    from bench.models.backends import BACKENDS

    for role in roles:
        _check_registered(f"{role}.backend", config[role].backend, BACKENDS)
    _check_bounds(config, roles)


def _check_registered(key: str, name: str, registry: Registry) -> None:
    if name not in registry:
        raise ValueError(f"{key}={name} names no registered {registry.kind}; available: {', '.join(registry.names())}")


def _check_bounds(config: DictConfig, sections: Sequence[str]) -> None:
    for key, value, low, high in _bounded_values(config, sections):
        if not (low <= value <= high):
            bound = f">= {low}" if high == float("inf") else f"in [{low}, {high}]"
            raise ValueError(f"{key}={value} is impossible; it must be {bound}")


# Counts and rates a run cannot use, by key suffix anywhere under method/student/teacher/cache (method options
# nest: compare holds cd/rpkd/onpolicy). A value of null means "all"/"off" and is left alone.
_BOUNDS: dict[str, tuple[float, float]] = {
    **{key: (1, float("inf")) for key in (
        "train_limit", "train.epochs", "train.batch_size", "train.grad_accum", "train.max_length", "train.save_every",
        "lora.r", "lora.alpha", "top_k", "teacher_batch_size", "teacher_token_budget", "train_sample",
        "max_mistakes", "mistakes_per_call", "rules_per_call", "calls_per_round", "max_rules", "validation_limit",
        "teacher_max_new_tokens", "max_completion_length", "budget_tokens", "batch_size", "flush_every",
        "max_concurrency")},
    **{key: (0, float("inf")) for key in ("malformed_retries", "min_gain_items", "budget_usd", "max_retries")},
    "lora.dropout": (0, 0.99), "train.lr": (1e-12, float("inf")), "temperature": (0, float("inf")),
    "alpha": (0, 1), "acceptance_p": (0, 1), "dedup_similarity": (0, 1), "beta": (0, 1),
}


def _bounded_values(config: DictConfig, sections: Sequence[str]):
    """(dotted key, value, low, high) for every bounded option set (not null) in `sections` of the config."""
    def walk(node: Any, prefix: str):
        for key, value in node.items():
            path = f"{prefix}.{key}"
            if isinstance(value, DictConfig):
                yield from walk(value, path)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                bound = next((_BOUNDS[suffix] for suffix in _BOUNDS if path.endswith(f".{suffix}")), None)
                if bound:
                    yield path, value, *bound

    for section in sections:
        yield from walk(config[section], section)


def check_same_config(store: RunStore, config: DictConfig) -> None:
    """A run folder is resumed only by the config that made it: with a fixed run_name, another config would reuse
    its adapters and phases while config.yaml claimed otherwise."""
    stored = store.path("config.yaml")
    if not stored.exists():
        return
    previous = OmegaConf.load(stored)
    if config_identity(previous) != config_identity(config):
        changed = _changed_keys(OmegaConf.to_container(previous, resolve=True),
                                OmegaConf.to_container(config, resolve=True))
        raise ValueError(f"run folder {store.root} was made by a different config (changed: "
                         f"{', '.join(changed[:8]) or 'see config.yaml'}); resume=false starts it afresh, or choose "
                         "another run_name")


def _changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [change for key in keys if f"{prefix}{key}".split(".")[0] not in _NOT_IDENTITY
                for change in _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def run_facts(config: DictConfig, roles: tuple[str, ...]) -> RunFacts:
    """What every long-format result row repeats: experiment, task, method, the models the method used, seed."""
    from bench.result_records import RunFacts

    return RunFacts(experiment=config.experiment, task=config.task.name, method=config.method.name,
                    student=config.student.name if "student" in roles else None,
                    teacher=config.teacher.name if "teacher" in roles else None, seed=config.seed)


def _run_key(config: DictConfig, run_folder: Path) -> str:
    from bench.wandb_tracker import wandb_run_id

    return wandb_run_id(run_folder, Path(config.results_dir))


def make_tracker(config: DictConfig, facts: RunFacts, run_folder: Path, name: str) -> Tracker:
    """No-op without `logger=wandb`; else the job's one W&B run, whose id comes from its results folder."""
    from bench.tracking import Tracker

    if not config.logger.wandb:
        return Tracker()
    from bench.wandb_tracker import WandbTracker, run_tags

    return WandbTracker(project=config.logger.project, entity=config.logger.entity, mode=config.logger.mode,
                        run_id=_run_key(config, run_folder), name=name, group=config.experiment,
                        job_type=config.method.name,
                        tags=run_tags({"task": facts.task, "student": facts.student, "teacher": facts.teacher},
                                      list(config.logger.tags)),
                        config=OmegaConf.to_container(config, resolve=True, enum_to_str=True),
                        directory=run_folder)


# An absolute path: relative to this module, Hydra would look for a Python package `conf` when the module is
# imported (the `bench` console script) rather than run as `python -m bench`, and find no config at all.
@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(config: DictConfig) -> float:
    """One job. Returns its headline metric (metrics.json `headline.value`), which Hydra hands to the sweeper: so
    `hydra/sweeper=optuna` (or Ax, Nevergrad) can optimise e.g. method.temperature over real runs."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
    if multirun:
        logger.info("multirun job %s", HydraConfig.get().job.num)
    return float(execute(config, strict=not multirun)["headline"]["value"])


def entry() -> None:
    """The `bench` console script and `python -m bench`: the command line's own checks and shorthands (bench.cli),
    then Hydra."""
    check_preset_spelling(sys.argv[1:])
    sys.argv[1:] = expand_method_shorthand(sys.argv[1:])
    register_configs()
    with method_options_at_composition(grid=sweeps_methods(sys.argv[1:])):
        main()


if __name__ == "__main__":
    entry()
