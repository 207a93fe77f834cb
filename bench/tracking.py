"""Where a run's results go: a folder of atomically written files, and optionally a W&B run.

Files are written to a temp name and renamed, so a crash never leaves a half-written metrics.json or
samples.jsonl behind, and a resumed run can trust every file it finds. Each phase of a method records a
`phases/<name>.done` marker only after its artifacts are complete.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as stream:
        for line_no, line in enumerate(stream, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({error.msg})") from None
    return records


class RunStore:
    """One run's folder: results/<experiment>/<run_name>/ with config, samples, metrics and artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write_text(self, relative: str, text: str) -> Path:
        atomic_write_text(self.path(relative), text)
        return self.path(relative)

    def write_json(self, relative: str, data: Any) -> Path:
        atomic_write_json(self.path(relative), data)
        return self.path(relative)

    def write_jsonl(self, relative: str, records: Iterable[Mapping[str, Any]]) -> Path:
        atomic_write_jsonl(self.path(relative), records)
        return self.path(relative)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.path(relative).read_text(encoding="utf-8"))

    def read_jsonl(self, relative: str) -> list[dict]:
        return read_jsonl(self.path(relative))

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    def phase_done(self, phase: str) -> bool:
        return self.exists(f"phases/{phase}.done")

    def mark_phase_done(self, phase: str, summary: Mapping[str, Any] | None = None) -> None:
        self.write_json(f"phases/{phase}.done", dict(summary or {}))

    def clear_phases(self) -> None:
        for marker in self.path("phases").glob("*.done"):
            marker.unlink()


class Tracker:
    """No-op experiment tracker; `WandbTracker` overrides it. Methods log through this, never through wandb."""

    def log(self, metrics: Mapping[str, Any]) -> None:
        pass

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), item, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


class WandbTracker(Tracker):
    """One W&B run per Hydra job (multirun jobs must not merge), grouped by experiment."""

    _SAMPLE_COLUMNS = ("task_id", "split", "status", "passed", "completion", "detail", "completion_tokens")

    def __init__(self, project: str, entity: str | None, mode: str, name: str, group: str, tags: list[str],
                 config: Mapping[str, Any], directory: Path) -> None:
        import wandb

        self._wandb = wandb
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, entity=entity, mode=mode, name=name, group=group, tags=tags,
                               config=dict(config), dir=str(directory), reinit="finish_previous")

    def log(self, metrics: Mapping[str, Any]) -> None:
        flat: dict[str, Any] = {}
        _flatten("", metrics, flat)
        self._run.log({k: v for k, v in flat.items() if isinstance(v, (int, float))})

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        table = self._wandb.Table(columns=list(self._SAMPLE_COLUMNS))
        for record in records:
            table.add_data(*(record.get(column) for column in self._SAMPLE_COLUMNS))
        self._run.log({f"samples/{name}": table})

    def summary(self, values: Mapping[str, Any]) -> None:
        flat: dict[str, Any] = {}
        _flatten("", values, flat)
        self._run.summary.update(flat)

    def finish(self) -> None:
        self._run.finish()
