"""Evaluation: n completions per item, every one scored and recorded, unbiased pass@k, audit fields, paired tests.

A scripted model stands in for a sampler so that the counts of correct samples, and so the expected pass@k, are
known by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bench.config import ScoringConfig, TaskConfig
from bench.evaluation import compare, evaluate
from bench.models.base import Completion, GenerationRequest, SamplingParams
from bench.tasks.base import Example, MathTask, Splits

EXAMPLES = [Example(id=f"toy/{i}", question=f"What is {i} + {i}?", answer=str(2 * i), solution="") for i in range(3)]


class ToyMathTask(MathTask):
    name = "toy"

    def _load_splits(self) -> Splits:
        return Splits(train=(), validation=(), test=tuple(EXAMPLES), seed=0, source="inline")


class ScriptedSampler:
    """Returns, for the item at position i, the texts scripted for it (the first n of them)."""

    backend = "scripted"
    model_id = "scripted@1"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        self.requests += requests
        completions = []
        for request in requests:
            question = request.messages[-1].content
            item = next(e.id for e in EXAMPLES if question.startswith(e.question))
            completions.append(Completion(tuple(self.script[item][:request.params.n]), 10, 20))
        return completions


def _task() -> ToyMathTask:
    return ToyMathTask(TaskConfig(name="toy", hub_id="none"), ToyMathTask.make_scorer(ScoringConfig()))


SCRIPT = {  # correct answers: toy/0 -> 0, toy/1 -> 2, toy/2 -> 4
    "toy/0": ["The answer is 0."] * 4,  # 4 of 4 correct
    "toy/1": ["The answer is 3.", "The answer is 2.", "so it is 2", "The answer is 9."],  # 2 of 4
    "toy/2": ["nothing", "The answer is 5.", "The answer is 6.", "The answer is 7."],  # 0 of 4
}


def test_every_sample_is_scored_and_pass_at_k_is_unbiased() -> None:
    model = ScriptedSampler(SCRIPT)
    result = evaluate(_task(), model, EXAMPLES, run_id="r", split="test", name="eval", progress=False,
                      params=SamplingParams(temperature=0.8, n=4), pass_k=(1, 2, 10))
    assert all(request.params.n == 4 for request in model.requests)
    assert [s.n_correct for s in result.samples] == [4, 2, 0]
    assert result.scores == [1.0, 0.5, 0.0]
    metrics = result.metrics
    assert metrics["samples_per_item"] == 4
    # pass@1 = mean(c/n) = (1 + 0.5 + 0) / 3; pass@2 = mean(1, 1 - C(2,2)/C(4,2) = 5/6, 0); k=10 > n: omitted
    assert metrics["accuracy"]["mean"] == pytest.approx(0.5)
    assert metrics["pass_at_k"]["1"]["mean"] == pytest.approx(0.5)
    assert metrics["pass_at_k"]["2"]["mean"] == pytest.approx((1 + 5 / 6) / 3)
    assert set(metrics["pass_at_k"]) == {"1", "2"}
    assert metrics["pass_at_k"]["2"]["ci_low"] < metrics["pass_at_k"]["2"]["mean"] < \
        metrics["pass_at_k"]["2"]["ci_high"]
    assert metrics["statuses"] == {"passed": 6, "failed": 5, "no_answer": 1}  # over all 12 completions
    assert metrics["accuracy_strict"]["mean"] == pytest.approx((1 + 0.25 + 0) / 3)  # "so it is 2" is not strict


def test_records_keep_every_completion_its_verdict_and_what_the_scorer_read() -> None:
    result = evaluate(_task(), ScriptedSampler(SCRIPT), EXAMPLES, run_id="r", split="test", name="eval",
                      progress=False, params=SamplingParams(temperature=0.8, n=4))
    record = result.samples[1].to_dict()
    assert record["reference"] == "2"
    assert record["completions"] == SCRIPT["toy/1"]
    assert [v["status"] for v in record["verdicts"]] == ["failed", "passed", "passed", "failed"]
    assert record["verdicts"][2]["extracted"] == {"strict": None, "flexible": "2"}
    assert record["verdicts"][2]["scores"] == {"strict": "no_answer", "flexible": "passed"}
    assert (record["completion"], record["status"], record["extracted"]["strict"]) == \
        ("The answer is 3.", "failed", "3")  # the first completion, as a single-sample run reports it


def test_single_sample_records_the_reference_and_extraction_without_duplicating_it() -> None:
    result = evaluate(_task(), ScriptedSampler(SCRIPT), EXAMPLES, run_id="r", split="test", name="eval",
                      progress=False)
    record = result.samples[1]
    assert (record.reference, record.extracted, record.n_samples, record.score) == \
        ("2", {"strict": "3", "flexible": "3"}, 1, 0.0)
    assert record.completions == [] and record.verdicts == []
    assert result.metrics["pass_at_k"]["1"] == result.metrics["accuracy"]
    assert result.metrics["accuracy"]["method"] == "wilson"


def test_paired_comparison_of_sampled_runs_uses_per_item_shares() -> None:
    params = SamplingParams(temperature=0.8, n=4)
    base = evaluate(_task(), ScriptedSampler(SCRIPT), EXAMPLES, run_id="r", split="test", name="a",
                    progress=False, params=params)
    better = dict(SCRIPT, **{"toy/2": ["The answer is 4."] * 4})
    other = evaluate(_task(), ScriptedSampler(better), EXAMPLES, run_id="r", split="test", name="b",
                     progress=False, params=params)
    paired = compare(base, other)
    assert paired.diff == pytest.approx(1 / 3) and paired.mcnemar_p is None  # scores 0.5 are not binary


def test_a_backend_returning_the_wrong_number_of_samples_is_an_error() -> None:
    class Short(ScriptedSampler):
        def generate(self, requests, progress=True):
            return [Completion(("The answer is 0.",)) for _ in requests]

    with pytest.raises(RuntimeError, match="returned 1 completions for a request of n=4"):
        evaluate(_task(), Short(SCRIPT), EXAMPLES, run_id="r", split="test", name="eval", progress=False,
                 params=SamplingParams(temperature=0.8, n=4))


# Defect: each math completion was read four times during an evaluation (the verdict, the per-mode scores, then
# the answer once per mode) and each code completion's program was extracted twice (to run it, then to record it).
def test_each_math_completion_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.scoring.math as math_scoring

    read: list[str] = []
    extractions = math_scoring._extractions

    def counted(text: str):
        read.append(text)
        return extractions(text)

    monkeypatch.setattr(math_scoring, "_extractions", counted)
    result = evaluate(_task(), ScriptedSampler(SCRIPT), EXAMPLES, run_id="r", split="test", name="eval",
                      progress=False, params=SamplingParams(temperature=0.8, n=4))
    assert sorted(read) == sorted(text for texts in SCRIPT.values() for text in texts)
    assert result.samples[1].verdicts[2]["extracted"] == {"strict": None, "flexible": "2"}  # still recorded


def test_each_code_completion_is_extracted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.scoring.code as code_scoring
    import bench.tasks.humaneval as humaneval
    from bench.scoring import Status, Verdict
    from bench.scoring.code import CodeChecker, CodeScorer
    from bench.tasks.humaneval import HumanEvalTask

    class Executor:
        """Stands in for the sandbox: every program passes, and each is kept."""

        def __init__(self) -> None:
            self.programs: list[str] = []

        def run_many(self, programs: Sequence[str], progress: bool = False, desc: str = "") -> list[Verdict]:
            self.programs += programs
            return [Verdict(Status.PASSED) for _ in programs]

    read: list[str] = []
    extract = code_scoring.extract_completion_code

    def counted(prompt: str, completion: str, entry_point: str) -> str:
        read.append(completion)
        return extract(prompt, completion, entry_point)

    monkeypatch.setattr(code_scoring, "extract_completion_code", counted)
    monkeypatch.setattr(humaneval, "extract_completion_code", counted)
    prompt = 'def add(a, b):\n    """a + b"""\n'
    example = Example(id="code/0", question=prompt, answer="    return a + b\n", solution="",
                      extra={"test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"})
    executor = Executor()
    task = HumanEvalTask(TaskConfig(name="humaneval", hub_id="none"),
                         CodeScorer(CodeChecker(executor), humaneval._problem))  # type: ignore[arg-type]
    texts = ["```python\ndef add(a, b):\n    return a + b\n```", "    return b + a\n"]

    class Sampler:
        backend, model_id = "scripted", "scripted@1"

        def generate(self, requests, progress=True):
            return [Completion(tuple(texts), 10, 20) for _ in requests]

    result = evaluate(task, Sampler(), [example], run_id="r", split="test", name="eval", progress=False,
                      params=SamplingParams(temperature=0.8, n=2))
    assert read == texts
    record = result.samples[0]
    assert [v["extracted"]["program"] for v in record.verdicts] == ["\ndef add(a, b):\n    return a + b\n",
                                                                    "    return b + a\n"]
    assert executor.programs == [f"{prompt}{v['extracted']['program']}\n\n{example.extra['test']}\n\ncheck(add)\n"
                                 for v in record.verdicts]
