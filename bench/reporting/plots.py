"""The three figures of a comparison: accuracy with intervals, accuracy against teacher cost, training curves.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no display is needed
and no global figure state is shared between the jobs of a sweep that write their reports in one process.
Each figure comes back as PNG and PDF bytes; the caller writes them atomically next to the tables.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bench.reporting.cells import Aggregate, ColumnKey, Grid, RowKey, grid
from bench.reporting.provenance import task_name
from bench.reporting.runs import Family, Run

FORMATS = ("png", "pdf")
FAMILY_COLOURS = {Family.BASELINE: "#555555", Family.CD: "#1f77b4", Family.RPKD: "#d62728", Family.OTHER: "#2ca02c"}
FAMILY_MARKERS = {Family.BASELINE: "o", Family.CD: "s", Family.RPKD: "^", Family.OTHER: "D"}
FAMILY_NAMES = {Family.BASELINE: "baseline", Family.CD: "CD", Family.RPKD: "RP-KD", Family.OTHER: "other"}
MIN_WIDTH = 6.5  # inches: a one-panel figure still fits its title and legend
LOG_SPREAD = 30  # teacher costs spanning more than this factor get a log axis


@dataclass(frozen=True)
class Plot:
    """One rendered figure: `name` becomes `<experiment>.<name>.png/.pdf`."""

    name: str
    files: dict[str, bytes]


def render(figure: Figure) -> dict[str, bytes]:
    FigureCanvasAgg(figure)
    files = {}
    for suffix in FORMATS:
        buffer = io.BytesIO()
        # no CreationDate: regenerating a report leaves unchanged figures byte-identical (no churn in git)
        metadata = {"Creator": "bench.report", "CreationDate": None} if suffix == "pdf" else None
        figure.savefig(buffer, format=suffix, dpi=150, metadata=metadata)
        files[suffix] = buffer.getvalue()
    return files


def panel_title(column: ColumnKey, several_students: bool) -> str:
    return task_name(column.task) + (f" · {column.student}" if several_students else "")


def _shape(count: int, per_row: int = 3) -> tuple[int, int]:
    columns = min(count, per_row)
    return math.ceil(count / columns), columns


def accuracy_plot(experiment: str, layout: Grid) -> Plot:
    """Accuracy per arm with each run's 95% CI as a whisker, one panel per task × student."""
    several_students = len({c.student for c in layout.columns}) > 1
    nrows, ncols = _shape(len(layout.columns))
    label_width = max(len(row.title) for row in layout.rows)
    figure = Figure(figsize=(max(MIN_WIDTH, 1.2 + 0.07 * label_width + 3.4 * ncols),
                             1.4 + nrows * (0.45 * len(layout.rows) + 0.8)), layout="constrained")
    axes = figure.subplots(nrows, ncols, sharey=True, squeeze=False)
    seeded = False
    for index, column in enumerate(layout.columns):
        ax = axes[index // ncols][index % ncols]
        for y, row in enumerate(layout.rows):
            aggregate = layout.get(row, column)
            if aggregate is None:
                continue
            colour = FAMILY_COLOURS[row.family]
            count = aggregate.seeds
            for k, entry in enumerate(aggregate.entries):
                offset = 0.0 if count == 1 else -0.25 + 0.5 * k / (count - 1)
                arm = entry.arm
                ax.errorbar(100 * arm.accuracy, y + offset, xerr=[[100 * (arm.accuracy - arm.ci_low)],
                                                                  [100 * (arm.ci_high - arm.accuracy)]],
                            fmt="o", color=colour, markersize=4 if count > 1 else 6, capsize=3, linewidth=1.2)
            if count > 1:
                seeded = True
                ax.plot(100 * aggregate.mean, y, marker="D", markerfacecolor="none", markeredgecolor="black",
                        markersize=9, markeredgewidth=1.5, linestyle="none", zorder=5)
        ax.set_title(panel_title(column, several_students))
        ax.set_xlabel("accuracy (%)")
        right = max(ax.get_xlim()[1], 1.0)
        ax.set_xlim(-0.03 * right, right)  # a margin keeps markers at 0% whole
        ax.grid(axis="x", alpha=0.3)
    for index in range(len(layout.columns), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    first = axes[0][0]
    first.set_yticks(range(len(layout.rows)), [row.title for row in layout.rows])
    first.set_ylim(len(layout.rows) - 0.5, -0.5)
    handles = [Line2D([], [], color=FAMILY_COLOURS[f], marker="o", linestyle="-", label=FAMILY_NAMES[f])
               for f in dict.fromkeys(row.family for row in layout.rows)]
    if seeded:
        handles.append(Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor="black", markersize=9,
                              linestyle="none", label="mean over seeds"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
                  title="whiskers: 95% CI of each run" + (" (seeds one above the other)" if seeded else ""))
    figure.suptitle(f"{experiment}: accuracy per arm")
    return Plot("accuracy", render(figure))


def _teacher_tokens(aggregate: Aggregate) -> float | None:
    values = [e.arm.cost.teacher_tokens for e in aggregate.entries]
    if any(v is None for v in values):
        return 0.0 if aggregate.entries[0].arm.family is Family.BASELINE else None
    return statistics.fmean(v for v in values if v is not None)


def _error(aggregate: Aggregate) -> list[list[float]]:
    """The run's 95% CI, or ± one standard deviation over seeds."""
    if aggregate.single is not None:
        arm = aggregate.single
        return [[100 * (arm.accuracy - arm.ci_low)], [100 * (arm.ci_high - arm.accuracy)]]
    spread = 100 * (aggregate.std or 0.0)
    return [[spread], [spread]]


def tradeoff_plot(experiment: str, layout: Grid) -> Plot | None:
    """Accuracy against teacher tokens; arms that use no teacher sit in a strip of their own at the left.

    None when no arm recorded a teacher cost (a baseline experiment has no trade-off to show).
    """
    costs = {key: _teacher_tokens(aggregate) for key, aggregate in layout.cells.items()}
    positive = [c for c in costs.values() if c]
    if not positive:
        return None
    log = max(positive) / min(positive) > LOG_SPREAD
    several_students = len({c.student for c in layout.columns}) > 1
    colours = _arm_colours(layout.rows)
    nrows, ncols = _shape(len(layout.columns), per_row=2)
    figure = Figure(figsize=(max(MIN_WIDTH, 1.5 + 5.2 * ncols), 1.8 + 3.4 * nrows + 0.12 * len(layout.rows)),
                    layout="constrained")
    outer = figure.add_gridspec(nrows, ncols)
    unknown: set[str] = set()
    for index, column in enumerate(layout.columns):
        inner = outer[index // ncols, index % ncols].subgridspec(1, 2, width_ratios=[1, 4], wspace=0.05)
        strip = figure.add_subplot(inner[0])
        main = figure.add_subplot(inner[1], sharey=strip)
        zero = [row for row in layout.rows if costs.get((row, column)) == 0]
        for row in layout.rows:
            aggregate = layout.get(row, column)
            if aggregate is None:
                continue
            cost = costs[(row, column)]
            if cost is None:
                unknown.add(row.title)
                continue
            ax, x = (strip, zero.index(row) - (len(zero) - 1) / 2) if cost == 0 else (main, cost)
            ax.errorbar(x, 100 * aggregate.mean, yerr=_error(aggregate), fmt=FAMILY_MARKERS[row.family],
                        color=colours[row], markersize=7, capsize=3, linewidth=1.2)
        strip.set_xlim(-max(1, len(zero)) / 2 - 0.3, max(1, len(zero)) / 2 + 0.3)
        strip.set_xticks([0], ["no\nteacher"])
        strip.set_ylabel("accuracy (%)")
        strip.grid(axis="y", alpha=0.3)
        main.tick_params(axis="y", labelleft=False)
        if log:
            main.set_xscale("log")
            main.margins(x=0.15)
        else:
            main.set_xlim(0, 1.12 * max(c for k, c in costs.items() if k[1] == column and c is not None))
        main.xaxis.set_major_formatter(FuncFormatter(lambda value, _: axis_tokens(value)))
        low, high = strip.get_ylim()  # ± sd whiskers may reach past what an accuracy can be; a margin keeps
        strip.set_ylim(max(low, -3.0), min(max(high, 1.0), 103.0))  # markers at 0% or 100% whole
        main.set_xlabel("teacher tokens\n(prompt + completion + forward)")
        main.grid(alpha=0.3)
        main.set_title(panel_title(column, several_students), loc="left")
    handles = [Line2D([], [], color=colours[row], marker=FAMILY_MARKERS[row.family], linestyle="none",
                      markersize=7, label=row.title) for row in layout.rows if row.title not in unknown]
    figure.legend(handles=handles, loc="outside right center", frameon=False)
    title = f"{experiment}: accuracy vs teacher cost\nwhiskers: 95% CI of a run, or ± 1 sd over seeds"
    if unknown:
        title += f"; not shown (cost not recorded): {', '.join(sorted(unknown))}"
    figure.suptitle(title)
    return Plot("tradeoff", render(figure))


def axis_tokens(value: float) -> str:
    """Tick labels: 0, 500, 20k, 1M, 2.5G."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _arm_colours(rows: list[RowKey]) -> dict[RowKey, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
    return {row: palette[i % len(palette)] for i, row in enumerate(rows)}


def read_losses(path: Path) -> list[tuple[float, float]]:
    """(step, loss) pairs of a losses.jsonl; lines without both are skipped (a crashed write, a header)."""
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) and isinstance(
                record.get("loss"), (int, float)):
            points.append((float(record["step"]), float(record["loss"])))
    return points


def _smooth(values: list[float]) -> list[float]:
    """A trailing mean over ~5% of the curve: batch-1 losses are too noisy to read raw."""
    window = max(1, len(values) // 20)
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


@dataclass(frozen=True)
class Curve:
    column: str  # task (· student): the colour
    seed: int | None  # the line style, when the cell has several seeds
    points: list[tuple[float, float]]

    @property
    def name(self) -> str:
        return self.column + ("" if self.seed is None else f" · seed {self.seed}")


LINE_STYLES = ("-", "--", ":", "-.")


def training_plot(experiment: str, layout: Grid) -> Plot | None:
    """Loss against step for every trained arm, each on its own step axis; None when no run recorded a curve."""
    several_students = len({c.student for c in layout.columns}) > 1
    curves: dict[RowKey, list[Curve]] = {}
    for row in layout.rows:
        for column in layout.columns:
            aggregate = layout.get(row, column)
            for entry in aggregate.entries if aggregate else ():
                if entry.arm.losses is None or not entry.arm.losses.exists():
                    continue
                points = read_losses(entry.arm.losses)
                if points:
                    seed = entry.run.seed if aggregate is not None and aggregate.seeds > 1 else None
                    curves.setdefault(row, []).append(Curve(panel_title(column, several_students), seed, points))
    if not curves:
        return None
    nrows, ncols = _shape(len(curves))
    figure = Figure(figsize=(max(MIN_WIDTH, 1.0 + 4.4 * ncols), 1.6 + 3.2 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    everything = [curve for lines in curves.values() for curve in lines]
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(c.column for c in everything))}
    seeds = sorted({c.seed for c in everything if c.seed is not None})
    styles = {seed: LINE_STYLES[i % len(LINE_STYLES)] for i, seed in enumerate(seeds)}
    for index, (row, lines) in enumerate(curves.items()):
        ax = axes[index // ncols][index % ncols]
        for curve in lines:
            steps, losses = [p[0] for p in curve.points], [p[1] for p in curve.points]
            colour, style = colours[curve.column], styles.get(curve.seed, "-")
            ax.plot(steps, losses, color=colour, alpha=0.2, linewidth=0.7)
            ax.plot(steps, _smooth(losses), color=colour, linestyle=style, linewidth=1.6)
        ax.set_title(row.title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    for index in range(len(curves), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    handles = [Line2D([], [], color=colour, label=name) for name, colour in colours.items()] + [
        Line2D([], [], color="black", linestyle=style, label=f"seed {seed}") for seed, style in styles.items()]
    if len(handles) > 1:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    figure.suptitle(f"{experiment}: training loss per arm\nfaint: every step; solid: trailing mean")
    return Plot("training", render(figure))


def plots(experiment: str, runs: Iterable[Run]) -> list[Plot]:
    layout = grid(list(runs))
    made = [accuracy_plot(experiment, layout), tradeoff_plot(experiment, layout), training_plot(experiment, layout)]
    return [plot for plot in made if plot is not None]
