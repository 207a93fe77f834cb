"""Paper tables from metrics.json files."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import collect, main


def _write_run(root: Path, experiment: str, run: str, rows: list[dict]) -> None:
    folder = root / experiment / run
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"task": "gsm8k", "method": "cd",
                                                     "models": {"student": "tiny@x"}, "rows": rows}))


def test_tables_from_runs(tmp_path: Path, capsys) -> None:
    _write_run(tmp_path, "exp", "r1", [
        {"arm": "base prompt", "n": 10, "accuracy": 0.3, "ci_low": 0.1, "ci_high": 0.6},
        {"arm": "CD prompt", "n": 10, "accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8, "diff": 0.2,
         "mcnemar_p": 0.125},
    ])
    (tmp_path / "exp" / "unfinished").mkdir()  # no metrics.json: skipped
    rows = collect(tmp_path)["exp"]
    assert [r["arm"] for r in rows] == ["base prompt", "CD prompt"]
    assert rows[1]["accuracy"] == "50.0" and rows[1]["Δ vs base"] == "+20.0" and rows[1]["paired p"] == "0.125"
    assert rows[0]["95% CI"] == "[10.0, 60.0]"
    main([str(tmp_path)])
    assert (tmp_path / "tables" / "exp.md").exists() and (tmp_path / "tables" / "exp.tex").exists()
    assert "CD prompt" in capsys.readouterr().out
    assert "Measured on: CPU only" in (tmp_path / "tables" / "exp.md").read_text()
    assert "\\toprule" in (tmp_path / "tables" / "exp.tex").read_text()


def test_footer_names_the_interval_and_old_runs_are_labelled_bootstrap(tmp_path: Path) -> None:
    _write_run(tmp_path, "exp", "old", [{"arm": "a", "n": 10, "accuracy": 0.0, "ci_low": 0.0, "ci_high": 0.0}])
    _write_run(tmp_path, "exp", "new", [{"arm": "b", "n": 50, "accuracy": 0.0, "ci_low": 0.0, "ci_high": 0.0713,
                                         "interval": "wilson"}])
    main([str(tmp_path)])
    table = (tmp_path / "tables" / "exp.md").read_text()
    assert "95% CI: Wilson score interval / percentile bootstrap" in table
    assert "Wilson score interval" in (tmp_path / "tables" / "exp.tex").read_text()


def test_sampled_runs_get_pass_at_k_columns(tmp_path: Path) -> None:
    _write_run(tmp_path, "exp", "r", [{"arm": "student", "n": 40, "accuracy": 0.05, "ci_low": 0.01,
                                       "ci_high": 0.17, "interval": "wilson", "samples": 10, "pass@5": 0.125,
                                       "pass@5_ci": [0.055, 0.26]}])
    (row,) = collect(tmp_path)["exp"]
    assert row["pass@5"] == "12.5 [5.5, 26.0]" and row["samples"] == "10"
    main([str(tmp_path)])
    header = (tmp_path / "tables" / "exp.md").read_text().splitlines()[0]
    assert header.endswith("| samples | pass@5 |")
    assert "unbiased pass@1" in (tmp_path / "tables" / "exp.md").read_text()
