"""The W&B side of a run: one resumable W&B run per job, in a shape a W&B report can use as it is.

- The run id is a hash of the run folder (results/<experiment>/<run>), opened with `resume="allow"`: re-running
  a command resumes its W&B run, as it resumes its results folder, instead of adding a duplicate.
- group = experiment, job_type = method, tags = task, models and arms: what a report filters runs by.
- Results go in as stable long-format keys (`eval/<arm>/<field>`, `cost/<arm>/<field>`) and a `results` table
  with one row per task × arm × seed (`bench.result_records`), so every method's runs pivot together.
- A mapping logged under one key with a `step` field is a curve (RP-KD logs `train/<arm>` rows): each of its
  fields gets that curve's own x axis, `<key>/step`, so arms trained one after another do not share W&B's
  global step. Each key is defined by its exact name when first seen: wandb-core matches a glob
  `train/<arm>/*` as a bare prefix, so `train/rpkd/*` would also claim `train/rpkd/reference/teacher/loss`.
- Files that produced the numbers are artifacts (`bench.run_artifacts`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.result_records import ResultRecord
from bench.run_artifacts import ArtifactSpec
from bench.tracking import Tracker

SAMPLE_COLUMNS = ("task_id", "split", "model_id", "prompt", "reference", "extracted", "status", "passed", "score",
                  "completion", "detail", "completion_tokens")
MAX_TAG_LENGTH = 64  # W&B refuses longer tags


def wandb_run_id(run_folder: Path, results_dir: Path) -> str:
    """A W&B run id from the run folder's path relative to results_dir: the same command, the same W&B run."""
    relative = Path(run_folder).relative_to(Path(results_dir)).as_posix()
    return hashlib.sha256(relative.encode()).hexdigest()[:16]


def unique_tags(tags: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(tag[:MAX_TAG_LENGTH] for tag in tags))


def run_tags(names: Mapping[str, str | None], extra: Sequence[str] = ()) -> list[str]:
    """`role:name` tags (task:gsm8k, student:tiny, arm:cd) after the user's own: a bare `smollm2` would not
    say whether it was the student or the teacher."""
    return unique_tags([*extra, *(f"{role}:{name}" for role, name in names.items() if name)])


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            flatten(f"{prefix}/{key}" if prefix else str(key), item, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def render_messages(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt as the model saw it, one `[role]` block per message."""
    return "\n\n".join(f"[{message.get('role', '?')}]\n{message.get('content', '')}" for message in messages)


def render_extracted(extracted: Mapping[str, Any] | None) -> str | None:
    """What the scorer read: the answer per extraction mode (math), or the program it ran (code)."""
    if not extracted:
        return None
    if len(extracted) == 1:
        value = next(iter(extracted.values()))
        return None if value is None else str(value)
    return "; ".join(f"{mode}: {value}" for mode, value in extracted.items())


def sample_row(record: Mapping[str, Any]) -> list[Any]:
    rendered = {"prompt": render_messages(record.get("messages") or []),
                "extracted": render_extracted(record.get("extracted"))}
    return [rendered[column] if column in rendered else record.get(column) for column in SAMPLE_COLUMNS]


class WandbTracker(Tracker):
    """One W&B run per Hydra job (multirun jobs must not merge), resumed by id when the job is re-run."""

    def __init__(self, *, project: str, entity: str | None, mode: str, run_id: str, name: str, group: str,
                 job_type: str, tags: list[str], config: Mapping[str, Any], directory: Path) -> None:
        import wandb

        self._wandb = wandb
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, entity=entity, mode=mode, id=run_id, resume="allow", name=name,
                               group=group, job_type=job_type, tags=tags, config=dict(config),
                               dir=str(directory), reinit="finish_previous")
        self._defined: set[str] = set()  # keys already given their curve's step axis

    def log(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, Mapping) and "step" in value:
                self._define_curve(key, value)
        flat: dict[str, Any] = {}
        flatten("", metrics, flat)
        self._run.log({k: v for k, v in flat.items() if isinstance(v, (int, float))})

    def _define_curve(self, key: str, row: Mapping[str, Any]) -> None:
        step = f"{key}/step"
        for field in row:
            name = f"{key}/{field}"
            if name != step and name not in self._defined:
                self._run.define_metric(name, step_metric=step)
                self._defined.add(name)

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), allow_mixed_types=True)
        for record in records:
            table.add_data(*sample_row(record))
        self._run.log({f"samples/{name}": table})

    def log_results(self, records: Sequence[ResultRecord]) -> None:
        table = self._wandb.Table(columns=list(ResultRecord.columns()), allow_mixed_types=True)
        keys: dict[str, Any] = {}
        for record in records:
            table.add_data(*record.values())
            keys.update(record.metric_keys())
        self._run.log({**keys, "results": table})
        self._run.summary.update(keys)
        self._run.tags = tuple(unique_tags([*self._run.tags, *(f"arm:{record.arm}" for record in records)]))

    def log_artifacts(self, specs: Sequence[ArtifactSpec]) -> None:
        for spec in specs:
            artifact = self._wandb.Artifact(spec.name, type=spec.type, description=spec.description)
            for name, path in spec.files:
                artifact.add_file(str(path), name=name)
            self._run.log_artifact(artifact)

    def summary(self, values: Mapping[str, Any]) -> None:
        flat: dict[str, Any] = {}
        flatten("", values, flat)
        self._run.summary.update(flat)

    def finish(self, failed: bool = False) -> None:
        self._run.finish(exit_code=1 if failed else 0)
