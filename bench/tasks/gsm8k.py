"""GSM8K (Cobbe et al. 2021): grade-school word problems with worked solutions ending in `#### N`.

Splits: test = the official 1,319-item test set (ids `gsm8k/test/<index>`); validation = `validation_size` items
drawn with Random(seed) from the official train set; train = the rest of official train, in original order
(ids `gsm8k/train/<index>`, the index in the official file, which the hub and local copies share).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from bench.scoring.math import gsm8k_reference
from bench.tasks.base import Example, MathTask, Splits, register_task
from bench.tasks.data import load_records, read_jsonl

_CALCULATOR = re.compile(r"<<[^>]*>>")
LOCAL_CONFIG = "main"  # the only configuration the local files (gsm8k/{train,test}.jsonl) hold

logger = logging.getLogger(__name__)


def worked_solution(answer_field: str) -> str:
    """The official solution without calculator annotations, ending in the answer sentence we ask models for."""
    body = _CALCULATOR.sub("", answer_field[: answer_field.rfind("####")]).strip()
    return f"{body}\nThe answer is {gsm8k_reference(answer_field)}."


@register_task
class GSM8KTask(MathTask):
    name = "gsm8k"

    def _split_records(self, split: str) -> tuple[list[dict], str]:
        def local(root: Path) -> list[dict] | None:
            path = root / "gsm8k" / f"{split}.jsonl"
            return read_jsonl(path, ("question", "answer")) if path.exists() else None

        records, source = load_records(self.config, split, local)
        if source.startswith("local:") and self.config.hub_config not in (None, LOCAL_CONFIG):
            # Same problems in the same order, but `socratic` solutions put a sub-question before each step:
            # training targets differ, so say which data a run really used.
            logger.warning("task.hub_config=%s was asked for, but the hub was not used (offline, task.source=local "
                           "or unreachable) and the local GSM8K files hold the `%s` configuration: the %s split "
                           "from %s has `%s` solutions", self.config.hub_config, LOCAL_CONFIG, split, source,
                           LOCAL_CONFIG)
            source += f" ({LOCAL_CONFIG}, not {self.config.hub_config})"  # splits.json records what was used
        return records, source

    def _examples(self, split: str) -> tuple[list[Example], str]:
        records, source = self._split_records(split)
        examples = [Example(id=f"gsm8k/{split}/{index}", question=record["question"],
                            answer=gsm8k_reference(record["answer"]), solution=worked_solution(record["answer"]),
                            extra={"dataset_solution": record["answer"]})
                    for index, record in enumerate(records)]
        return examples, source

    def _load_splits(self) -> Splits:
        train, source = self._examples("train")
        test, _ = self._examples("test")
        if self.config.validation_size > len(train):
            raise ValueError(f"validation_size {self.config.validation_size} exceeds the {len(train)} train items")
        held_out = set(random.Random(self.config.seed).sample(range(len(train)), self.config.validation_size))
        validation = tuple(train[i] for i in sorted(held_out))
        if self.config.test_size is not None:
            test = test[: self.config.test_size]
        return Splits(train=tuple(e for i, e in enumerate(train) if i not in held_out), validation=validation,
                      test=tuple(test), seed=self.config.seed, source=source)
