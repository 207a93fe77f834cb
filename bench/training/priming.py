"""Teacher priming prompts (RP-KD, arXiv 2412.17846), written in our own words after the paper's intent.

The exact published wording can be supplied with `method.custom_priming` and the `custom` arm.
"""

from __future__ import annotations

from collections.abc import Sequence

PRIMING_PROMPTS: dict[str, str] = {
    "base": "",
    "teacher": ("You are a teacher guiding a student through the problem below. Work through it step by step and "
                "explain each step so that the student can learn the method."),
    "ground_truth": ("You are a highly capable model. Write a detailed, clear and correct solution to the problem "
                     "below that a smaller model can follow and learn from."),
    "confidence": ("Solve the problem below. Before you state the final answer, briefly double-check your work "
                   "and make sure you are confident in it."),
}
PRIMING_ARMS = (*PRIMING_PROMPTS, "custom")
TRAINING_ARMS = ("gt_finetune", *PRIMING_ARMS)
ARMS = ("no_train", *TRAINING_ARMS)
BASELINE_ARMS = ("no_train", "gt_finetune")


def select_arms(arms: Sequence[str], priming: str | None) -> list[str]:
    """The arms a run trains and evaluates: `arms`, or its baselines plus one priming strategy when `priming` is set.

    `priming` is the issue's `rpkd.priming=...` switch: one strategy per job, so `-m rpkd.priming=teacher,confidence`
    sweeps strategies, each job next to the same no-train and GT-finetune baselines.
    """
    if priming is None:
        return list(arms)
    if priming not in PRIMING_ARMS:
        raise ValueError(f"unknown method.priming {priming!r}; choose from {list(PRIMING_ARMS)}")
    return [arm for arm in arms if arm in BASELINE_ARMS] + [priming]


def priming_prompt(arm: str, custom: str | None = None) -> str:
    if arm == "custom":
        if not custom:
            raise ValueError("the custom arm needs method.custom_priming (the priming prompt's text)")
        return custom
    if arm not in PRIMING_PROMPTS:
        raise ValueError(f"no priming prompt for arm {arm!r}; expected one of {sorted(PRIMING_PROMPTS)} or custom")
    return PRIMING_PROMPTS[arm]


def primed_question(priming: str, question: str) -> str:
    """The priming prompt is prepended to the question, in the same user turn, as in the paper."""
    return f"{priming}\n\n{question}" if priming else question
