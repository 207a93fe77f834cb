"""method=baseline: one model, the task's prompt, the evaluation split."""

from __future__ import annotations

import json
from pathlib import Path

from compose import compose_config, isolated, only_run_folder


def test_a_teacher_baseline_is_sampled_as_the_teacher_is_configured(tmp_path: Path) -> None:
    """`method.model=teacher` evaluated the teacher with the student's sampling (temperature, top_p, seed): a
    pass@k teacher baseline at the teacher's temperature failed ("n > 1 with temperature 0", the student's)."""
    from bench.__main__ import execute

    metrics = execute(compose_config([
        "method=baseline", "method.model=teacher", "student=tiny", "teacher=tiny", "teacher.temperature=0.7",
        "task=gsm8k", "task.limit=2", "task.samples=2", "task.max_new_tokens=4", "logger=none",
        *isolated(tmp_path, "teacher")]), progress=False)
    assert [row["arm"] for row in metrics["rows"]] == ["teacher"] and list(metrics["models"]) == ["teacher"]
    folder = only_run_folder(tmp_path, "teacher")
    samples = [json.loads(line) for line in (folder / "samples/teacher.jsonl").read_text().splitlines()]
    assert [sample["n_samples"] for sample in samples] == [2, 2]
