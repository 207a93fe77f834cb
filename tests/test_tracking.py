"""Run store atomicity and the W&B tracker in offline mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.tracking import RunStore, WandbTracker, atomic_write_text, read_jsonl


def test_atomic_write_leaves_no_temp_files_and_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("crash while writing")

    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError):
        store.write_jsonl("metrics.json", iter([{"a": 1}, Boom()]))  # type: ignore[list-item]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_store_round_trips_and_phase_markers(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_json("a/b.json", {"x": 1})
    store.write_jsonl("s.jsonl", [{"i": 1}, {"i": 2}])
    assert store.read_json("a/b.json") == {"x": 1} and store.read_jsonl("s.jsonl") == [{"i": 1}, {"i": 2}]
    assert not store.phase_done("init")
    store.mark_phase_done("init", {"n": 3})
    assert store.phase_done("init")
    store.clear_phases()
    assert not store.phase_done("init")


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{bad\n')
    with pytest.raises(ValueError, match="x.jsonl:2"):
        read_jsonl(path)


def test_wandb_offline_run_logs_metrics_and_samples(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = WandbTracker(project="bench-test", entity=None, mode="offline", name="job", group="g", tags=["t"],
                           config={"task": {"name": "gsm8k"}}, directory=tmp_path)
    tracker.log({"student": {"accuracy": {"mean": 0.5}, "n": 4}})
    tracker.log_samples("student", [{"task_id": "a", "status": "passed", "passed": True}])
    tracker.summary({"rows": {"student": {"accuracy": 0.5}}})
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].rglob("*.wandb"))
