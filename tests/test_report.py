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
