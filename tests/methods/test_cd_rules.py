"""CD's text handling on plain strings (teacher reply parsing, deduplication, prompt building) and its rule
acceptance test on hand-made validation outcomes."""

from __future__ import annotations

import math

import pytest

from bench.methods.cd_rules import (MalformedReply, Mistake, Rule, deduplicate, improvement_p, induction_prompt,
                                    judge, parse_merged_prompt, parse_teacher_reply, prompt_with_rules)

WELL_FORMED = """EXPLANATION: The student added instead of multiplying and lost track of units.
RULES:
- Identify which quantities must be multiplied before adding anything.
- Check that the final answer's unit matches what the question asks for.
"""


def test_parse_well_formed_reply() -> None:
    explanation, rules = parse_teacher_reply(WELL_FORMED, max_rules=5)
    assert explanation.startswith("The student added")
    assert rules == ["Identify which quantities must be multiplied before adding anything.",
                     "Check that the final answer's unit matches what the question asks for."]


@pytest.mark.parametrize("reply", [
    "**Explanation:** wrong op.\n\n**Rules:**\n1. Always re-read the question before answering.\n2) Write each step.",
    "EXPLANATION: x\n## RULES\n* Always re-read the question before answering.\n\n* Write each step clearly.",
])
def test_parse_tolerates_markdown_variants(reply: str) -> None:
    _, rules = parse_teacher_reply(reply, max_rules=5)
    assert rules[0] == "Always re-read the question before answering."
    assert len(rules) == 2


def test_parse_caps_rules_and_stops_at_trailing_prose() -> None:
    reply = "RULES:\n" + "\n".join(f"- Rule number {i} is a general rule." for i in range(6)) + "\nThanks!\n- stray"
    _, rules = parse_teacher_reply(reply, max_rules=3)
    assert len(rules) == 3


@pytest.mark.parametrize("reply", ["I think the student is wrong.", "RULES:\nnone", "RULES:\n- short", ""])
def test_malformed_replies_raise(reply: str) -> None:
    with pytest.raises(MalformedReply):
        parse_teacher_reply(reply, max_rules=3)


def test_deduplicate_merges_near_identical_rules() -> None:
    rules = [Rule("a", "Always check the units of the final answer.", ["t1"]),
             Rule("b", "always check the units of the final answer!", ["t2"]),
             Rule("c", "Write the function signature exactly as given.", ["t3"])]
    unique = deduplicate(rules, threshold=0.85)
    assert [r.rule_id for r in unique] == ["a", "c"]
    assert unique[0].duplicates == ["b"] and unique[0].source_task_ids == ["t1", "t2"]


def test_prompt_with_rules() -> None:
    assert prompt_with_rules("", []) == ""
    assert prompt_with_rules("Base.", []) == "Base."
    assert prompt_with_rules("Base.", ["One.", "Two."]) == "Base.\n\nFollow these rules:\n1. One.\n2. Two."
    assert prompt_with_rules("", ["One."]) == "Follow these rules:\n1. One."


def test_induction_prompt_carries_everything_the_teacher_needs() -> None:
    mistake = Mistake("gsm8k/train/1", "How many eggs?", "The answer is 3.", "... The answer is 9.", "failed",
                      "extracted 3 via answer is (flexible), expected 9")
    prompt = induction_prompt([mistake], "grade-school math word problems.", rules=2)
    for needle in ("grade-school math word problems.", "How many eggs?", "The answer is 3.", "The answer is 9.",
                   "expected 9", "at most 2 rule", "RULES:"):
        assert needle in prompt


def test_parse_merged_prompt() -> None:
    assert parse_merged_prompt("Sure!\nBEGIN PROMPT\nSolve carefully and check units.\nEND PROMPT") == (
        "Solve carefully and check units.")
    with pytest.raises(MalformedReply):
        parse_merged_prompt("Solve carefully.")


# ------------------------------------------------------------------ acceptance on hand-made validation outcomes
def outcomes(wins: int, losses: int, both_right: int = 20, both_wrong: int = 30) -> tuple[list[bool], list[bool]]:
    """(current, candidate) per-item verdicts on 60-odd validation items with the given discordant counts."""
    current = [False] * wins + [True] * losses + [True] * both_right + [False] * both_wrong
    candidate = [True] * wins + [False] * losses + [True] * both_right + [False] * both_wrong
    return current, candidate


def gain_of(current: list[bool], candidate: list[bool]) -> float:
    return (sum(candidate) - sum(current)) / len(current)


def test_one_lucky_item_does_not_admit_a_rule_under_mcnemar() -> None:
    current, candidate = outcomes(wins=1, losses=0)
    verdict = judge(current, candidate, gain_of(current, candidate), "mcnemar")
    assert (verdict.wins, verdict.losses, verdict.p_value) == (1, 0, 0.5)
    assert not verdict.accepted and verdict.decision.startswith("rejected (mcnemar")


def test_a_rule_winning_eight_items_and_losing_none_is_accepted_under_mcnemar() -> None:
    current, candidate = outcomes(wins=8, losses=0)
    verdict = judge(current, candidate, gain_of(current, candidate), "mcnemar")
    assert (verdict.wins, verdict.losses) == (8, 0) and verdict.p_value == pytest.approx(1 / 256)
    assert verdict.accepted and verdict.decision.startswith("accepted")


@pytest.mark.parametrize(("wins", "losses", "accepted"), [(5, 0, True), (4, 0, False), (7, 1, True),
                                                          (6, 1, False), (9, 2, True), (8, 2, False),
                                                          (0, 8, False)])
def test_mcnemar_threshold_is_one_sided_at_five_percent(wins: int, losses: int, accepted: bool) -> None:
    current, candidate = outcomes(wins, losses)
    assert judge(current, candidate, gain_of(current, candidate), "mcnemar").accepted is accepted


def test_gain_mode_keeps_the_original_behaviour() -> None:
    current, candidate = outcomes(wins=1, losses=0)
    verdict = judge(current, candidate, gain_of(current, candidate), "gain")
    assert verdict.accepted and (verdict.wins, verdict.losses) == (1, 0)  # evidence is recorded all the same
    assert not judge(*outcomes(2, 2), 0.0, "gain").accepted  # gain must exceed min_gain (0), not equal it
    assert judge(*outcomes(2, 2), 0.0, "gain", min_gain=-1.0).accepted


def test_min_items_mode_counts_net_items_won() -> None:
    assert judge(*outcomes(4, 1), 3 / 55, "min_items", min_items=3).accepted
    assert not judge(*outcomes(4, 2), 2 / 56, "min_items", min_items=3).accepted


def test_judge_refuses_unpaired_outcomes_and_unknown_modes() -> None:
    with pytest.raises(ValueError, match="equally long"):
        judge([True], [True, False], 0.0, "mcnemar")
    with pytest.raises(ValueError, match="acceptance must be one of"):
        judge([True], [True], 0.0, "bayes")


def test_improvement_p_is_the_exact_one_sided_binomial_tail() -> None:
    for n in range(12):
        for wins in range(n + 1):
            tail = sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n if n else 1.0
            assert improvement_p(wins, n - wins) == pytest.approx(tail, abs=1e-12)
