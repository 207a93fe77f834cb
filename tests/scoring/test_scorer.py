"""The `Scorer` adapters: one argument order (example, completion) for every backend, and verdicts identical to
what the backends' own APIs return."""

from __future__ import annotations

import pytest

from bench.scoring import Scorer, Status
from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem, CodeScorer
from bench.scoring.math import MathChecker, MathScorer
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits
from bench.tasks.base import Example

MATH = Example(id="m/0", question="What is 9 + 9?", answer="18", solution="9 + 9 = 18. The answer is 18.")
COMPLETIONS = ["The answer is 18.", "so 5 + 10 = 15 apples", "about eighteen", "#### 18.0", "The answer is 17."]


@pytest.mark.parametrize("mode", ["strict", "flexible"])
def test_math_scorer_returns_the_checkers_verdicts(mode: str) -> None:
    checker = MathChecker(mode)  # type: ignore[arg-type]
    scorer = MathScorer(checker)
    assert isinstance(scorer, Scorer)
    examples = [MATH] * len(COMPLETIONS)
    assert scorer.score_many(examples, COMPLETIONS) == [checker.score(c, "18") for c in COMPLETIONS]
    assert [scorer.score(MATH, c) for c in COMPLETIONS] == [checker.score(c, "18") for c in COMPLETIONS]
    # an assessment carries the same verdict, with every mode's outcome and extracted answer beside it
    assessments = scorer.assess_many(examples, COMPLETIONS)
    assert [a.verdict for a in assessments] == [checker.score(c, "18") for c in COMPLETIONS]
    assert [a.scores for a in assessments] == [scorer.details(MATH, c) for c in COMPLETIONS]
    assert assessments[1].extracted == {"strict": None, "flexible": "15"}
    assert scorer.details(MATH, "The answer is 17.") == {"strict": "failed", "flexible": "failed"}
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        scorer.score_many([MATH, MATH], ["18"])


def test_code_scorer_builds_each_problem_from_the_example() -> None:
    prompt = 'def add(xs):\n    """Sum of xs."""\n'
    test = "def check(candidate):\n    assert candidate([1, 2]) == 3\n"
    example = Example(id="c/0", question=prompt, answer="    return sum(xs)\n", solution="",
                      extra={"test": test, "entry_point": "add"})
    checker = CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(cpu_time_s=3), workers=2))
    seen: list[str] = []

    def problem(e: Example) -> CodeProblem:
        seen.append(e.id)
        return CodeProblem(task_id=e.id, prompt=e.question, test=e.extra["test"], entry_point=e.extra["entry_point"])

    scorer = CodeScorer(checker, problem)
    assert isinstance(scorer, Scorer)
    completions = ["    return sum(xs)\n", "    return 0\n"]
    verdicts = scorer.score_many([example, example], completions)
    assert [v.status for v in verdicts] == [Status.PASSED, Status.FAILED]
    assert verdicts == checker.score_many([(problem(example), c) for c in completions])
    assert scorer.score(example, completions[1]) == verdicts[1]
    assert seen[:2] == ["c/0", "c/0"]


def test_code_scorer_scores_an_mbpp_shaped_task_through_the_problem_it_builds() -> None:
    """Assert-only tests and no `check` function (MBPP's shape): the task's problem says how its tests run, so the
    scorer needs no edit for it."""
    example = Example(id="mbpp/3", question="Write a function to identify non-prime numbers.", answer="",
                      solution="", extra={"test_list": ["assert is_not_prime(2) == False",
                                                        "assert is_not_prime(10) == True",
                                                        "assert is_not_prime(35) == True"],
                                          "entry_point": "is_not_prime"})

    def problem(e: Example) -> CodeProblem:
        return CodeProblem(task_id=e.id, prompt="", test="\n".join(e.extra["test_list"]),
                           entry_point=e.extra["entry_point"], test_call="")

    scorer = CodeScorer(CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(cpu_time_s=3), workers=2)), problem)
    right = ("```python\nimport math\n\ndef is_not_prime(n):\n    if n < 2:\n        return True\n"
             "    return any(n % i == 0 for i in range(2, int(math.sqrt(n)) + 1))\n```")
    wrong = "```python\ndef is_not_prime(n):\n    return n > 10\n```"
    verdicts = scorer.score_many([example, example], [right, wrong])
    assert [v.status for v in verdicts] == [Status.PASSED, Status.FAILED]
    assert "is_not_prime(10) == True" in verdicts[1].detail  # the failing assert line, for CD's teacher
