"""Priming prompts and the arms a run selects (`method.arms`, or baselines plus one `method.priming`)."""

from __future__ import annotations

import pytest

from bench.training.priming import PRIMING_PROMPTS, primed_question, priming_prompt, select_arms


def test_arms_are_used_as_given_without_priming() -> None:
    assert select_arms(["no_train", "gt_finetune", "teacher"], None) == ["no_train", "gt_finetune", "teacher"]


def test_priming_replaces_the_priming_arms_and_keeps_the_baselines() -> None:
    assert select_arms(["no_train", "gt_finetune", "ground_truth", "teacher"], "confidence") == \
        ["no_train", "gt_finetune", "confidence"]
    assert select_arms(["ground_truth"], "base") == ["base"]


def test_unknown_priming_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="confidence"):
        select_arms(["no_train"], "confident")


def test_custom_priming_needs_its_text() -> None:
    with pytest.raises(ValueError, match="custom_priming"):
        priming_prompt("custom")
    assert priming_prompt("custom", "Explain like a tutor.") == "Explain like a tutor."


def test_priming_is_prepended_to_the_question_and_base_adds_nothing() -> None:
    assert PRIMING_PROMPTS["base"] == ""
    assert primed_question(priming_prompt("base"), "What is 2+2?") == "What is 2+2?"
    assert primed_question(priming_prompt("teacher"), "Q").endswith("\n\nQ")
