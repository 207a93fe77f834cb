"""Paper tables from finished runs: `python -m bench.report [results_dir] [--experiment NAME] [--out DIR]`.

Reads every results/<experiment>/<run>/metrics.json (only complete runs have one: it is written last and
atomically) and writes one Markdown and one LaTeX table per experiment, each row an evaluated arm with n,
accuracy and its 95% CI, plus the paired test against the run's base arm where the method computed one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COLUMNS = ("task", "method", "models", "arm", "n", "accuracy", "95% CI", "Δ vs base", "paired p")


def machine(environment: dict[str, Any]) -> str:
    """Where a number came from, for the table's footnote."""
    device = environment.get("cuda") or f"CPU only, {environment.get('cpus', '?')} cores"
    return f"{device}; torch {environment.get('torch', '?')}; commit {str(environment.get('git_commit'))[:8]}"


def collect(results_dir: Path, experiment: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Table rows per experiment, from all complete runs."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for metrics_file in sorted(results_dir.glob("*/*/metrics.json")):
        name = metrics_file.parent.parent.name
        if experiment and name != experiment:
            continue
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        models = ", ".join(f"{role}={model_id.split('@')[0]}" for role, model_id in metrics.get("models", {}).items())
        for row in metrics.get("rows", []):
            tables.setdefault(name, []).append({
                "task": metrics.get("task", ""), "method": metrics.get("method", ""), "models": models,
                "arm": row["arm"], "n": row["n"], "accuracy": f"{100 * row['accuracy']:.1f}",
                "95% CI": f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]",
                "Δ vs base": f"{100 * row['diff']:+.1f}" if "diff" in row else "",
                "paired p": _p_value(row), "machine": machine(metrics.get("environment", {})),
            })
    return tables


def _p_value(row: dict[str, Any]) -> str:
    p = row.get("mcnemar_p", row.get("bootstrap_p"))
    return "" if p is None else f"{p:.3g}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    machines = sorted({row["machine"] for row in rows})
    lines += ["", "Accuracy in %, 95% bootstrap CI; paired p: exact McNemar against the run's base arm on the same "
              "items. Measured on: " + " | ".join(machines)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("Δ", r"$\Delta$")):
        text = text.replace(char, escaped)
    return text


def to_latex(rows: list[dict[str, Any]]) -> str:
    header = " & ".join(_latex_escape(c) for c in COLUMNS) + r" \\"
    body = [" & ".join(_latex_escape(str(row[c])) for c in COLUMNS) + r" \\" for row in rows]
    return "\n".join([r"\begin{tabular}{" + "l" * 4 + "r" * 5 + "}", r"\toprule", header, r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_tables(results_dir: Path, out_dir: Path, experiment: str | None = None) -> list[Path]:
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in collect(results_dir, experiment).items():
        for suffix, render in ((".md", to_markdown), (".tex", to_latex)):
            path = out_dir / f"{name}{suffix}"
            path.write_text(render(rows), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default="results", type=Path)
    parser.add_argument("--experiment")
    parser.add_argument("--out", type=Path, help="default: <results_dir>/tables")
    args = parser.parse_args(argv)
    paths = write_tables(args.results_dir, args.out or args.results_dir / "tables", args.experiment)
    if not paths:
        raise SystemExit(f"no finished runs (metrics.json) under {args.results_dir}")
    for path in paths:
        print(path)
        if path.suffix == ".md":
            print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
