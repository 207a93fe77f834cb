"""Which files of a finished run are worth keeping as versioned artifacts, and under which names.

A W&B report links numbers to the files that produced them: the run's metrics.json, CD's final prompt and the
evidence for each rule, every RP-KD LoRA adapter, and the experiment's report tables and plots. Finding them is a
pure function of the run folder, kept apart from any tracker so it can be tested without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RUN_FILES = ("metrics.json", "config.yaml", "splits.json")
PROMPT_FILES = ("final_prompt.txt", "candidate_rules.jsonl")
REPORT_SUFFIXES = (".md", ".tex", ".png", ".pdf")
# Not the run's outputs: the tracker's own folder, and training state that the adapter supersedes.
_SKIPPED_FOLDERS = ("wandb", "checkpoint")


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact: a W&B-safe name, a type, and (name inside the artifact, file on disk) pairs."""

    name: str
    type: str
    files: tuple[tuple[str, Path], ...]
    description: str = ""


def artifact_name(*parts: str) -> str:
    """W&B artifact names allow letters, digits, `-`, `_` and `.`; arms like `rpkd/reference/teacher` have `/`."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("_") for part in parts)[:128]


def _run_outputs(folder: Path, file_name: str) -> list[Path]:
    return sorted(path for path in folder.rglob(file_name)
                  if not set(path.relative_to(folder).parts[:-1]) & set(_SKIPPED_FOLDERS))


def run_artifacts(folder: Path, key: str) -> list[ArtifactSpec]:
    """The run's metrics, CD prompt files (wherever the method put them) and one artifact per LoRA adapter.

    `key` makes names unique per run (the W&B run id). An adapter is any `.../artifacts/<arm>/adapter` folder
    with an adapter_config.json; it is named by its path without `artifacts`: RP-KD's `teacher`, or compare's
    sub-run folder and arm, `rpkd-reference/teacher`.
    """
    specs = []
    run_files = tuple((name, folder / name) for name in RUN_FILES if (folder / name).is_file())
    if run_files:
        specs.append(ArtifactSpec(artifact_name("metrics", key), "results", run_files,
                                  "the run's metrics.json with its resolved config and splits"))
    prompt_files = tuple((path.relative_to(folder).as_posix(), path)
                         for name in PROMPT_FILES for path in _run_outputs(folder, name))
    if prompt_files:
        specs.append(ArtifactSpec(artifact_name("prompt", key), "prompt", prompt_files,
                                  "CD's final prompt and every candidate rule with its validation evidence"))
    for config in _run_outputs(folder, "adapter_config.json"):
        adapter = config.parent
        if adapter.name != "adapter" or "artifacts" not in adapter.relative_to(folder).parts:
            continue
        arm = "/".join(part for part in adapter.parent.relative_to(folder).parts if part != "artifacts")
        files = tuple((path.relative_to(adapter).as_posix(), path) for path in sorted(adapter.rglob("*"))
                      if path.is_file())
        specs.append(ArtifactSpec(artifact_name("adapter", key, arm), "lora_adapter", files,
                                  f"LoRA adapter of arm {arm} ({adapter.relative_to(folder).as_posix()})"))
    return specs


def _owner(stem: str, experiments: Iterable[str]) -> str | None:
    """The experiment a report file belongs to: the longest experiment name its stem starts with (at a word
    boundary), so experiment `cd` does not claim `cd_smollm2.md` while experiment `cd_smollm2` exists."""
    owners = [name for name in experiments
              if stem == name or (stem.startswith(name) and stem[len(name)] in "_-.")]
    return max(owners, key=len, default=None)


def report_artifact(tables_dir: Path, experiment: str, results_dir: Path) -> ArtifactSpec | None:
    """The experiment's tables and plots (whatever `report` wrote for it), one artifact per experiment."""
    if not tables_dir.is_dir():
        return None
    experiments = {path.name for path in results_dir.iterdir() if path.is_dir()} | {experiment}
    files = tuple((path.name, path) for path in sorted(tables_dir.iterdir())
                  if path.is_file() and path.suffix in REPORT_SUFFIXES and _owner(path.stem, experiments) == experiment)
    if not files:
        return None
    return ArtifactSpec(artifact_name("tables", experiment), "report", files,
                        f"report tables and plots of experiment {experiment}")
