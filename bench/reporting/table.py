"""One table model, two renderings: Markdown for reading in the repository, LaTeX to paste into a paper.

Every table the report writes (long, pivot, cost, pairs) is built once as a `Table` and rendered by the two
functions here, so escaping, booktabs rules, the caption, the label and the footer are right in one place.
A cell is plain text (escaped for LaTeX) or a `Cell` that carries its own LaTeX (for marks and small type).
The LaTeX is a complete `table` float that compiles as is with `\\usepackage{booktabs}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import groupby


@dataclass(frozen=True)
class Cell:
    """Text with a LaTeX form of its own (already escaped); `latex=None` means: escape the text."""

    text: str
    latex: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Column:
    """A column; columns sharing a `group` get one spanning header above them (Markdown: "group · name")."""

    name: str
    align: str = "r"
    group: str | None = None


@dataclass
class Table:
    caption: str
    label: str  # \label{tab:<label>}
    columns: list[Column]
    rows: list[list[Cell | str]] = field(default_factory=list)
    footer: str = ""
    row_gap: str | None = None  # LaTeX: extra space after each body row (rows with a second, small line)


# One pass over the text, so that the braces of one replacement are never escaped by the next.
_LATEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
          "$": r"\$", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "|": r"\textbar{}", "Δ": r"$\Delta$", "±": r"$\pm$", "×": r"$\times$",
          "·": r"$\cdot$", "−": r"$-$", "≤": r"$\leq$", "≥": r"$\geq$", "→": r"$\rightarrow$", "…": r"\ldots{}",
          "—": "---", "–": "--"}
_LATEX_PATTERN = re.compile("|".join(re.escape(char) for char in _LATEX))


def latex_escape(text: str) -> str:
    return _LATEX_PATTERN.sub(lambda match: _LATEX[match.group(0)], text)


def latex_label(text: str) -> str:
    """A \\label key: letters, digits and `:-_.` only, so any experiment name makes a valid one."""
    return re.sub(r"[^A-Za-z0-9:_.-]+", "-", text)


def stacked(lines: list[str], align: str = "r", anchor: str = "t") -> str:
    """Lines (already LaTeX) one above the other in one cell: a nested tabular, so no package is needed."""
    if len(lines) == 1:
        return lines[0]
    return rf"\begin{{tabular}}[{anchor}]{{@{{}}{align}@{{}}}}" + r" \\ ".join(lines) + r"\end{tabular}"


def _header(column: Column, width: int = 10) -> str:
    """A long column name over several lines (bottom-aligned), so headers do not set the width of the table."""
    lines: list[str] = []
    for word in column.name.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return stacked([latex_escape(line) for line in lines], "l" if column.align == "l" else "c", "b")


def _latex_cell(cell: Cell | str) -> str:
    if isinstance(cell, Cell) and cell.latex is not None:
        return cell.latex
    return latex_escape(str(cell))


def _markdown_cell(cell: Cell | str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    names = [f"{c.group} · {c.name}" if c.group else c.name for c in table.columns]
    rules = [{"l": ":---", "c": ":---:", "r": "---:"}.get(c.align, "---") for c in table.columns]
    lines = ["| " + " | ".join(_markdown_cell(n) for n in names) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows]
    lines += ["", f"**{table.caption}.** {table.footer}".rstrip()]  # below, as the caption of a figure
    return "\n".join(lines) + "\n"


WIDE = 7  # more columns than this: smaller type and narrower gaps between columns


def to_latex(table: Table) -> str:
    align = "".join(c.align for c in table.columns)
    header = []
    if any(c.group for c in table.columns):
        spans, rules, start = [], [], 1
        for group, members in groupby(table.columns, key=lambda c: c.group):
            width = len(list(members))
            if group:
                spans.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            else:
                spans += [""] * width
            start += width
        header += [" & ".join(spans) + r" \\", " ".join(rules)]
    header.append(" & ".join(_header(c) for c in table.columns) + r" \\")
    end = r" \\" + (f"[{table.row_gap}]" if table.row_gap else "")
    body = [" & ".join(_latex_cell(c) for c in row) + end for row in table.rows]
    wide = len(table.columns) > WIDE
    lines = ["% needs \\usepackage{booktabs} in the preamble",
             *(["% wide: in a two-column paper use table*, or wrap the tabular in \\resizebox{\\linewidth}{!}{...}"]
               if wide else []),
             r"\begin{table}[htbp]", r"\centering", r"\footnotesize" if wide else r"\small",
             *([r"\setlength{\tabcolsep}{3pt}"] if wide else []),
             rf"\caption{{{latex_escape(table.caption)}}}", rf"\label{{tab:{latex_label(table.label)}}}",
             rf"\begin{{tabular}}{{@{{}}{align}@{{}}}}", r"\toprule", *header, r"\midrule", *body, r"\bottomrule",
             r"\end{tabular}"]
    if table.footer:
        lines += [r"\par\medskip", r"\begin{minipage}{\linewidth}\footnotesize",
                  latex_escape(table.footer), r"\end{minipage}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
