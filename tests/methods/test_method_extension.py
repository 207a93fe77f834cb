"""The method extension point: a third kind of method (beside prompt-time CD and the train-time arms), defined
entirely in this file and its YAML, registered the way the real methods are, then run through the Hydra app with
its own command-line options. Nothing in bench/ names it, so if this passes, a new method needs no edit to bench/.

The toy is a real (if small) method: in-context distillation from the train split. The student answers the test
items with `shots` worked train solutions in its system prompt, beside its base prompt, and the two arms are
compared item by item."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException
from compose import compose_config, isolated, only_run_folder

from bench.cli import expand_method_shorthand
from bench.config import MethodConfig
from bench.context import RunContext
from bench.methods import METHODS, Method, MethodResult, make_method, register_method
from bench.methods.base import Headline, best_arm, paired_arms


@dataclass
class FewShotConfig(MethodConfig):
    name: str = "fewshot"
    shots: int = 2  # worked train solutions shown in the system prompt


class FewShotPrompt(Method):
    name = "fewshot"
    config_class = FewShotConfig
    roles = ("student",)

    def run(self, ctx: RunContext) -> MethodResult:
        shots = ctx.examples("train", limit=self.config.shots)
        prompt = "Worked examples:\n\n" + "\n\n".join(f"{e.question}\n{e.solution}" for e in shots)
        split, examples = ctx.test_examples()
        results = {"base": ctx.evaluate(ctx.student, examples, split=split, name="test_base"),
                   "fewshot": ctx.evaluate(ctx.student, examples, split=split, name="test_fewshot",
                                           system_prompt=prompt)}
        ctx.store.write_text("fewshot_prompt.txt", prompt)
        rows, arms = paired_arms(ctx, results, "base")
        return MethodResult(metrics={"split": split, "arms": arms, "shots": [e.id for e in shots]}, rows=rows)

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        return best_arm(rows, lambda arm: arm == "fewshot")


YAML = """# In-context distillation from the train split (tests/methods/test_method_extension.py)
defaults:
  - /fewshot_schema@_here_

shots: 2
"""


@pytest.fixture
def fewshot(tmp_path: Path):
    """The method registered, and its YAML in a config folder of its own on Hydra's search path."""
    assert "fewshot" not in METHODS
    register_method(FewShotPrompt)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "fewshot.yaml").write_text(YAML)
    yield f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    METHODS.remove("fewshot")


def test_a_registered_method_composes_from_its_yaml_into_its_typed_config(fewshot: str) -> None:
    config = compose_config([fewshot, "method=fewshot", "student=tiny"])
    method = make_method(config.method)
    assert isinstance(method, FewShotPrompt) and method.config == FewShotConfig(shots=2)
    with pytest.raises(ConfigCompositionException, match="shots"):  # typed by its schema: fails at composition
        compose_config([fewshot, "method=fewshot", "method.shots=many"])


def test_its_name_is_a_command_line_shorthand() -> None:
    register_method(FewShotPrompt)
    try:
        assert expand_method_shorthand(["fewshot.shots=1"]) == ["method=fewshot", "++fewshot.shots=1"]
    finally:
        METHODS.remove("fewshot")


def test_a_new_method_runs_end_to_end_through_the_app(tmp_path: Path, fewshot: str) -> None:
    from bench.__main__ import execute

    overrides = [fewshot, "method=fewshot", "++fewshot.shots=1", "task=gsm8k", "task.limit=3",
                 "task.max_new_tokens=4", "student=tiny", "logger=none", *isolated(tmp_path, "ext")]
    metrics = execute(compose_config(overrides), progress=False)
    folder = only_run_folder(tmp_path, "ext")
    assert folder.name.startswith("fewshot-gsm8k-s_tiny-")
    assert [row["arm"] for row in metrics["rows"]] == ["base", "fewshot"]
    assert "paired_vs_base" in metrics["arms"]["fewshot"] and metrics["shots"] == ["gsm8k/train/0"]
    assert metrics["headline"]["arm"] == "fewshot" and list(metrics["models"]) == ["student"]
    samples = [json.loads(line) for line in (folder / "samples/test_fewshot.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["messages"][0]["content"].startswith("Worked examples:")
    assert (folder / "fewshot_prompt.txt").exists() and (folder / "config.yaml").read_text().count("shots: 1") == 1
