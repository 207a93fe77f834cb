"""MultiArith (Roy & Roth 2015): 600 multi-step arithmetic word problems with whole-number answers.

No official split ships with the original data (the HF mirror ChilleD/MultiArith cuts 420/180), so the harness
defines its own, identical whichever source loaded the data: each item's id is a hash of its normalised question
text; items are sorted by id and shuffled with Random(seed); test = the first `test_size` (default 180),
validation = the next `validation_size` (default 60), train = the rest. The original file repeats 20
questions verbatim; duplicates are dropped, leaving 580 items, so train holds 340. Selection (CD rules, KD
checkpoints) only ever sees train and validation.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bench.tasks.base import Example, MathTask, Splits, carve, format_number
from bench.tasks.data import load_records, read_json_list


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


class MultiArithTask(MathTask):
    name = "multiarith"

    def _load_splits(self) -> Splits:
        def local(root: Path) -> list[dict] | None:
            path = root / "multiarith" / "MultiArith.json"
            if not path.exists():
                return None
            return [{"_local": True, **item} for item in read_json_list(path, ("sQuestion", "lSolutions"))]

        # The hub mirror ships train and test; merged, they are the same 600 items as the original file.
        records, source = load_records(self.config, "train+test", local)
        examples = {}
        for record in records:
            question, answer, equations = (_from_local if record.get("_local") else _from_hub)(record)
            example = Example(id=question_id(question), question=question, answer=answer,
                              solution=_solution(equations, answer))
            examples.setdefault(example.id, example)  # the original data holds a few verbatim duplicates
        test_size = 180 if self.config.test_size is None else self.config.test_size
        parts = carve(list(examples.values()), self.config.seed,
                      {"test": test_size, "validation": self.config.validation_size, "train": -1})
        return Splits(train=parts["train"], validation=parts["validation"], test=parts["test"],
                      seed=self.config.seed, source=source)
