"""The text side of Concept Distillation: teacher prompts, parsing its rules, deduplication, prompt merging.

Kept apart from the method's control flow so each piece can be tested on plain strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher

TEACHER_SYSTEM = (
    "You are an expert tutor. A smaller model keeps failing at a task. You diagnose why it fails and write short, "
    "general rules that, added to its instructions, would prevent such failures on new problems."
)

_MISTAKE_TEMPLATE = """### Mistake {number}
Problem:
{question}

Student's answer:
{student_output}

Correct answer:
{reference}

Grader: {status} - {detail}
"""

_INDUCTION_TEMPLATE = """The student model was asked to solve problems of this kind: {task_description}
It answered the {count} problem(s) below incorrectly.

{mistakes}
First explain briefly what went wrong. Then write at most {rules} rule(s) for the student. Each rule is one \
sentence, general (no numbers, names or details specific to these problems) and actionable. Use exactly this \
format and nothing after it:
EXPLANATION: <two or three sentences>
RULES:
- <rule>
- <rule>"""

_MERGE_TEMPLATE = """Rewrite the instructions below into one concise system prompt for a small model. Keep every \
rule's meaning, remove repetition, do not add new advice. Reply with the prompt only, between the lines \
BEGIN PROMPT and END PROMPT.

{prompt}"""

TASK_DESCRIPTIONS = {
    "math": "grade-school math word problems; the final answer must be a single number.",
    "code": "completing Python functions from their signature and docstring; the code is run against unit tests.",
}


@dataclass
class Mistake:
    """Everything the teacher needs about one wrong answer."""

    task_id: str
    question: str
    student_output: str
    reference: str
    status: str
    detail: str


@dataclass
class Rule:
    rule_id: str
    text: str
    source_task_ids: list[str]
    explanation: str = ""
    validation_accuracy: float | None = None
    gain: float | None = None
    kept: bool = False
    duplicates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class MalformedReply(ValueError):
    pass


def induction_prompt(mistakes: Sequence[Mistake], kind: str, rules: int, max_chars: int = 2500) -> str:
    """The teacher's user message for a batch of mistakes (long fields are clipped to bound the prompt)."""

    def clip(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + "\n[... truncated]"

    blocks = "\n".join(
        _MISTAKE_TEMPLATE.format(number=i + 1, question=clip(m.question.strip()),
                                 student_output=clip(m.student_output.strip() or "(empty)"),
                                 reference=clip(m.reference.strip()), status=m.status, detail=clip(m.detail))
        for i, m in enumerate(mistakes))
    return _INDUCTION_TEMPLATE.format(task_description=TASK_DESCRIPTIONS[kind], count=len(mistakes),
                                      mistakes=blocks, rules=rules)


_RULES_HEADER = re.compile(r"^\s*(?:\*\*|#+\s*)?RULES?\s*:?\s*(?:\*\*)?\s*:?\s*$", re.IGNORECASE | re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$")
_EXPLANATION = re.compile(r"EXPLANATION\s*:?\s*(?:\*\*)?\s*(.+?)(?=^\s*(?:\*\*|#+\s*)?RULES?\b|\Z)",
                          re.IGNORECASE | re.DOTALL | re.MULTILINE)


def parse_teacher_reply(reply: str, max_rules: int) -> tuple[str, list[str]]:
    """(explanation, rules) from a reply in the requested format; MalformedReply when no rule can be found."""
    header = _RULES_HEADER.search(reply)
    if header is None:
        raise MalformedReply("no 'RULES:' section")
    rules = []
    for line in reply[header.end():].splitlines():
        match = _BULLET.match(line)
        if match:
            rule = match.group(1).strip().strip("*").strip()
            if 10 <= len(rule) <= 400:  # fragments and essays are not rules
                rules.append(rule)
        elif rules and line.strip() == "":
            continue
        elif rules:
            break
    if not rules:
        raise MalformedReply("'RULES:' section has no bullet rules of 10-400 characters")
    explanation = _EXPLANATION.search(reply[: header.start()] + "\n")
    return (explanation.group(1).strip() if explanation else ""), rules[:max_rules]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def deduplicate(rules: Sequence[Rule], threshold: float) -> list[Rule]:
    """Drop rules nearly identical to an earlier one (the first is kept and lists the duplicates' ids)."""
    kept: list[Rule] = []
    for rule in rules:
        original = next((k for k in kept if SequenceMatcher(None, _normalise(k.text), _normalise(rule.text)).ratio()
                         >= threshold), None)
        if original is None:
            kept.append(rule)
        else:
            original.duplicates.append(rule.rule_id)
            original.source_task_ids = sorted(set(original.source_task_ids) | set(rule.source_task_ids))
    return kept


def prompt_with_rules(base_prompt: str, rules: Sequence[str]) -> str:
    if not rules:
        return base_prompt
    listed = "\n".join(f"{i + 1}. {rule}" for i, rule in enumerate(rules))
    heading = "Follow these rules:" if not base_prompt else f"{base_prompt.rstrip()}\n\nFollow these rules:"
    return f"{heading}\n{listed}"


def merge_prompt_request(prompt: str) -> str:
    return _MERGE_TEMPLATE.format(prompt=prompt)


def parse_merged_prompt(reply: str) -> str:
    match = re.search(r"BEGIN PROMPT\s*(.+?)\s*END PROMPT", reply, re.DOTALL)
    if match is None or len(match.group(1).strip()) < 10:
        raise MalformedReply("no prompt between BEGIN PROMPT and END PROMPT")
    return match.group(1).strip()
