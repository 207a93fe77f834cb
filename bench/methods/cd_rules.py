"""The text side of Concept Distillation: teacher prompts, parsing its rules, deduplication, prompt merging,
and the acceptance test a candidate rule must pass on the validation items.

Kept apart from the method's control flow so each piece can be tested on plain strings and hand-made outcomes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher

from bench.config import Acceptance
from bench.scoring.metrics import mcnemar_exact

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
    gain: float | None = None  # validation accuracy minus that of the prompt it was tested against
    wins: int | None = None  # validation items right with the rule, wrong without it (discordant pairs)
    losses: int | None = None  # validation items wrong with the rule, right without it
    p_value: float | None = None  # one-sided exact McNemar p of wins vs losses (see `judge`)
    accepted: bool | None = None  # passed the acceptance test (None: never tested, e.g. max_rules reached)
    decision: str = ""  # why it was accepted, rejected or not tested
    kept: bool = False  # in the final prompt (accepted, and within max_rules)
    duplicates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class MalformedReply(ValueError):
    pass


def induction_prompt(mistakes: Sequence[Mistake], task_description: str, rules: int, max_chars: int = 2500) -> str:
    """The teacher's user message for a batch of mistakes (long fields are clipped to bound the prompt);
    `task_description` is the task's own (`Task.description`)."""

    def clip(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + "\n[... truncated]"

    blocks = "\n".join(
        _MISTAKE_TEMPLATE.format(number=i + 1, question=clip(m.question.strip()),
                                 student_output=clip(m.student_output.strip() or "(empty)"),
                                 reference=clip(m.reference.strip()), status=m.status, detail=clip(m.detail))
        for i, m in enumerate(mistakes))
    return _INDUCTION_TEMPLATE.format(task_description=task_description, count=len(mistakes),
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


# ---------------------------------------------------------------------------------------------- acceptance
ACCEPTANCES = tuple(a.value for a in Acceptance)


@dataclass(frozen=True)
class Acceptance:
    """The validation evidence on one candidate rule and the decision taken on it."""

    gain: float
    wins: int
    losses: int
    p_value: float
    accepted: bool
    decision: str


def improvement_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value: P(at least `wins` of the wins + losses discordant items go to the
    candidate) when the rule makes no difference, i.e. X ~ Binomial(wins + losses, 1/2).

    Derived from `mcnemar_exact` (two-sided, = min(1, 2 P(X <= min))) by the symmetry of Binomial(n, 1/2):
    with wins > losses, P(X >= wins) = P(X <= losses), half the two-sided value (never clipped, since losses <
    n/2); otherwise P(X >= wins) = 1 - P(X <= wins - 1), where wins - 1 < n/2 again makes the halving exact.
    """
    if wins > losses:
        return mcnemar_exact(wins, losses) / 2
    if wins == 0:
        return 1.0
    n = wins + losses
    return 1.0 - mcnemar_exact(wins - 1, n - wins + 1) / 2


def judge(current: Sequence[bool], candidate: Sequence[bool], gain: float, mode: str, *, min_gain: float = 0.0,
          p_threshold: float = 0.05, min_items: int = 3) -> Acceptance:
    """Whether a candidate prompt beats the current one on the same validation items, in the order given.

    `current` / `candidate` are per-item verdicts (the first completion's pass/fail); `gain` is the accuracy
    difference the caller measured. Modes:

    - "gain": gain > min_gain (the original rule: on 60 items one extra right answer admits a rule, and a rule
      kept that way won 1 MultiArith validation item and then lost 3 test items).
    - "mcnemar" (default): gain > 0 and the one-sided exact McNemar p on the discordant items < p_threshold.
      One-sided because the decision is one-directional: a rule is only ever kept for helping, and one that
      significantly hurts is rejected by the gain condition anyway, so a two-sided test would spend half its
      alpha on an outcome that can never lead to acceptance (two-sided 0.05 = one-sided 0.025). At the default
      0.05 a rule needs at least 5 wins and no loss (p = 1/32), 7 wins against 1 loss or 9 against 2; 4-0 or
      8-2 are not enough. Each candidate is tested on its own, with no correction for the number of candidates:
      with k useless candidates up to ~0.05 k may get through, which the untouched test split then shows; set
      acceptance_p to 0.05 / k for a Bonferroni bound.
    - "min_items": wins - losses >= min_items, a fixed margin in items rather than a p-value.
    """
    if len(current) != len(candidate) or not current:
        raise ValueError(f"acceptance needs two equally long, non-empty outcome lists; got {len(current)} and "
                         f"{len(candidate)}")
    wins = sum(bool(new) and not bool(old) for old, new in zip(current, candidate))
    losses = sum(bool(old) and not bool(new) for old, new in zip(current, candidate))
    p_value = improvement_p(wins, losses)
    evidence = f"gain {gain:+.4f}, {wins} won / {losses} lost, one-sided McNemar p={p_value:.4g}"
    if mode == "gain":
        accepted, test = gain > min_gain, f"gain > {min_gain}"
    elif mode == "mcnemar":
        accepted, test = gain > 0 and p_value < p_threshold, f"gain > 0 and p < {p_threshold}"
    elif mode == "min_items":
        accepted, test = wins - losses >= min_items, f"wins - losses >= {min_items}"
    else:
        raise ValueError(f"acceptance must be one of {ACCEPTANCES}, got {mode!r}")
    decision = f"{'accepted' if accepted else 'rejected'} ({mode}: {test}): {evidence}"
    return Acceptance(gain=gain, wins=wins, losses=losses, p_value=p_value, accepted=accepted, decision=decision)
