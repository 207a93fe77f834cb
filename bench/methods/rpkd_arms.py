"""RP-KD's arms: the method's vocabulary, beside the method (as CD's rules live in cd_rules.py).

The training layer knows nothing of arms: it trains whatever LoRA config it is given. Which arms exist, which are
baselines, which need a primed teacher, and which arms a run selects are questions about the method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.training.priming import PUBLISHED_PRIMING

PRIMING_ARMS = (*PUBLISHED_PRIMING, "custom")
TRAINING_ARMS = ("gt_finetune", *PRIMING_ARMS)
ARMS = ("no_train", *TRAINING_ARMS)
BASELINE_ARMS = ("no_train", "gt_finetune")


def select_arms(arms: Sequence[str], priming: str | None) -> list[str]:
    """The arms a run trains and evaluates: `arms`, or its baselines plus one priming strategy when `priming` is set.

    `priming` is the issue's `rpkd.priming=...` switch: one strategy per job, so `-m rpkd.priming=teacher,confidence`
    sweeps strategies, each job next to the same no-train and GT-finetune baselines.
    """
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown method.arms {unknown or '[]'}; choose from {list(ARMS)}")
    if priming is None:
        return list(arms)
    if priming not in PRIMING_ARMS:
        raise ValueError(f"unknown method.priming {priming!r}; choose from {list(PRIMING_ARMS)}")
    return [arm for arm in arms if arm in BASELINE_ARMS] + [priming]


def check_dropout_arms(dropout_by_arm: Mapping[str, float]) -> None:
    """`method.lora_dropout_by_arm` may only name arms that exist (checked before any work, not at training)."""
    unknown = sorted(set(dropout_by_arm) - set(ARMS))
    if unknown:
        raise ValueError(f"method.lora_dropout_by_arm names unknown arms {unknown}; choose from {list(ARMS)}")
