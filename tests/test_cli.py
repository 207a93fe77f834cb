"""The command line: the `bench` console script and shell completion, method options by method name (also in grids
over methods), choice fields, unknown keys, and that none of it changes a run's identity or config.yaml.

New bench.cli names are imported inside the tests, so this file also runs against the code before them and shows
which behaviour each test pins down.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
from compose import CONF, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from bench.__main__ import config_identity, expand_method_shorthand
from bench.config import register_configs

REPO = Path(__file__).resolve().parents[1]
FAST = ["student=tiny", "teacher=tiny", "task.limit=4", "task.max_new_tokens=8", "logger=none"]


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
        command: tuple[str, ...] = (sys.executable, "-m", "bench")) -> subprocess.CompletedProcess:
    """One CLI invocation, offline, from `cwd` (nothing it writes lands in the repository)."""
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})})


def console_script(tmp_path: Path) -> Path:
    """The `bench` executable pip generates from pyproject's [project.scripts] (the shared virtual environment is not
    reinstalled for a test): `sys.exit(<function>())` after importing the entry point it names."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["bench"]
    module, function = target.split(":")
    script = tmp_path / "bin" / "bench"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def compose_job(args: list[str], grid: bool = False) -> DictConfig:
    """One job's config as the CLI composes it: shorthands expanded, method options merged at composition.
    `grid`: `args` are one job of a grid over methods, as the sweeper hands them over (already expanded)."""
    from bench.cli import method_options_at_composition

    with method_options_at_composition(grid=grid):
        return compose_config(args if grid else expand_method_shorthand(args))


# Fields added to the schema since the anchors were taken. Each one changes config.yaml (but not the identity, which
# leaves them out): the digest drops them, so the rest of config.yaml is still pinned byte for byte.
ADDED_SINCE_ANCHOR = ("cache.layout", "student.generation_engine", "teacher.generation_engine", "student.server",
                      "teacher.server", "student.device_map", "teacher.device_map")


def yaml_digest(config: DictConfig) -> str:
    tree = OmegaConf.to_container(config, resolve=True)
    for path in ADDED_SINCE_ANCHOR:
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(tree)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ run identity: the regression anchor
# (config_identity, sha256 of config.yaml) of representative configs, computed on the code before the command-line
# work (commit b63000e): results folders are named by the identity, so these must not move, or every earlier run
# stops resuming. A deliberate change of the config schema (a new field) changes them, and then this table.
# The defaults then were task=gsm8k and a SmolLM2 batch of 16 (now multiarith and 64, for the default job's sake):
# spelled out, those commands must still land in their old folders. Fields added since are left out of the digest
# (ADDED_SINCE_ANCHOR above) as they are out of the identity (NOT_IDENTITY_PATHS).
OLD_DEFAULTS = ("task=gsm8k", "student.batch_size=16", "teacher.batch_size=16")
ANCHORS = {
    OLD_DEFAULTS: ("ea08a9ac", "b7be5f540ed9cc60"),
    ("+experiments=compare_smollm2",): ("952660d5", "7dc2667c7923aae2"),
    (*OLD_DEFAULTS, "method=rpkd", "method.train_limit=8"): ("705fe78d", "0cc5af7a26727d76"),
    (*OLD_DEFAULTS, "method=cd"): ("a7f81724", "f329c71b772bf6a3"),
    (*OLD_DEFAULTS, "method=onpolicy"): ("8e172a75", "f08509e2c67b9169"),
    (*OLD_DEFAULTS, "method=compare"): ("22a71a27", "f1a1c57657c5c826"),
    ("+experiments=rpkd_gsm8k_paper",): ("215e094b", "9fc9eb06862ae464"),
    ("+experiments=rpkd_smollm2", "logger=wandb"): ("0d574c7c", "5a7b86a7459a7d6c"),  # logger.mode: online
    ("task=gsm8k", "student=tiny", "teacher=tiny", "scoring.sandbox=none", "scoring.math_mode=strict"):
        ("3b01f753", "1f71e0af4b356db2"),
}


@pytest.mark.parametrize("overrides", list(ANCHORS), ids=lambda o: " ".join(o))
def test_identity_and_config_yaml_are_unchanged(overrides: tuple[str, ...]) -> None:
    """Choice fields are enums now, and method options are merged after composition: neither may move a hash."""
    config = compose_config(list(overrides))
    assert (config_identity(config), yaml_digest(config)) == ANCHORS[overrides]


def test_shorthand_composes_what_method_overrides_compose() -> None:
    """`rpkd.train_limit=8` is `method=rpkd method.train_limit=8`: same folder, same config.yaml."""
    config = compose_job([*OLD_DEFAULTS, "rpkd.train_limit=8"])
    assert (config_identity(config), yaml_digest(config)) == ANCHORS[(*OLD_DEFAULTS, "method=rpkd",
                                                                      "method.train_limit=8")]
    assert "rpkd" not in config
    nested = compose_job(["method=compare", "rpkd.train.lr=0.1", "cd.max_rules=1", "onpolicy.beta=0.5"])
    spelled = compose_config(["method=compare", "method.rpkd.train.lr=0.1", "method.cd.max_rules=1",
                              "method.onpolicy.beta=0.5"])
    assert OmegaConf.to_yaml(nested) == OmegaConf.to_yaml(spelled)


# ------------------------------------------------------------------ method options wherever flags stand
@pytest.mark.parametrize("args", [["-m", "cd.max_rules=1,2"], ["--cfg", "job", "cd.max_rules=1"],
                                  ["--info", "config", "cd.max_rules=1"]])
def test_shorthand_keeps_the_overrides_together(args: list[str]) -> None:
    """argparse takes the overrides as one run: a `method=cd` put in front of `-m` or `--cfg job` split it, and
    `python -m bench -m cd.max_rules=1,2` failed with "unrecognized arguments"."""
    from hydra._internal.utils import get_args_parser

    parsed = get_args_parser().parse_args(expand_method_shorthand(args))
    assert parsed.overrides[0] == "method=cd" and parsed.overrides[1].startswith("++cd.max_rules=")


def test_cfg_job_shows_the_merged_method(tmp_path: Path) -> None:
    done = cli(tmp_path, "--cfg", "job", "cd.max_rules=1")
    assert done.returncode == 0, done.stderr[-3000:]
    shown = OmegaConf.create(done.stdout)
    assert (shown.method.name, shown.method.max_rules) == ("cd", 1) and "cd" not in shown


def test_multirun_of_a_shorthand_sweeps_it(tmp_path: Path) -> None:
    """Each job fails at once (task.limit=0) after Hydra wrote the config it composed for it."""
    done = cli(tmp_path, "-m", "cd.max_rules=1,2", "task.limit=0", f"results_dir={tmp_path / 'results'}")
    assert "task.limit=0 is impossible" in done.stderr, done.stderr[-3000:]
    jobs = sorted((tmp_path / "results").glob("default/_hydra/multirun-*/*/.hydra/config.yaml"))
    assert [OmegaConf.load(job).method.max_rules for job in jobs] == [1, 2]


def test_grid_over_methods_gives_method_options_to_that_method_only(tmp_path: Path) -> None:
    """`-m method=baseline,rpkd rpkd.train_limit=8` used to fail: the shorthand forced method=rpkd's keys into the
    baseline job's schema ("Key 'train_limit' not in 'BaselineConfig'")."""
    done = cli(tmp_path, "-m", "method=baseline,rpkd", "rpkd.train_limit=8", "task.limit=0",
               f"results_dir={tmp_path / 'results'}")
    assert "task.limit=0 is impossible" in done.stderr, done.stderr[-3000:]
    jobs = [OmegaConf.load(job) for job in sorted((tmp_path / "results").glob("default/_hydra/multirun-*/*/"
                                                                              ".hydra/config.yaml"))]
    assert [job.method.name for job in jobs] == ["baseline", "rpkd"]
    assert "rpkd" not in jobs[0] and "train_limit" not in jobs[0].method
    assert jobs[1].method.train_limit == 8 and "rpkd" not in jobs[1]


def test_grid_jobs_compose_as_if_run_alone() -> None:
    baseline = compose_job(["method=baseline", "++rpkd.train_limit=8"], grid=True)  # job 0 of the grid above
    assert config_identity(baseline) == config_identity(compose_config([]))
    compare = compose_job(["method=compare", "++rpkd.train_limit=8"], grid=True)
    assert compare.method.rpkd.train_limit == 8


def test_misspelt_method_option_fails_in_every_job_naming_the_key() -> None:
    """Even the baseline job of a grid checks the rpkd options, so a typo fails before the first job's work."""
    for args in (["++cd.max_rulez=3"], ["method=baseline", "++rpkd.train_limt=8"],
                 ["method=rpkd", "++rpkd.signal=tokn"]):
        with pytest.raises(ConfigCompositionException, match=r"train_limt|max_rulez|tokn"):
            compose_job(args, grid=True)


def test_options_for_a_method_the_run_does_not_run_fail() -> None:
    """Outside a grid over methods, options for a method that does not run are a mistake (the preset chose it)."""
    with pytest.raises(ConfigCompositionException, match=r"rpkd\.\* options \(top_k\).*method is cd"):
        compose_job(["+experiments=cd_smollm2", "rpkd.top_k=5"])
    assert compose_job(["+experiments=rpkd_smollm2", "rpkd.top_k=5"]).method.top_k == 5  # the preset's method
    compose_job(["+experiments=cd_smollm2", "++rpkd.top_k=5"], grid=True)  # a job of `+experiments=cd_..,rpkd_..`


@pytest.mark.parametrize("args, grid", [
    (["-m", "method=baseline,rpkd", "rpkd.top_k=5"], True), (["-m", "+experiments=cd_smollm2,rpkd_smollm2"], True),
    (["-m", "method=choice(cd,rpkd)"], True), (["-m", "method=rpkd", "task=gsm8k,multiarith"], False),
    (["-m", "+experiments=cd_smollm2", "task=gsm8k,multiarith"], False), (["method.arms=[a,b]"], False)])
def test_only_a_sweep_of_method_or_preset_is_a_grid_over_methods(args: list[str], grid: bool) -> None:
    from bench.cli import sweeps_methods

    assert sweeps_methods(args) is grid


@pytest.mark.parametrize("args", [["method=rpkd", "cd.max_rules=3"], ["cd.max_rules=3", "rpkd.top_k=5"],
                                  ["-m", "method=baseline,rpkd", "cd.max_rules=3"], ["~cd.max_rules"]])
def test_contradictory_shorthand_fails_before_any_work(args: list[str]) -> None:
    with pytest.raises(SystemExit, match="method|delete"):
        expand_method_shorthand(args)


# ------------------------------------------------------------------ choice fields
CHOICES = {
    "logger.mode": ["online", "offline", "disabled"],
    "scoring.sandbox": ["nsjail", "none"],
    "scoring.math_mode": ["strict", "flexible"],
    "teacher.dtype": ["auto", "float32", "bfloat16", "float16"],
    "method.selection": ["greedy", "independent"],
    "method.merge": ["list", "teacher"],
    "method.acceptance": ["mcnemar", "gain", "min_items"],
    "method.signal": ["published", "reference", "primed_response", "sequence"],
    "method.kl_direction": ["reverse", "forward"],
    "method.topk_tail": ["renormalize", "rest_bucket"],
    "method.priming_wording": ["published", "paraphrase"],
    "method.train.optimizer": ["sgd", "adamw"],
    "method.train.scheduler": ["none", "cosine"],
}
# student.backend names a registered backend (bench/models/backends/), refused with the list by check_run_config
# before any model loads (tests/test_registry.py), so a new backend needs no edit to the config schema.
METHOD_OF = {"selection": "cd", "merge": "cd", "acceptance": "cd"}


def _method_for(key: str) -> list[str]:
    if not key.startswith("method."):
        return []
    return [f"method={METHOD_OF.get(key.split('.')[1], 'rpkd')}"]


@pytest.mark.parametrize("key", list(CHOICES))
def test_a_value_outside_the_choices_fails_listing_them(key: str) -> None:
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config([*_method_for(key), f"{key}=nope"])
    message = f"{raised.value} {raised.value.__cause__}"
    assert all(choice in message for choice in CHOICES[key]), message


@pytest.mark.parametrize("key", list(CHOICES))
def test_every_choice_composes_and_reads_as_its_string(key: str) -> None:
    for choice in CHOICES[key]:
        value = OmegaConf.select(compose_config([*_method_for(key), f"{key}={choice}"]), key)
        assert value == choice and f"{value}" == choice and isinstance(value, str)


def test_token_is_still_the_reference_signal() -> None:
    """`method.signal=token`, the earlier name, composes to reference (and so runs and is recorded as it)."""
    config = compose_config(["method=rpkd", "method.signal=token"])
    assert config.method.signal == "reference" and "signal: reference" in OmegaConf.to_yaml(config)


def test_misspelt_logger_mode_fails_before_any_work(tmp_path: Path) -> None:
    done = cli(tmp_path, *FAST, "logger=wandb", "logger.mode=offlin", f"results_dir={tmp_path / 'results'}")
    assert done.returncode != 0
    assert "offlin" in done.stderr and "[online, offline, disabled]" in done.stderr
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize("override, named", [("+unknown.key=1", "unknown.key"), ("+task.limt=5", "task.limt"),
                                             ("++method.top_kk=5", "method.top_kk")])
def test_unknown_keys_added_with_plus_fail_before_any_work(tmp_path: Path, override: str, named: str) -> None:
    done = cli(tmp_path, *FAST, "method=rpkd", override, f"results_dir={tmp_path / 'results'}")
    assert done.returncode != 0 and f"unknown config key {named}" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_keys_of_maps_may_still_be_added() -> None:
    config = compose_job(["method=rpkd", "+method.lora_dropout_by_arm.teacher=0.3"])
    assert config.method.lora_dropout_by_arm == {"base": 0.2, "teacher": 0.3}


def test_execute_refuses_unknown_keys_of_a_config_composed_elsewhere(tmp_path: Path) -> None:
    from bench.__main__ import execute

    config = compose_config([*FAST, "+task.limt=5", f"results_dir={tmp_path / 'results'}"])
    with pytest.raises(ValueError, match=r"unknown config key task\.limt"):
        execute(config, progress=False)
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ console script, completion, job name
def test_console_script_runs_from_anywhere(tmp_path: Path) -> None:
    """The console script imports bench.__main__ instead of running it: with the old relative config_path Hydra
    then looked for a Python package `conf` and found no config."""
    done = cli(tmp_path, "--cfg", "job", "rpkd.top_k=3", command=(str(console_script(tmp_path)),))
    assert done.returncode == 0, done.stderr[-3000:]
    assert OmegaConf.create(done.stdout).method.top_k == 3


def test_shell_completion_installs_for_bench_and_lists_real_options(tmp_path: Path) -> None:
    bench = (str(console_script(tmp_path)),)
    install = cli(tmp_path, "-sc", "install=bash", command=bench)
    assert install.returncode == 0, install.stderr[-2000:]
    assert install.stdout.rstrip().endswith("-F hydra_bash_completion bench")

    def complete(line: str) -> list[str]:
        done = cli(tmp_path, "-sc", "query=bash", command=bench, env={"COMP_LINE": line})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert complete("bench method=") == [f"method={m}" for m in ("baseline", "cd", "compare", "onpolicy", "rpkd")]
    assert complete("bench student=smol") == ["student=smollm2"]
    assert complete("bench method=rpkd method.top") == ["method.top_k=", "method.topk_tail="]


def test_hydra_job_is_named_bench(tmp_path: Path) -> None:
    done = cli(tmp_path, "--cfg", "hydra", "--package", "hydra.job.name")
    assert done.returncode == 0 and done.stdout.strip() == "bench", done.stderr[-2000:]


# ------------------------------------------------------------------ Hydra output folders
def test_runs_started_in_the_same_second_get_their_own_hydra_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra.run.dir was named by the second alone, so two runs started together wrote into one folder."""
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    register_configs()
    instant = datetime(2025, 1, 2, 3, 4, 5, 678901)
    try:
        folders = {}
        for pid in (4242, 4243):  # each run composes its own config (the pid is cached per config: test_slurm.py)
            monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
            with initialize_config_dir(config_dir=str(CONF), version_base=None):
                config = compose(config_name="config", return_hydra_config=True)
            OmegaConf.register_new_resolver("now", lambda pattern: instant.strftime(pattern), replace=True)
            folders[pid] = (OmegaConf.select(config, "hydra.run.dir"), OmegaConf.select(config, "hydra.sweep.dir"))
    finally:
        setup_globals()  # Hydra's own `now`
    (run_a, sweep_a), (run_b, sweep_b) = folders.values()
    assert run_a != run_b and sweep_a != sweep_b
    assert run_a.startswith("results/default/_hydra/2025-01-02_03-04-05")


# ------------------------------------------------------------------ where a run finds task data
def test_a_run_gets_its_data_folder_from_hydra_not_from_the_job_config(tmp_path: Path) -> None:
    """BENCH_DATA_DIR defaults to ../shared/data next to this checkout, set for each job by conf/config.yaml's
    hydra.job.env_set: outside the job config (so no run's identity moves) and whatever the working directory."""
    from bench.config import job_environment

    default = os.path.normpath(REPO.parent / "shared" / "data")
    env = {key: value for key, value in os.environ.items() if key != "BENCH_DATA_DIR"}
    shown = subprocess.run([sys.executable, "-m", "bench", "--cfg", "hydra", "-p", "hydra.job.env_set", "--resolve"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env={**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"BENCH_DATA_DIR: {default}" in shown.stdout
    assert "BENCH_DATA_DIR" not in OmegaConf.to_yaml(compose_config([]))
    assert job_environment()["BENCH_DATA_DIR"] == os.environ.get("BENCH_DATA_DIR", default)
