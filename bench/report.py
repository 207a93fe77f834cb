"""Paper tables from finished runs: `python -m bench.report [results_dir] [--experiment NAME] [--out DIR]`.

Reads every results/<experiment>/<run>/metrics.json (only complete runs have one: it is written last and
atomically) and writes one Markdown and one LaTeX table per experiment, each row an evaluated arm with n,
accuracy and its 95% CI, plus the paired test against the run's base arm where the method computed one. Runs
that sampled several completions per item add pass@k columns. Every footer names the interval method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.scoring.metrics import INTERVAL_DESCRIPTIONS, Interval

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
                # runs written before intervals were recorded used the percentile bootstrap
                "interval": row.get("interval", Interval.BOOTSTRAP.value),
                **_pass_at_k_cells(row),
            })
    return tables


def _pass_at_k_cells(row: dict[str, Any]) -> dict[str, str]:
    """pass@k (k > 1) cells, "12.5 [6.1, 24.0]", for rows of runs that sampled several completions per item."""
    cells = {}
    for key, value in row.items():
        if key.startswith("pass@") and not key.endswith("_ci"):
            low, high = row[f"{key}_ci"]
            cells[key] = f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    if cells:
        cells["samples"] = str(row.get("samples", ""))
    return cells


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The fixed columns, plus samples and pass@k when any row has them."""
    extra = sorted({key for row in rows for key in row if key.startswith("pass@")}, key=lambda k: int(k[5:]))
    return [*COLUMNS, *(["samples", *extra] if extra else [])]


def footer(rows: list[dict[str, Any]]) -> str:
    """What the numbers are and where they were measured, with the interval method named."""
    intervals = sorted({INTERVAL_DESCRIPTIONS[Interval(row["interval"])] for row in rows})
    sampled = any(key.startswith("pass@") for row in rows for key in row)
    text = (f"Accuracy in %, 95% CI: {' / '.join(intervals)}" +
            (" (with several samples per item, accuracy is unbiased pass@1 and the interval is taken over "
             "problems, conservatively)" if sampled else "") +
            "; paired p: exact McNemar against the run's base arm on the same items (paired bootstrap for "
            "sampled scores). Measured on: " + " | ".join(sorted({row["machine"] for row in rows})))
    return text


def _p_value(row: dict[str, Any]) -> str:
    p = row.get("mcnemar_p", row.get("bootstrap_p"))
    return "" if p is None else f"{p:.3g}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    names = columns(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in names) + " |" for row in rows]
    lines += ["", footer(rows)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("Δ", r"$\Delta$")):
        text = text.replace(char, escaped)
    return text


def to_latex(rows: list[dict[str, Any]]) -> str:
    names = columns(rows)
    header = " & ".join(_latex_escape(c) for c in names) + r" \\"
    body = [" & ".join(_latex_escape(str(row.get(c, ""))) for c in names) + r" \\" for row in rows]
    return "\n".join([r"\begin{tabular}{" + "l" * 4 + "r" * (len(names) - 4) + "}", r"\toprule", header,
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      "% " + _latex_escape(footer(rows))]) + "\n"


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
