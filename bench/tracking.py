"""Where a run's results go: a folder of atomically written files, and optionally a W&B run.

Files are written to a temp name and renamed, so a crash never leaves a half-written metrics.json or
samples.jsonl behind, and a resumed run can trust every file it finds. Each phase of a method records a
`phases/<name>.done` marker only after its artifacts are complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.result_records import ResultRecord
    from bench.run_artifacts import ArtifactSpec

logger = logging.getLogger(__name__)


def process_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file and rename it over `path`, with the mode a plain open() would give (0666 minus the
    umask: colleagues on a shared cluster can read results; mkstemp alone would make every file 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~process_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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

    def reset(self) -> None:
        """Empty the folder (phases, artifacts, checkpoints, samples, metrics) for a fresh start."""
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


class Tracker:
    """No-op experiment tracker; `bench.wandb_tracker.WandbTracker` overrides it. Methods log through this, never
    through wandb, so a run without a tracker runs the very same code."""

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Numbers at this point of the run; a mapping with a `step` field under one key is a curve."""

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        """One evaluation's per-sample records."""

    def log_results(self, records: Sequence[ResultRecord]) -> None:
        """The run's final long-format results, one record per task × arm × seed."""

    def log_artifacts(self, specs: Sequence[ArtifactSpec]) -> None:
        """Files that produced the numbers."""

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass
