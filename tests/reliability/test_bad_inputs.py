"""The bad inputs a user meets, each through the real CLI (`python -m bench ...` in a subprocess): the command
must fail with a non-zero exit and a message that names what is wrong (the file and line, the config key, the
path), before any model generates or trains, and it must lose nothing: a finished run in the same results_dir
keeps every file, byte for byte.

Each bad command is the finished run's command with a few overrides changed. Those whose config differs from the
finished run's in what it computes make a run folder of their own, so they run two at a time, each against its own
copy of the finished results_dir. Those that meet the finished run's very folder (the same config, or one that
differs only in where or how it is logged or cached) run alone, in place: a copy elsewhere would already differ
in the results_dir its config.yaml records.

Already covered elsewhere, so not repeated here:
  tests/test_main.py::test_unknown_option_lists_the_valid_ones            misspelt group option (student=nope), CLI
  tests/test_main.py::test_misspelt_key_fails_at_once / test_wrong_type_fails_at_once   at composition
  tests/test_main.py::test_method_shorthand_composes_into_the_method_schema  misspelt method key (cd.max_rulez)
  tests/test_main.py::test_impossible_values_fail_before_any_work         task.limit=0/-3, task.samples=0,
                                                                          task.max_new_tokens=0 (no folder made)
  tests/test_main.py::test_experiment_named_like_a_preset_says_how_to_load_it   experiment=<preset>
  tests/test_main.py::test_missing_api_key_fails_before_any_work           no API key for an API model
  tests/test_main.py::test_sampling_without_temperature_fails_before_any_work   task.samples > 1 at temperature 0
  tests/test_main.py::test_a_run_folder_refuses_another_config            a fixed run_name reused by another config
  tests/tasks/test_tasks.py::test_malformed_jsonl_names_file_and_line      each malformed-record message (bad JSON,
                                                                          missing field, gzip, JSON list items)
  tests/models/test_hf.py::test_missing_adapter_is_a_clear_error           a missing LoRA adapter folder
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import REPO, bench_argv, bench_env, run_bench, write_tiny_gsm8k

EXPERIMENT = "inputs"
FINISHED = ("student=tiny", "task=gsm8k", "task.limit=3", "task.max_new_tokens=8", "task.validation_size=4",
            "logger=none", f"experiment={EXPERIMENT}")
# What a command that failed early must not have written anywhere: generations, scores, training outputs.
WORK = ("samples", "metrics.json", "metrics", "losses.jsonl", "adapter", "checkpoint", "teacher_topk.pt")


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_message(stderr: str) -> str:
    """stderr without Hydra's echo of the command line ("Error executing job with overrides: [...]"), which
    repeats every key and path given: the message must name them itself."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("Error executing job with"))


def last_lines(message: str, count: int = 3) -> str:
    """The end of an error message, where the exception itself is (Hydra's closing hint left out)."""
    lines = [line for line in message.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return "\n".join(lines[-count:])


def _can_mount_read_only() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp"], capture_output=True)
    except OSError:
        return False
    return probe.returncode == 0


@dataclass
class Outcome:
    """What one bad command did: its exit status, its error message, and what it did to the finished run."""

    overrides: tuple[str, ...]
    returncode: int
    message: str
    lost: list[str]
    changed: list[str]
    work: list[str]

    def check_failed_early_losing_nothing(self) -> None:
        assert self.returncode != 0, f"accepted {self.overrides}"
        assert not self.lost and not self.changed, \
            f"the failing command deleted {self.lost} and changed {self.changed} of the finished run's results"
        assert not self.work, f"the failing command generated or trained before failing: {self.work}"


class Finished:
    """One finished tiny baseline run, and bad commands tried against copies of its results_dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = write_tiny_gsm8k(root / "data")
        self.results = root / "results"
        self.overrides = [*FINISHED, f"task.local_dir={self.data}", f"cache.path={root / 'cache.sqlite'}"]
        done = run_bench([*self.overrides, f"results_dir={self.results}"])
        assert done.returncode == 0, done.stderr[-3000:]

    def command(self, results: Path, *overrides: str) -> list[str]:
        """The finished run's overrides, with `overrides` in place of those of the same keys (Hydra refuses a
        config group given twice), writing to `results`."""
        keys = {override.split("=", 1)[0] for override in overrides}
        return [*(o for o in self.overrides if o.split("=", 1)[0] not in keys), *overrides, f"results_dir={results}"]

    def attempt(self, name: str, overrides: tuple[str, ...], read_only: bool = False,
                in_place: bool = False) -> Outcome:
        """Run the changed command against a fresh copy of the finished results_dir (read-only if asked), or
        against the finished results_dir itself."""
        results = self.results if in_place else self.root / "attempts" / name
        if not in_place:
            shutil.copytree(self.results, results)
        before = contents(results)
        argv = bench_argv(self.command(results, *overrides))
        if read_only:  # a bind mount in a user namespace: file modes alone do not stop root
            quoted = " ".join(f"'{arg}'" for arg in argv)
            argv = ["unshare", "-rm", "sh", "-c",
                    f"mount --bind '{results}' '{results}' && mount -o remount,bind,ro '{results}' && exec {quoted}"]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=bench_env(), timeout=300)
        after = contents(results)
        return Outcome(overrides=overrides, returncode=done.returncode, message=error_message(done.stderr),
                       lost=[p for p in before if p not in after],
                       changed=[p for p in before if p in after and after[p] != before[p]],
                       work=[p for p in after if p not in before and any(part in WORK for part in Path(p).parts)])


# name -> (overrides, read-only results_dir)
ATTEMPTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "misspelt_key": (("task.limt=5",), False),
    "missing_required": (("method=cd", "teacher=openai_compatible"), False),
    "train_limit": (("method=rpkd", "teacher=tiny", "method.train_limit=0"), False),
    "epochs": (("method=rpkd", "teacher=tiny", "method.train.epochs=0"), False),
    "lora_r": (("method=rpkd", "teacher=tiny", "method.lora.r=0"), False),
    "model_path": (("student=smollm2", "student.model_id=MISSING_MODEL"), False),  # a local folder, misspelt
    "preset": (("+experiments=cd_smolm2",), False),
    "read_only": (("task.limit=2",), True),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    yield Finished(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="module")
def outcomes(finished: Finished) -> dict[str, Outcome]:
    """Every bad command of ATTEMPTS, two at a time (each has its own copy of the results)."""
    missing = str(finished.root / "no" / "such" / "model")
    names = [name for name, (_, read_only) in ATTEMPTS.items() if not read_only or _can_mount_read_only()]

    def attempt(name: str) -> Outcome:
        overrides, read_only = ATTEMPTS[name]
        return finished.attempt(name, tuple(o.replace("MISSING_MODEL", missing) for o in overrides), read_only)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(attempt, names)))


def test_a_malformed_data_line_is_named_and_the_finished_run_survives(finished: Finished) -> None:
    """The very command of the finished run, after its local data file went bad (line 5 is cut short)."""
    train = finished.data / "gsm8k" / "train.jsonl"
    good = train.read_text()
    lines = good.splitlines()
    lines[4] = '{"question": "broken"'
    train.write_text("\n".join(lines) + "\n")
    try:
        outcome = finished.attempt("malformed_data", (), in_place=True)
    finally:
        train.write_text(good)
    outcome.check_failed_early_losing_nothing()
    assert f"{train}:5: not valid JSON" in outcome.message, last_lines(outcome.message)


def test_a_misspelt_key_names_the_key(outcomes: dict[str, Outcome]) -> None:
    outcomes["misspelt_key"].check_failed_early_losing_nothing()
    assert "Key 'limt' not in 'TaskConfig'" in outcomes["misspelt_key"].message


def test_a_missing_required_key_is_named_in_full(outcomes: dict[str, Outcome]) -> None:
    """teacher=openai_compatible without teacher.model_id: the student and the teacher share one schema, so the
    message must say whose model_id is missing."""
    outcomes["missing_required"].check_failed_early_losing_nothing()
    assert "teacher.model_id" in outcomes["missing_required"].message


@pytest.mark.parametrize(("name", "key"), [("train_limit", "method.train_limit"), ("epochs", "method.train.epochs"),
                                           ("lora_r", "method.lora.r")])
def test_an_impossible_value_is_refused_naming_its_key(outcomes: dict[str, Outcome], name: str, key: str) -> None:
    outcome = outcomes[name]
    outcome.check_failed_early_losing_nothing()
    assert key in outcome.message, last_lines(outcome.message)


def test_an_impossible_cache_setting_is_named_and_the_finished_run_keeps_its_config(finished: Finished) -> None:
    """cache.* is not part of a run's identity, so this command resumes the finished run's folder; failing, it
    must leave that run's config.yaml recording the settings that produced it."""
    outcome = finished.attempt("flush_every", ("cache.flush_every=0",), in_place=True)
    outcome.check_failed_early_losing_nothing()
    assert "cache.flush_every" in outcome.message, last_lines(outcome.message)


def test_a_nonexistent_local_model_path_is_named(outcomes: dict[str, Outcome], finished: Finished) -> None:
    outcome = outcomes["model_path"]
    outcome.check_failed_early_losing_nothing()
    missing = str(finished.root / "no" / "such" / "model")
    assert missing in outcome.message and "does not exist" in outcome.message, last_lines(outcome.message)


def test_a_misspelt_preset_lists_the_presets(outcomes: dict[str, Outcome]) -> None:
    outcomes["preset"].check_failed_early_losing_nothing()
    message = outcomes["preset"].message
    assert "Could not find 'experiments/cd_smolm2'" in message and "cd_smollm2" in message


@pytest.mark.skipif(not _can_mount_read_only(), reason="no user namespaces here to mount results_dir read-only")
def test_a_read_only_results_dir_is_named(outcomes: dict[str, Outcome], finished: Finished) -> None:
    """results_dir on a read-only mount: any run of the experiment must write there, so the command must say
    where it could not write, and why."""
    outcome = outcomes["read_only"]
    outcome.check_failed_early_losing_nothing()
    results = str(finished.root / "attempts" / "read_only")
    assert "Read-only file system" in outcome.message and results in outcome.message, last_lines(outcome.message)
