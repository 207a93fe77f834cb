"""Paper tables, cost tables and plots from metrics.json files."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.report import collect, main
from bench.reporting.cost import cost_table
from bench.reporting.pairs import pairs_table
from bench.reporting.pivot import pivot_table
from bench.reporting.runs import load_runs
from bench.reporting.table import latex_escape, to_latex, to_markdown
from bench.reporting.write import LOCK_NAME, regeneration_lock, write_tables


def _write_run(root: Path, experiment: str, run: str, rows: list[dict], **metrics) -> Path:
    folder = root / experiment / run
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"task": "gsm8k", "method": "cd",
                                                     "models": {"student": "tiny@x"}, "rows": rows, **metrics}))
    return folder


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


# ----------------------------------------------------------------------------------------- fixtures: a comparison
HEAD = "head_to_head"
ENVIRONMENT = {"cpus": 2, "torch": "2.13.0+cpu", "cuda": None, "git_commit": "0123456789abcdef"}
LABELS = {"student": "Student alone", "cd": "CD (learned prompt)", "gt_finetune": "GT fine-tune",
          "rpkd/reference/ground_truth": "RP-KD Ground Truth (reference)"}
FAMILIES = {"student": "baseline", "cd": "cd", "gt_finetune": "baseline", "rpkd/reference/ground_truth": "rpkd"}
# per (task, seed): accuracy of each arm and the McNemar p of the arms against the student
ACCURACY = {
    ("gsm8k", 0): {"student": 0.30, "cd": 0.36, "gt_finetune": 0.33, "rpkd/reference/ground_truth": 0.35},
    ("gsm8k", 1): {"student": 0.40, "cd": 0.44, "gt_finetune": 0.43, "rpkd/reference/ground_truth": 0.42},
    ("gsm8k", 2): {"student": 0.50, "cd": 0.52, "gt_finetune": 0.53, "rpkd/reference/ground_truth": 0.50},
    ("multiarith", 0): {"student": 0.20, "cd": 0.25, "gt_finetune": 0.21, "rpkd/reference/ground_truth": 0.40},
}
P_VALUES = {
    ("gsm8k", 0): {"cd": 0.004, "gt_finetune": 0.02, "rpkd/reference/ground_truth": 0.01},
    ("gsm8k", 1): {"cd": 0.008, "gt_finetune": 0.03, "rpkd/reference/ground_truth": 0.03},
    ("gsm8k", 2): {"cd": 0.009, "gt_finetune": 0.04, "rpkd/reference/ground_truth": 0.2},
    ("multiarith", 0): {"cd": 0.3, "gt_finetune": 0.9, "rpkd/reference/ground_truth": 0.001},
}
N = {"gsm8k": 100, "multiarith": 60}


def _cost(arm: str, seed: int) -> dict:
    teacher = {"cd": (12000, 3000, 0.05, None, None), "rpkd/reference/ground_truth": (0, 0, 0.0, 50000, 2.5e6)}
    prompt, completion, usd, forward, cache = teacher.get(arm, (0, 0, 0.0, None, None))
    trained = arm in ("gt_finetune", "rpkd/reference/ground_truth")
    return {"teacher_prompt_tokens": prompt, "teacher_completion_tokens": completion, "teacher_usd": usd,
            "teacher_forward_tokens": forward, "teacher_cache_bytes": cache,
            "train_steps": 200 if trained else None, "train_s": 600.0 + seed if trained else None,
            "eval_completion_tokens": 20000, "eval_s": 90.0,
            "stopped": "budget_usd" if arm == "cd" and seed == 1 else None}


def _losses(folder: Path, arm: str, seed: int) -> str:
    relative = f"artifacts/{arm}/losses.jsonl"
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    floor = 0.5 + 0.4 * seed + (0.8 if arm.startswith("rpkd") else 0.0)
    lines = [{"step": step, "lr": 1e-4, "loss": 3.0 * math.exp(-step / (40 + 30 * seed)) + floor
              + 0.3 * math.sin(7 * step + seed), "ce": 1.0, "kl": 0.5} for step in range(1, 201)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return relative


def write_compare_run(root: Path, task: str, seed: int, experiment: str = HEAD, labels: dict | None = None) -> Path:
    folder = root / experiment / f"compare-{task}-{seed}"
    folder.mkdir(parents=True)
    rows = []
    for arm, accuracy in ACCURACY[(task, seed)].items():
        n = N[task]
        row = {"arm": arm, "label": (labels or LABELS)[arm], "family": FAMILIES[arm], "n": n, "accuracy": accuracy,
               "ci_low": accuracy - 0.08, "ci_high": accuracy + 0.09, "interval": "wilson", "cost": _cost(arm, seed),
               "losses": _losses(folder, arm, seed) if arm in ("gt_finetune", "rpkd/reference/ground_truth") else None}
        if arm != "student":
            row.update(diff=accuracy - ACCURACY[(task, seed)]["student"], mcnemar_p=P_VALUES[(task, seed)][arm],
                       bootstrap_p=0.5)
        rows.append(row)
    pairs = [{"a": "cd", "b": "rpkd/reference/ground_truth", "n": N[task],
              "diff": ACCURACY[(task, seed)]["rpkd/reference/ground_truth"] - ACCURACY[(task, seed)]["cd"],
              "ci_low": -0.05, "ci_high": 0.07, "mcnemar_p": 0.004, "bootstrap_p": 0.01}]
    metrics = {"run_id": folder.name, "method": "compare", "task": task, "seed": seed, "student_name": "smollm2",
               "teacher_name": "smollm2", "models": {"student": "embedded:smollm2@1", "teacher": "embedded:smollm2@1"},
               "environment": ENVIRONMENT, "wall_s": 100.0, "rows": rows, "pairs": pairs}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(f"method:\n  name: compare\ntask:\n  name: {task}\n  limit: {N[task]}\n"
                                        f"student:\n  name: smollm2\nteacher:\n  name: smollm2\nseed: {seed}\n"
                                        f"experiment: {experiment}\n")
    return folder


def write_old_baseline(root: Path, experiment: str = "baseline_old") -> None:
    """Runs from before intervals, labels, families, seeds and costs were recorded."""
    for task, accuracy in (("gsm8k", 0.02), ("multiarith", 0.028), ("humaneval", 0.07)):
        _write_run(root, experiment, f"baseline-{task}", [{"arm": "student (smollm2)", "n": 100, "accuracy": accuracy,
                                                           "ci_low": 0.0, "ci_high": accuracy + 0.05}],
                   method="baseline", task=task, evaluation={"completion_tokens": 30000, "generation_s": 200.0,
                                                             "scoring_s": 4.0})


@pytest.fixture
def comparison(tmp_path: Path) -> Path:
    for seed in (0, 1, 2):
        write_compare_run(tmp_path, "gsm8k", seed)
    write_compare_run(tmp_path, "multiarith", 0)
    write_old_baseline(tmp_path)
    return tmp_path


def _markdown_rows(text: str) -> dict[str, list[str]]:
    """First cell -> the other cells, of the Markdown table at the top of a file."""
    rows = {}
    for line in text.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------------------- the pivot
def test_pivot_aggregates_seeds_with_their_std_and_marks_significance(comparison: Path) -> None:
    table = to_markdown(pivot_table(HEAD, load_runs(comparison)[HEAD]))
    assert table.splitlines()[0] == "| Arm | GSM8K | MultiArith |"
    rows = _markdown_rows(table)
    assert list(rows) == ["Student alone", "GT fine-tune", "CD (learned prompt)", "RP-KD Ground Truth (reference)"]
    # gsm8k: three seeds, 30/40/50 -> mean 40.0, sample std 10.0; multiarith: one seed with its own CI
    assert rows["Student alone"] == ["40.0 ± 10.0 (3 seeds)", "20.0 [12.0, 29.0]"]
    # CD: diffs 6, 4, 2 -> +4.0; every seed p < 0.01 -> **
    assert rows["CD (learned prompt)"][0] == "44.0 ± 8.0 (3 seeds) Δ +4.0**"
    # GT fine-tune: largest p 0.04 -> *
    assert rows["GT fine-tune"][0].endswith("Δ +3.0*")
    # RP-KD: one seed at p = 0.2 -> no mark over the three; multiarith alone at p = 0.001 -> **
    assert rows["RP-KD Ground Truth (reference)"] == ["42.3 ± 7.5 (3 seeds) Δ +2.3", "40.0 [32.0, 49.0] Δ +20.0**"]
    footer = table.splitlines()[-1]
    assert "Wilson score interval" in footer and "sample standard deviation" in footer
    assert "GSM8K 100; MultiArith 60" in footer and "Seeds: 0, 1, 2" in footer and "CPU only, 2 cores" in footer
    assert "student=embedded:smollm2" in footer and "teacher=embedded:smollm2" in footer


def test_long_table_keeps_each_seeds_interval(comparison: Path) -> None:
    rows = [r for r in collect(comparison)[HEAD] if r["arm"] == "student" and r["task"] == "gsm8k"]
    assert [(r["seed"], r["accuracy"], r["95% CI"]) for r in rows] == [
        ("0", "30.0", "[22.0, 39.0]"), ("1", "40.0", "[32.0, 49.0]"), ("2", "50.0", "[42.0, 59.0]")]


def test_old_baseline_runs_pivot_to_one_row_across_tasks(comparison: Path) -> None:
    table = to_markdown(pivot_table("baseline_old", load_runs(comparison)["baseline_old"]))
    assert table.splitlines()[0] == "| Arm | GSM8K | MultiArith | HumanEval |"
    assert _markdown_rows(table) == {"Student alone": ["2.0 [0.0, 7.0]", "2.8 [0.0, 7.8]", "7.0 [0.0, 12.0]"]}
    assert "percentile bootstrap" in table and "Δ:" not in table  # old runs: bootstrap; nothing was paired


def test_runs_that_differ_in_more_than_the_seed_get_rows_of_their_own(tmp_path: Path) -> None:
    for priming in ("teacher", "confidence"):
        folder = _write_run(tmp_path, "sweep", f"rpkd-{priming}", [
            {"arm": "no_train", "n": 50, "accuracy": 0.1, "ci_low": 0.05, "ci_high": 0.2, "interval": "wilson"},
            {"arm": priming, "n": 50, "accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.3, "interval": "wilson",
             "diff": 0.1, "mcnemar_p": 0.04}], method="rpkd", signal="reference")
        (folder / "config.yaml").write_text(f"method:\n  name: rpkd\n  priming: {priming}\n  seed: 0\nseed: 0\n")
    rows = _markdown_rows(to_markdown(pivot_table("sweep", load_runs(tmp_path)["sweep"])))
    assert list(rows) == ["Student alone [priming=confidence]", "Student alone [priming=teacher]",
                          "RP-KD Confidence (reference)", "RP-KD Teacher (reference)"]  # folder order
    assert rows["RP-KD Confidence (reference)"] == ["20.0 [10.0, 30.0] Δ +10.0*"]


def test_runs_of_older_methods_read_cost_and_curves_where_those_methods_kept_them(tmp_path: Path) -> None:
    folder = _write_run(tmp_path, "old_rpkd", "r", [
        {"arm": "no_train", "n": 50, "accuracy": 0.1, "ci_low": 0.05, "ci_high": 0.2, "interval": "wilson"},
        {"arm": "teacher", "n": 50, "accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.3, "interval": "wilson",
         "diff": 0.1, "mcnemar_p": 0.2}], method="rpkd",
        arms={"no_train": {"completion_tokens": 900, "generation_s": 30.0},
              "teacher": {"completion_tokens": 800, "generation_s": 20.0, "scoring_s": 1.0}},
        training={"teacher": {"steps": 40, "train_s": 125.0}},
        priming={"teacher": {"prompt_tokens": 100, "completion_tokens": 50, "forward_tokens": 7000,
                             "cache_bytes": 2e6, "stopped": "teacher budget of 7000 tokens reached"}})
    _losses(folder, "teacher", 0)
    (run,) = load_runs(tmp_path)["old_rpkd"]
    assert [a.label for a in run.arms] == ["Student alone", "RP-KD Teacher"]
    assert run.arms[1].losses == folder / "artifacts" / "teacher" / "losses.jsonl"
    rows = _markdown_rows(to_markdown(cost_table("old_rpkd", [run])))
    assert rows["RP-KD Teacher"] == ["150 (100 + 50)", "7,000", "2.0 MB", "40", "2.1 min", "800", "21.0 s",
                                     "teacher budget of 7000 tokens reached"]
    written = {p.name for p in write_tables(tmp_path, tmp_path / "tables")}
    assert {"old_rpkd.training.png", "old_rpkd.tradeoff.png"} <= written


def test_several_students_get_a_spanning_task_header(tmp_path: Path) -> None:
    for student in ("smollm2", "phi3"):
        _write_run(tmp_path, "s", student, [{"arm": "student", "n": 10, "accuracy": 0.5, "ci_low": 0.2,
                                             "ci_high": 0.8, "interval": "wilson"}], student_name=student)
    table = pivot_table("s", load_runs(tmp_path)["s"])
    assert to_markdown(table).splitlines()[0] == "| Arm | GSM8K · phi3 | GSM8K · smollm2 |"  # students by name
    latex = to_latex(table)
    assert r"\multicolumn{2}{c}{GSM8K}" in latex and r"\cmidrule(lr){2-3}" in latex
    assert "Arm & phi3 & smollm2" in latex


# ----------------------------------------------------------------------------------------- cost and pairs
def test_cost_table_means_over_seeds_and_drops_empty_columns(comparison: Path) -> None:
    runs = load_runs(comparison)
    table = to_markdown(cost_table(HEAD, runs[HEAD]))
    header = table.splitlines()[0]
    assert header == ("| Arm | Task | Teacher tokens (prompt + completion) | Teacher USD | Teacher forward tokens | "
                      "Teacher cache | Train steps | Train time | Eval completion tokens | Eval time | Stopped |")
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:10]]
    cd = next(r for r in rows if r[0].strip() == "CD (learned prompt)" and r[1] == "GSM8K")
    assert cd[2:4] == ["15.0k (12.0k + 3,000)", "0.0500"] and cd[-1].strip() == "budget_usd"
    rpkd = next(r for r in rows if r[0].strip() == "RP-KD Ground Truth (reference)" and r[1] == "GSM8K")
    assert rpkd[4:8] == ["50.0k", "2.5 MB", "200", "10.0 min"]  # train_s 600, 601, 602 -> 601 s
    old = to_markdown(cost_table("baseline_old", runs["baseline_old"]))
    assert old.splitlines()[0] == "| Arm | Task | Eval completion tokens | Eval time |"  # no teacher, no training
    assert "Teacher tokens:" not in old and "Teacher tokens:" in table and "Items (n): GSM8K 100;" in old
    assert old.splitlines()[2:5] == [f"| Student alone | {task} | 30.0k | 3.4 min |"
                                     for task in ("GSM8K", "MultiArith", "HumanEval")]


def test_pairs_table_lists_every_pair_with_labels(comparison: Path) -> None:
    runs = load_runs(comparison)
    table = pairs_table(HEAD, runs[HEAD])
    assert table is not None and pairs_table("baseline_old", runs["baseline_old"]) is None
    text = to_markdown(table)
    assert text.splitlines()[0] == ("| Task | Seed | A | B | n | Δ (B − A) | 95% CI | McNemar p | bootstrap p |")
    assert "| GSM8K | 0 | CD (learned prompt) | RP-KD Ground Truth (reference) | 100 | -1.0** | [-5.0, +7.0] | " \
           "0.004 | 0.01 |" in text
    assert len(table.rows) == 4


# ----------------------------------------------------------------------------------------- LaTeX
def test_latex_escapes_and_is_a_complete_table_float(tmp_path: Path) -> None:
    assert latex_escape(r"a_b 50% & #1 {x} \ $") == r"a\_b 50\% \& \#1 \{x\} \textbackslash{} \$"
    labels = {**LABELS, "cd": "CD top_k 20% & rest"}
    write_compare_run(tmp_path, "gsm8k", 0, experiment="cd_50%&more", labels=labels)
    latex = to_latex(pivot_table("cd_50%&more", load_runs(tmp_path)["cd_50%&more"]))
    assert r"CD top\_k 20\% \& rest" in latex
    assert r"\caption{cd\_50\%\&more: accuracy per arm, student smollm2}" in latex
    assert r"\label{tab:cd_50-more-accuracy}" in latex
    assert latex.index(r"\begin{table}") < latex.index(r"\toprule") < latex.index(r"\end{table}")
    assert "\\usepackage{booktabs}" in latex.splitlines()[0] and latex.splitlines()[0].startswith("%")
    # the accuracy, and below it in small type its CI and the difference with its marks
    assert r"\begin{tabular}[t]{@{}r@{}}36.0 \\ {\scriptsize [28.0, 45.0], $\Delta\,{+6.0}^{**}$}\end{tabular}" in latex
    _check_latex(latex)


def _check_latex(latex: str) -> None:
    """What pdflatex would reject, checked without it: unescaped specials, unbalanced braces and environments,
    body rows with the wrong number of cells."""
    body = [line for line in latex.splitlines() if not line.startswith("%")]
    text = "\n".join(body)
    assert not re.search(r"(?<!\\)[%#_]", re.sub(r"\\label\{[^}]*\}", "", text)), "unescaped % # or _"
    assert text.count("{") - text.count(r"\{") == text.count("}") - text.count(r"\}")
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack
    spec = re.search(r"\\begin\{tabular\}\{@\{\}(\w+)@\{\}\}", text)
    assert spec
    rows = text[text.index(r"\midrule"):text.index(r"\bottomrule")].splitlines()[1:]
    for row in rows:
        assert len(re.findall(r"(?<!\\)&", row)) == len(spec.group(1)) - 1, row


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(comparison: Path, tmp_path: Path) -> None:
    paths = write_tables(comparison, comparison / "tables")
    body = "\n".join(f"\\input{{{p.name}}}" for p in paths if p.suffix == ".tex")
    (comparison / "tables" / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                            cwd=comparison / "tables", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]


# ----------------------------------------------------------------------------------------- files, plots, locking
def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def _is_pdf(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF") and len(data) > 5_000


def test_write_tables_writes_tables_and_plots(comparison: Path) -> None:
    out = comparison / "tables"
    written = {p.name for p in write_tables(comparison, out)}
    for stem in ("", ".pivot", ".cost", ".pairs"):
        assert {f"{HEAD}{stem}.md", f"{HEAD}{stem}.tex"} <= written
    for plot in ("accuracy", "tradeoff", "training"):
        assert _is_png(out / f"{HEAD}.{plot}.png") and _is_pdf(out / f"{HEAD}.{plot}.pdf")
    # a baseline experiment: no teacher cost to trade off, no training curve, no pairs
    assert _is_png(out / "baseline_old.accuracy.png")
    assert not {"baseline_old.tradeoff.png", "baseline_old.training.png", "baseline_old.pairs.md"} & written
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]  # no temp files left


def test_concurrent_regenerations_produce_complete_files(comparison: Path) -> None:
    out = comparison / "tables"
    errors: list[BaseException] = []

    def job() -> None:
        try:
            write_tables(comparison, out, HEAD)
        except BaseException as error:  # noqa: BLE001 (re-raised below in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    for stem in ("", ".pivot", ".cost", ".pairs"):
        text = (out / f"{HEAD}{stem}.md").read_text()
        assert text.startswith("| ") and "Measured on:" in text.splitlines()[-1]
        _check_latex((out / f"{HEAD}{stem}.tex").read_text())
    assert _is_png(out / f"{HEAD}.accuracy.png") and _is_pdf(out / f"{HEAD}.tradeoff.pdf")


def test_regeneration_waits_for_the_lock(comparison: Path) -> None:
    out = comparison / "tables"
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (write_tables(comparison, out, "baseline_old"), finished.set()))
    with regeneration_lock(out):
        worker.start()
        time.sleep(1.0)
        assert not finished.is_set() and not (out / "baseline_old.md").exists()
    worker.join(timeout=300)
    assert finished.is_set() and (out / "baseline_old.md").exists()


def test_written_files_are_readable_by_all_like_the_tables_they_replace(tmp_path: Path) -> None:
    write_old_baseline(tmp_path)
    for path in write_tables(tmp_path, tmp_path / "tables"):
        assert path.stat().st_mode & 0o777 == 0o644, path
