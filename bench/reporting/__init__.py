"""The parts of `python -m bench.report` (bench/report.py), one job each.

runs (metrics.json → typed records) → cells (arms into rows × task/student columns, seeds together) →
long / pivot / cost / pairs (a `Table` each) → table (Markdown and LaTeX) · plots (PNG and PDF) → write (locked,
atomic).
"""
