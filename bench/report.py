"""Paper tables and plots from finished runs: `python -m bench.report [results_dir] [--experiment NAME] [--out DIR]`.

Reads every results/<experiment>/<run>/metrics.json (only complete runs have one: it is written last and
atomically) and writes, per experiment, into the tables folder (default results/tables/):

- `<experiment>.md/.tex`: the long table, one line per arm of every run (each seed's accuracy and 95% CI, the
  paired test against the run's base arm, pass@k columns for sampled runs);
- `<experiment>.pivot.md/.tex`: the papers' layout, arms × (task × student), accuracy with CI and Δ vs the student
  alone with significance marks; repeats that differ only in the seed as mean ± std over seeds;
- `<experiment>.cost.md/.tex`: teacher tokens, dollars, forward tokens, cache, training and evaluation cost per arm;
- `<experiment>.pairs.md/.tex`: every paired comparison of a `compare` run;
- `<experiment>.{accuracy,tradeoff,training}.png/.pdf`: accuracy with intervals, accuracy vs teacher tokens,
  RP-KD loss curves.

Every footer names the interval method, the items, models, seeds and machine. The LaTeX files are `table` floats
that compile as they are with `\\usepackage{booktabs}`. The parts live in `bench/reporting/`; jobs of a sweep
that finish together regenerate under a lock, and every file is replaced atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.reporting.long import footer, long_rows
from bench.reporting.provenance import machine
from bench.reporting.runs import load_runs
from bench.reporting.write import write_tables

__all__ = ["collect", "footer", "machine", "main", "write_tables"]


def collect(results_dir: Path, experiment: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The long table's rows per experiment, from all complete runs."""
    return {name: long_rows(runs) for name, runs in load_runs(results_dir, experiment).items()}


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
