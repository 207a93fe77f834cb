"""Compose the app's real Hydra config in-process, as `python -m bench <overrides>` would."""

from __future__ import annotations

from pathlib import Path

import pytest

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bench.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides)


def isolated(tmp_path: Path, experiment: str) -> list[str]:
    """Overrides that keep a test run's results and generation cache inside its tmp_path."""
    return [f"results_dir={tmp_path / 'results'}", f"cache.path={tmp_path / 'cache.sqlite'}",
            f"experiment={experiment}"]


def only_run_folder(tmp_path: Path, experiment: str) -> Path:
    """The single run folder a test produced under results/<experiment>/."""
    (folder,) = (path for path in (tmp_path / "results" / experiment).iterdir() if not path.name.startswith("_"))
    return folder


def _local_data_present() -> bool:
    from bench.config import TaskConfig
    from bench.tasks.data import local_data_dirs

    roots = local_data_dirs(TaskConfig(name="gsm8k", hub_id="openai/gsm8k"))
    return any((root / "gsm8k" / "test.jsonl").exists() for root in roots)


# GSM8K/MultiArith cannot come from the (unreachable) hub here: tests that run them need the local copies.
needs_data = pytest.mark.skipif(not _local_data_present(),
                                reason="no local task data: set BENCH_DATA_DIR or place ../shared/data "
                                       "(conf/config.yaml's default)")
