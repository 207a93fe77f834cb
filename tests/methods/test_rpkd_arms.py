"""RP-KD's arms: which a run selects (`method.arms`, or baselines plus one `method.priming`), and the names the
dropout overrides may use."""

from __future__ import annotations

import pytest

from bench.methods.rpkd_arms import check_dropout_arms, select_arms


def test_arms_are_used_as_given_without_priming() -> None:
    assert select_arms(["no_train", "gt_finetune", "teacher"], None) == ["no_train", "gt_finetune", "teacher"]


def test_priming_replaces_the_priming_arms_and_keeps_the_baselines() -> None:
    assert select_arms(["no_train", "gt_finetune", "ground_truth", "teacher"], "confidence") == \
        ["no_train", "gt_finetune", "confidence"]
    assert select_arms(["ground_truth"], "base") == ["base"]


def test_unknown_priming_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="confidence"):
        select_arms(["no_train"], "confident")


def test_unknown_arms_are_named() -> None:
    with pytest.raises(ValueError, match="unknown method.arms \\['teachr'\\]"):
        select_arms(["no_train", "teachr"], None)
    with pytest.raises(ValueError, match="unknown method.arms \\[\\]"):
        select_arms([], None)


# Defect: a misspelt arm in method.lora_dropout_by_arm was found only when that arm's training began.
def test_dropout_overrides_must_name_real_arms() -> None:
    check_dropout_arms({"base": 0.2, "teacher": 0.1})
    with pytest.raises(ValueError, match="unknown arms \\['bsae'\\]"):
        check_dropout_arms({"bsae": 0.2})
