"""MultiArith (Roy & Roth 2015): 600 multi-step arithmetic word problems with whole-number answers.

No official split ships with the original data (the HF mirror ChilleD/MultiArith cuts 420/180), so the harness
defines its own, identical whichever source loaded the data: each item's id is a hash of its normalised question
text; items are sorted by id and shuffled with Random(seed); test = the first `test_size` (default 180),
validation = the next `validation_size` (default 60), train = the rest. The original file repeats 20
questions verbatim; duplicates are dropped, leaving 580 items, so train holds 340. Selection (CD rules, KD
checkpoints) only ever sees train and validation.

Worked solutions: the original file has each problem's equation ('X=((32.0+42.0)-35.0)'); the hub mirror only
has the final number. `Example.solution` is what CD's teacher is shown as the correct answer when it explains a
student's mistake (and what few-shot turns and RP-KD's fine-tuning imitate), and an equation tells the teacher
*which* step went wrong where a bare number does not. So when the hub supplied the data and a local copy is
present, each hub item takes its equation from the local item with the same `question_id` (and the same answer);
`Example.extra["solution_source"]` says where each solution came from: "local" (the local file was the source),
"local_match" (hub item, equation from the local copy) or "answer_only" (no equation found).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.config import TaskConfig
from bench.tasks.base import Example, MathTask, Splits, carve, format_number, register_task
from bench.tasks.data import load_records, local_data_dirs, read_json_list


def question_id(question: str) -> str:
    normalised = " ".join(question.split()).lower()
    return "multiarith/" + hashlib.sha1(normalised.encode()).hexdigest()[:12]


def _solution(equations: list[str], answer: str) -> str:
    """'X=((32.0+42.0)-35.0)' -> '((32 + 42) - 35) = 39. The answer is 39.'"""
    if not equations:
        return f"The answer is {answer}."
    expression = equations[0].split("=", 1)[-1]
    expression = re.sub(r"(\d+)\.0\b", r"\1", expression)
    expression = re.sub(r"\s*([+\-*/])\s*", r" \1 ", expression).strip()
    return f"{expression} = {answer}. The answer is {answer}."


def _from_local(record: dict) -> tuple[str, str, list[str]]:
    return record["sQuestion"].strip(), format_number(record["lSolutions"][0]), list(record.get("lEquations", []))


def _from_hub(record: dict) -> tuple[str, str, list[str]]:
    return record["question"].strip(), format_number(record["final_ans"]), []


def _read_local(root: Path) -> list[dict] | None:
    path = root / "multiarith" / "MultiArith.json"
    if not path.exists():
        return None
    return [{"_local": True, **item} for item in read_json_list(path, ("sQuestion", "lSolutions"))]


def _local_copy(config: TaskConfig) -> tuple[list[dict], str]:
    """(records, "local:<root>") of the first local MultiArith.json, or ([], "") when there is none."""
    for root in local_data_dirs(config):
        records = _read_local(root)
        if records is not None:
            return records, f"local:{root}"
    return [], ""


def build_examples(records: Iterable[dict], local_records: Sequence[dict] = ()) -> list[Example]:
    """One Example per distinct question (the original data holds a few verbatim duplicates). Records from the
    hub take their equations from `local_records` matched by question id, when the final answers agree."""
    local_equations = {}
    for record in local_records:
        question, answer, equations = _from_local(record)
        if equations:
            local_equations.setdefault(question_id(question), (answer, equations))
    examples: dict[str, Example] = {}
    for record in records:
        is_local = bool(record.get("_local"))
        question, answer, equations = (_from_local if is_local else _from_hub)(record)
        source = "local" if is_local and equations else "answer_only"
        match = local_equations.get(question_id(question))
        if not equations and match is not None and match[0] == answer:
            equations, source = match[1], "local_match"
        example = Example(id=question_id(question), question=question, answer=answer,
                          solution=_solution(equations, answer), extra={"solution_source": source})
        examples.setdefault(example.id, example)
    return list(examples.values())


@register_task
class MultiArithTask(MathTask):
    name = "multiarith"

    def _load_splits(self) -> Splits:
        # The hub mirror ships train and test; merged, they are the same 600 items as the original file.
        records, source = load_records(self.config, "train+test", _read_local)
        local_records: list[dict] = []
        if source.startswith("hub:"):  # the hub has no equations: borrow them from a local copy if there is one
            local_records, local_source = _local_copy(self.config)
            if local_records:
                source += f" (worked solutions matched from {local_source})"
        examples = build_examples(records, local_records)
        test_size = 180 if self.config.test_size is None else self.config.test_size
        parts = carve(examples, self.config.seed,
                      {"test": test_size, "validation": self.config.validation_size, "train": -1})
        return Splits(train=parts["train"], validation=parts["validation"], test=parts["test"],
                      seed=self.config.seed, source=source)
