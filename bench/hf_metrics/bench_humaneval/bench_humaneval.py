"""`evaluate` metric: HumanEval-style functional correctness with unbiased pass@k, run in bench's nsjail sandbox.

Unlike the hub's `code_eval`, no environment variable unlocks unsandboxed `exec`: every candidate runs in its own
nsjail (no network, read-only filesystem, memory/CPU/process caps) after the same program assembly bench uses
(markdown fences, chat preambles, an AST sanitizer that keeps the entry point and what it needs).
"""

from __future__ import annotations

import datasets
import evaluate

from bench.scoring.code import CodeChecker, CodeExecutor, CodeProblem
from bench.scoring.metrics import pass_at_k
from bench.scoring.sandbox import SandboxLimits, make_sandbox

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions: for each problem, a list of candidate completions (bodies or whole functions, fenced or not).
    references: for each problem, {"prompt": signature + docstring, "test": "def check(candidate): ...",
        "entry_point": function name} — the fields of a HumanEval record.
    k: the k of pass@k (default [1]); each k must not exceed the number of candidates of any problem.
    timeout_s: wall/CPU seconds per candidate (default 10). workers: parallel sandboxes (default 4 per CPU).
Returns:
    ({"pass@1": ..., ...}, per-problem list of candidate verdict statuses), like `code_eval`.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class BenchHumanEval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        problem = {"prompt": datasets.Value("string"), "test": datasets.Value("string"),
                   "entry_point": datasets.Value("string")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": problem}),
        )

    def _compute(self, predictions: list[list[str]], references: list[dict], k: list[int] | None = None,
                 timeout_s: float = 10.0, workers: int | None = None) -> tuple[dict, list[list[str]]]:
        ks = sorted(set(k or [1]))
        counts = {len(candidates) for candidates in predictions}
        if not counts or min(counts) < max(ks):
            raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} candidates per problem; "
                             f"got {sorted(counts)}")
        limits = SandboxLimits(cpu_time_s=timeout_s)  # a CPU budget, as the harness scores: load cannot flip a verdict
        executor = CodeExecutor(make_sandbox("nsjail"), limits)
        if workers is not None:
            executor.workers = workers
        checker = CodeChecker(executor)
        pairs = [(CodeProblem(task_id=str(i), prompt=ref["prompt"], test=ref["test"], entry_point=ref["entry_point"]),
                  candidate) for i, (ref, candidates) in enumerate(zip(references, predictions))
                 for candidate in candidates]
        verdicts = iter(checker.score_many(pairs))
        statuses = [[next(verdicts).status.value for _ in candidates] for candidates in predictions]
        scores = {f"pass@{value}": sum(pass_at_k(len(s), s.count("passed"), value) for s in statuses) / len(statuses)
                  for value in ks}
        return scores, statuses
