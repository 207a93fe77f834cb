"""`evaluate` metric: bench's math answer checker (GSM8K / MultiArith style final answers).

Strict mode counts only an explicit final-answer marker (#### N, "The answer is N", \\boxed{N}); flexible mode
falls back to the last number. Both accuracies are returned; `mode` picks the headline `accuracy`.
"""

from __future__ import annotations

import datasets
import evaluate

from bench.scoring.math import MODES, MathChecker

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions: model outputs, one string per problem.
    references: gold final answers ("18", "3/4", "\\\\frac{1}{2}").
    mode: "flexible" (default) or "strict": which accuracy is reported as `accuracy`.
Returns:
    accuracy, accuracy_strict, accuracy_flexible (fractions in [0, 1]) and `verdicts` (status per prediction).
Example:
    >>> metric = evaluate.load(module_path("bench_math"))
    >>> metric.compute(predictions=["6 * 3 = 18. The answer is 18."], references=["18"])["accuracy"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class BenchMath(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str], mode: str = "flexible") -> dict:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        checker = MathChecker(mode)  # type: ignore[arg-type]
        verdicts = [checker.score_modes(p, r) for p, r in zip(predictions, references)]
        n = max(1, len(verdicts))
        result = {f"accuracy_{m}": sum(v[m].passed for v in verdicts) / n for m in MODES}
        result["accuracy"] = result[f"accuracy_{mode}"]
        result["verdicts"] = [v[mode].status.value for v in verdicts]
        return result
