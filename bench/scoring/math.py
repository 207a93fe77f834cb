"""Math answer checker: pull the final answer out of free-form model output and compare it to the reference.

Two extraction modes are reported side by side, as lm-evaluation-harness does for GSM8K, because they answer
different questions:

* ``strict``  — only an explicit answer marker counts (``#### N``, ``The answer is N``, ``\\boxed{N}``). Measures
  whether the model follows the answer format.
* ``flexible`` — an explicit marker if there is one, otherwise the last number in the text. Measures whether the
  model *reached* the right number.

Comparison is exact (``fractions.Fraction``) whenever both sides are plain numbers — integers, decimals, ``a/b``,
``\\frac{a}{b}`` — so "18.0" == "18" and "3/4" == "0.75" without floating-point fuzz. Anything else (symbolic
LaTeX) is handed to math-verify.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from bench.scoring.verdict import Status, Verdict

Mode = Literal["strict", "flexible"]
MODES: tuple[Mode, ...] = ("strict", "flexible")

# A number as people write it: optional sign, digits with proper thousands groups ("12,345" but not "1,2"),
# optional decimals, or a bare decimal (".5"). The look-behind stops "5-3" from yielding "-3" and "x2" from "2".
_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|(?<![\w.])-?\.\d+"
_FRACTION = rf"(?:{_NUMBER})\s*/\s*(?:{_NUMBER})"
_NUMBER_OR_FRACTION = re.compile(rf"{_FRACTION}|{_NUMBER}")
# Without a marker, only a tight "a/b" is read as a fraction: "so 40 / 2" at the end of cut-off working is a
# division the model has not done yet, not the answer 20 (SmolLM2 outputs contain exactly this).
_LAST_NUMBER = re.compile(rf"(?:{_NUMBER})/(?:{_NUMBER})|{_NUMBER}")

# Explicit answer markers, in the order of trust. Each captures the text that should hold the answer.
_GSM8K_MARKER = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|=|:)\s*:?\s*(?=(.{0,80}))",  # look-ahead: restated answers overlap
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\s*\{")
_LATEX_FRAC = re.compile(r"^\\d?frac\{(-?[\d.,]+)\}\{(-?[\d.,]+)\}$")
_STRIP_AROUND = " \t\n$€£%,;:!?*()[]{}\"'`"
# LaTeX spellings of currency, percent and thousands separators that models put inside \boxed{}.
_LATEX_NOISE = re.compile(r"\\[$%,!;]|\{,\}|\\(?:text|mathrm|textbf|mbox)\{([^}]*)\}")
_OPERATOR = re.compile(r"[\\^*+=]|(?<=\d)\s*-")


@dataclass(frozen=True)
class Extraction:
    """What was pulled out of a completion and how — kept so a verdict can say *why* it failed."""

    answer: str
    mode: Mode
    marker: str  # "####", "answer is", "boxed" or "last number"


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, honouring nested braces (``\\boxed{\\frac{3}{4}}``)."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:index])
                    break
    return found


def _first_number(fragment: str) -> str | None:
    """First number of the sentence after a marker; after an "=" if the model shows its working there."""
    sentence = re.split(r"\.\s|\n", fragment, maxsplit=1)[0]
    if "=" in sentence:
        sentence = sentence.rsplit("=", 1)[1]
    match = _NUMBER_OR_FRACTION.search(sentence)
    return match.group(0) if match else None


def _last_number(text: str) -> str | None:
    matches = _LAST_NUMBER.findall(text)
    return matches[-1] if matches else None


def _marked_answer(text: str) -> Extraction | None:
    """The answer behind the *last* explicit marker: models often restate, and the last statement is final."""
    candidates: list[tuple[int, Extraction]] = []
    for match in _GSM8K_MARKER.finditer(text):
        number = _first_number(match.group(1))
        if number is not None:
            candidates.append((match.start(), Extraction(number, "strict", "####")))
    for match in _ANSWER_IS.finditer(text):
        number = _first_number(match.group(1))
        if number is not None:
            candidates.append((match.start(), Extraction(number, "strict", "answer is")))
    boxed = _boxed_contents(text)
    if boxed:
        position = text.rfind("\\boxed")
        content = _LATEX_NOISE.sub(lambda m: m.group(1) or "", boxed[-1]).strip()
        numbers = _NUMBER_OR_FRACTION.findall(content)
        # "18 dollars" is the number 18; "\frac{3}{4}" or "2\sqrt{2}" stay whole for math-verify.
        plain = len(numbers) == 1 and not _OPERATOR.search(content)
        answer = numbers[0] if plain else content
        if answer:
            candidates.append((position, Extraction(answer, "strict", "boxed")))
    if not candidates:
        return None
    return max(candidates, key=lambda item: item[0])[1]


def extract_answer(text: str, mode: Mode = "flexible") -> Extraction | None:
    """Final answer of a completion in the given mode, or None when nothing answer-like is present."""
    if mode not in MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {MODES}")
    marked = _marked_answer(text)
    if marked is not None:
        return Extraction(marked.answer, mode, marked.marker)
    if mode == "strict":
        return None
    number = _last_number(text)
    return Extraction(number, "flexible", "last number") if number is not None else None


def to_fraction(answer: str) -> Fraction | None:
    """Exact value of a plain numeric answer ("1,000", "$5.50", "-3/4", "\\frac{3}{4}", "75%"), else None."""
    latex = _LATEX_FRAC.match(answer.strip().strip("$"))
    if latex:
        answer = f"{latex.group(1)}/{latex.group(2)}"
    cleaned = answer.strip().strip(_STRIP_AROUND).rstrip(".").replace(",", "").replace(" ", "")
    try:
        if "/" in cleaned:
            numerator, denominator = cleaned.split("/", 1)
            return Fraction(numerator) / Fraction(denominator)
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify_equal(prediction: str, reference: str) -> bool:
    """Symbolic equivalence via math-verify.

    math-verify's timeouts use SIGALRM, which only works on the main thread (REFERENCE.md); off the main thread
    we disable them and silence the warning it logs on every call about doing so.
    """
    from math_verify import parse, verify  # lazy: sympy import costs ~1 s and most answers never need it

    on_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if on_main else None
    logger = logging.getLogger("math_verify")
    previous = logger.level
    if not on_main:
        logger.setLevel(logging.ERROR)
    try:
        gold = parse(_as_latex(reference), parsing_timeout=timeout)
        target = parse(_as_latex(prediction), parsing_timeout=timeout)
        return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
    except Exception:  # math-verify raises assorted sympy errors on garbage; garbage is simply not equal
        return False
    finally:
        logger.setLevel(previous)


def _as_latex(answer: str) -> str:
    return answer if answer.startswith("$") else f"${answer}$"


def answers_match(prediction: str, reference: str) -> bool:
    """Exact numeric equality when both sides are numbers; symbolic equivalence otherwise."""
    predicted_value, reference_value = to_fraction(prediction), to_fraction(reference)
    if predicted_value is not None and reference_value is not None:
        return predicted_value == reference_value
    return _math_verify_equal(prediction, reference)


def gsm8k_reference(answer_field: str) -> str:
    """The final answer of a GSM8K ``answer`` field (worked solution ending in ``#### N``)."""
    marker = answer_field.rfind("####")
    if marker < 0:
        raise ValueError(f"GSM8K answer has no '####' final-answer line: {answer_field[-80:]!r}")
    return answer_field[marker + 4 :].strip().replace(",", "")


class MathChecker:
    """Scores math completions against a reference answer; one instance per extraction mode."""

    def __init__(self, mode: Mode = "flexible") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown extraction mode {mode!r}; expected one of {MODES}")
        self.mode: Mode = mode

    def score(self, completion: str, reference: str) -> Verdict:
        return self._score(completion, reference, self.mode)

    def score_modes(self, completion: str, reference: str) -> dict[str, Verdict]:
        """Verdicts in every mode, so runs report strict and flexible accuracy from one generation."""
        return {mode: self._score(completion, reference, mode) for mode in MODES}

    @staticmethod
    def _score(completion: str, reference: str, mode: Mode) -> Verdict:
        extraction = extract_answer(completion, mode)
        if extraction is None:
            return Verdict(Status.NO_ANSWER, f"no answer found ({mode}), expected {reference}")
        detail = f"extracted {extraction.answer} via {extraction.marker} ({mode}), expected {reference}"
        status = Status.PASSED if answers_match(extraction.answer, reference) else Status.FAILED
        return Verdict(status, detail)
