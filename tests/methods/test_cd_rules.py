"""CD's text handling on plain strings: teacher reply parsing, deduplication, prompt building."""

from __future__ import annotations

import pytest

from bench.methods.cd_rules import (MalformedReply, Mistake, Rule, deduplicate, induction_prompt,
                                    parse_merged_prompt, parse_teacher_reply, prompt_with_rules)

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
    prompt = induction_prompt([mistake], "math", rules=2)
    for needle in ("How many eggs?", "The answer is 3.", "The answer is 9.", "expected 9", "at most 2 rule",
                   "RULES:"):
        assert needle in prompt


def test_parse_merged_prompt() -> None:
    assert parse_merged_prompt("Sure!\nBEGIN PROMPT\nSolve carefully and check units.\nEND PROMPT") == (
        "Solve carefully and check units.")
    with pytest.raises(MalformedReply):
        parse_merged_prompt("Solve carefully.")
