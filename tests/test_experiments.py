"""Every preset in experiments/ composes, alone and with the command its header documents."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from compose import compose_config, needs_data
from hydra.core.plugins import Plugins

from bench.__main__ import ExperimentsSearchPath

PRESETS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def documented_overrides(preset: Path) -> list[list[str]]:
    """The overrides of the `python -m bench ...` line in the preset's header, one list per multirun job."""
    match = re.search(r"^#\s+python -m bench (.+)$", preset.read_text(), flags=re.MULTILINE)
    assert match, f"{preset.name} does not open with the command that runs it"
    args = [arg for arg in shlex.split(match.group(1)) if arg != "-m"]
    jobs: list[list[str]] = [[]]
    for arg in args:  # expand `key=a,b` sweeps (not list values) into one job per value
        key, _, value = arg.partition("=")
        values = value.split(",") if "," in value and not value.startswith("[") else [value]
        jobs = [job + [f"{key}={v}"] for job in jobs for v in values]
    return jobs


@pytest.fixture(autouse=True)
def experiments_on_search_path():
    Plugins.instance().register(ExperimentsSearchPath)


def test_there_are_presets() -> None:
    assert {"baseline_all_tasks", "cd_smollm2", "rpkd_smollm2"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_composes_with_its_documented_command(preset: Path) -> None:
    for overrides in documented_overrides(preset):
        assert f"+experiments={preset.stem}" in overrides
        config = compose_config(overrides)
        assert config.experiment == preset.stem


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_alone_selects_its_method(preset: Path) -> None:
    config = compose_config([f"+experiments={preset.stem}"])
    assert config.method.name in preset.stem or preset.stem.startswith("baseline")


def test_command_line_groups_win_over_the_preset() -> None:
    config = compose_config(["+experiments=cd_smollm2", "task=multiarith", "student=tiny"])
    assert (config.method.name, config.task.name, config.student.name) == ("cd", "multiarith", "tiny")


def test_cd_humaneval_evaluates_the_whole_test_split() -> None:
    """The paper's HumanEval table is over every test item, not conf/config.yaml's 50-item quick slice."""
    assert compose_config(["+experiments=cd_humaneval"]).task.limit is None


@needs_data
def test_cd_humaneval_test_items_are_the_full_test_split() -> None:
    from omegaconf import OmegaConf

    from bench.tasks import make_task

    config = compose_config(["+experiments=cd_humaneval"])
    task = make_task(OmegaConf.to_object(config.task), checker=None)
    assert len(task.examples(config.task.eval_split, limit=config.task.limit)) == len(task.splits.test) == 100
