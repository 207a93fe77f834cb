"""Loading task data: the public source first (Hugging Face hub via `datasets`), then a local directory.

Offline machines pay ~25 s of retries per dataset split before the hub fails (REFERENCE.md), so in `auto` mode a
probe of a few seconds asks first whether the hub answers at all, once per process; HF_HUB_OFFLINE=1 or
`task.source=local` skips the hub entirely. Local files are read by small strict readers that name the file
and line of any malformed record instead of failing somewhere downstream.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.config import TaskConfig

logger = logging.getLogger(__name__)

SOURCES = ("auto", "hub", "local")


class DataFormatError(ValueError):
    """A local data file has a malformed record; the message names the file and line (or item)."""


class DataUnavailableError(RuntimeError):
    """Neither the hub nor any local directory could provide the data."""


def local_data_dirs(config: TaskConfig) -> list[Path]:
    """The local data root: task.local_dir, else $BENCH_DATA_DIR (which a `bench` run defaults to ../shared/data
    next to the checkout: conf/config.yaml, hydra.job.env_set); none when neither is set."""
    if config.local_dir:
        return [Path(config.local_dir)]
    if os.environ.get("BENCH_DATA_DIR"):
        return [Path(os.environ["BENCH_DATA_DIR"])]
    return []


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    records = []
    with _open_text(path) as stream:
        for line_no, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{line_no}: not valid JSON ({error.msg})") from None
            _check_fields(record, required, f"{path}:{line_no}")
            records.append(record)
    return records


def read_json_list(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(items, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    for index, item in enumerate(items):
        _check_fields(item, required, f"{path}: item {index}")
    return items


def _check_fields(record: Any, required: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in required if name not in record]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing}")


HUB_PROBE_TIMEOUT_S = 3.0


@cache
def hub_reachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within `timeout_s` (name lookup included, which a socket timeout
    does not bound, hence the thread). Memoised per process: a run loads several splits, and an offline machine
    should pay this once, not `datasets`' ~25 s of retries per split."""
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or endpoint, parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    probe = threading.Thread(target=connect, daemon=True, name="hub-probe")
    probe.start()
    probe.join(timeout_s)
    return bool(outcome and outcome[0])


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_allowed(config: TaskConfig) -> bool:
    if config.source not in SOURCES:
        raise ValueError(f"task.source must be one of {SOURCES}, got {config.source!r}")
    if config.source == "local" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if config.source == "auto" and not hub_reachable(_hub_endpoint()):
        logger.info("the hub (%s) does not answer; reading local data (HF_HUB_OFFLINE=1 skips this probe)",
                    _hub_endpoint())
        return False
    return True


def load_records(config: TaskConfig, hub_split: str, local_reader: Callable[[Path], list[dict[str, Any]] | None],
                 extra_local: Sequence[Path] = ()) -> tuple[list[dict[str, Any]], str]:
    """(records, source description). `local_reader(root)` returns None when its file is not under `root`."""
    hub_error = None
    if _hub_allowed(config):
        try:
            from datasets import load_dataset

            dataset = load_dataset(config.hub_id, config.hub_config, split=hub_split)
            return [dict(row) for row in dataset], f"hub:{config.hub_id}:{hub_split}"
        except Exception as error:  # datasets raises many types for "unreachable"; all mean "try local"
            if config.source == "hub":
                raise DataUnavailableError(f"could not load {config.hub_id} from the hub: {error}") from error
            hub_error = f"{type(error).__name__}: {str(error)[:200]}"
            logger.warning("hub dataset %s unavailable (%s); falling back to local data", config.hub_id, hub_error)
    roots = [*local_data_dirs(config), *extra_local]
    for root in roots:
        records = local_reader(root)
        if records is not None:
            return records, f"local:{root}"
    tried = ", ".join(str(root) for root in roots) or "none (task.local_dir and BENCH_DATA_DIR unset)"
    hub = f"hub {config.hub_id}: {hub_error or 'skipped (offline, unreachable, or task.source=local)'}"
    raise DataUnavailableError(f"no data for task {config.name!r}. Tried {hub}; local directories: {tried}. "
                               "Set BENCH_DATA_DIR (or task.local_dir) to a folder holding the task's files "
                               "(see README, Data).")
