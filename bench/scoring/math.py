"""Math answer checker: pull the final answer out of free-form model output and compare it to the reference.

Two extraction modes are reported side by side, as lm-evaluation-harness does for GSM8K, because they answer
different questions:

* ``strict``  — only an explicit final-answer marker counts: ``#### N``, ``The answer is N``, ``Answer: N``,
  ``**Final Answer**: N`` (or a "Final Answer" heading with the value under it), ``Answer \\[N\\]``,
  ``\\boxed{N}``. Measures whether the model follows the answer format.
* ``flexible`` — an explicit marker if there is one, otherwise the last number in the text. Measures whether the
  model *reached* the right number.

Before extraction the text is normalised the way a reader would read it: the Unicode minus is a minus, ``-$12``
is -12, LaTeX thousands separators (``14{,}916``, ``1,\\!250``, ``2\\,500``) are thousands separators, and a
numeric ``\\frac{3}{4}`` / ``\\dfrac{3}{4}`` / ``3\\frac{1}{2}`` is the fraction it denotes, wherever it stands.
After a marker, "1 250" is one number; without one, space-separated numbers are never glued together. A GSM8K
marker is ``####`` followed by a number — markdown headers such as ``#### Step 1:`` are not one. After
"Answer:", a one-sentence statement counts ("**Answer:** Janet makes $18 per day."), a paragraph of working does
not. Text after a question the model invents once it has answered ("\\n\\nQuestion: ...", "\\nQ: ...", as small
models continuing a few-shot prompt do) is not read.

Comparison is exact (``fractions.Fraction``) whenever both sides are plain numbers — integers, decimals, ``a/b``
— so "18.0" == "18" and "3/4" == "0.75" without floating-point fuzz; a comma that is not a thousands group
("1,2") makes a list, not a number. A LaTeX answer that is not plain (``120 \\text{ ft}^2``) is
normalised to a number by math-verify's parser when it denotes one; anything else (``2\\sqrt{2}``, a set ``1,2``)
is compared symbolically by math-verify. math-verify runs only for such non-plain answers, which keeps the
checker at tens of thousands of answers per second on GSM8K-style output.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from bench.scoring.verdict import Status, Verdict
from bench.scoring.scorer import Assessment, ExampleScorer, check_lengths

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
# After a marker the answer may also be grouped by spaces ("The answer is 1 250."): the marker says one number
# follows, so "1 250" is 1250 there. A group is exactly three digits, so "5 25" stays the number 5.
_SPACED = r"(?<![\w.])-?\d{1,3}(?: \d{3})+(?![\d,])(?:\.\d+)?(?!\d)"
_MARKED_NUMBER = rf"{_SPACED}|{_NUMBER}"
_MARKED_NUMBER_OR_FRACTION = re.compile(rf"(?:{_MARKED_NUMBER})\s*/\s*(?:{_MARKED_NUMBER})|{_MARKED_NUMBER}")
_PLAIN = re.compile(rf"(?:{_MARKED_NUMBER})(?:\s*/\s*(?:{_MARKED_NUMBER}))?")
# to_fraction: a comma or a space inside a number must form proper thousands groups, else it is a list ("1,2").
_GROUPED = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")

# Explicit answer markers. Each is followed by the text that should hold the answer.
# GSM8K: "####" then a number; "#### Step 1:" is a markdown header, not the marker (it needs a digit first).
_GSM8K_MARKER = re.compile(r"(?<!#)####(?!#)[ \t]*(?=\**\\?\$?-?\.?\d)")
# "answer is / answer: / answer =", with optional bold in between ("**Final Answer**: 7", "**Answer:** 7"); with no
# verb it counts only as a heading or before display math (checked in _answer_candidates).
_ANSWER_WORD = re.compile(r"(final\s+)?answer\b[*_]*[ \t]*(is\b|=|:)?", re.IGNORECASE)
_HEADING_TAIL = re.compile(r"[*_: \t]*\n")
_HEADING_LEAD = re.compile(r"[#*_> \t]*")
_VALUE_START = re.compile(r"-?\\?\$?-?\.?\d|\\[\[(]|\$|\\boxed|\\d?frac")
_DISPLAY_START = re.compile(r"\\[\[(]|\$\$|\\boxed")
_MARKER_WINDOW = 160  # characters after a marker that may hold the answer
_STATEMENT_WINDOW = 400  # ... and that may hold a prose statement of it ("Answer: Janet makes $18 per day.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A line where the model starts a question of its own ("\n\nQuestion: A robe takes ..."): what follows answers
# that invented question, not ours (lm-evaluation-harness stops generation at "Question:" for the same reason).
_NEXT_QUESTION = re.compile(r"\n[ \t]*(?:Question|Q)[ \t]*:")
_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_STRIP_AROUND = " \t\n$€£%,;:!?*()[]{}\"'`"
_FRAGMENT_LEAD = " \t\r\n*_:#"
# LaTeX spellings of currency, percent, spacing and units that models put inside \boxed{}.
_LATEX_NOISE = re.compile(r"\\[$%,!;]|\\(?:text|mathrm|textbf|mbox)\{([^}]*)\}")
_OPERATOR = re.compile(r"[\\^*+=]|(?<=\d)\s*-")

# Text normalisation (see the module docstring). Each step runs only when its trigger character is present.
_UNICODE = str.maketrans({"\u2212": "-", "\u00a0": " ", "\u2009": " ", "\u202f": " "})
_NUM = r"-?\d+(?:\.\d+)?"
# "\frac{3}{4}", "\dfrac{3}{4}", "\frac34"; with a whole part before it, a mixed number ("3\frac{1}{2}" = 7/2).
_LATEX_FRAC = re.compile(
    rf"(?:(?<![\w.,^])(\d+)[ \t]*)?\\[dt]?frac(?:\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}|(\d)(\d))"
)
_LATEX_THOUSANDS = re.compile(r"\{,\}|,\\!|(?<=\d)\\,(?=\d{3}(?!\d))")
# "-$12", "-\$12" -> "-12"; not "$20-$8" (a subtraction) nor a markdown bullet "- $8 for lunch".
_NEGATIVE_CURRENCY = re.compile(r"(?<![\w.)\]}])-\\?\$(?=\.?\d)")


@dataclass(frozen=True)
class Extraction:
    """What was pulled out of a completion and how — kept so a verdict can say *why* it failed."""

    answer: str
    mode: Mode
    marker: str  # "####", "answer is", "boxed" or "last number"


def _frac_to_plain(match: re.Match[str]) -> str:
    whole, numerator, denominator = match.group(1), match.group(2) or match.group(4), match.group(3) or match.group(5)
    value = Fraction(numerator) / Fraction(denominator) if Fraction(denominator) else None
    if value is None:
        return match.group(0)
    if whole is not None:
        return str(value + int(whole))
    start = match.start()
    glued = start > 0 and match.string[start - 1].isalnum()  # "x^2\frac{1}{2}" must not become "x^21/2"
    return f" {value}" if glued else str(value)


def _normalise(text: str) -> str:
    """The text with the spellings above rewritten to plain numbers; a no-op (no copy) on plain ASCII text."""
    if not text.isascii():
        text = text.translate(_UNICODE)
    if "\\" in text or "{" in text:
        text = _LATEX_THOUSANDS.sub(",", text)
        if "frac" in text:
            text = _LATEX_FRAC.sub(_frac_to_plain, text)
    if "-" in text and "$" in text:
        text = _NEGATIVE_CURRENCY.sub("-", text)
    return text


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """(position, contents) of every closed ``\\boxed{...}``, honouring nested braces (``\\boxed{\\sqrt{2}}``).

    One pass over the braces (not one per box), so a degenerate run of unclosed boxes stays linear.
    """
    openers = {match.end() - 1: match.start() for match in _BOXED.finditer(text)}  # "{" index -> "\\boxed" index
    if not openers:
        return []
    found, stack = [], []
    for brace in _BRACE.finditer(text, min(openers)):
        index = brace.start()
        if brace.group() == "{":
            stack.append(index)
        elif stack:
            opened = stack.pop()
            if opened in openers:
                found.append((openers[opened], text[opened + 1 : index]))
    return sorted(found)


def _boxed_contents(text: str) -> list[str]:
    return [contents for _, contents in _boxed_spans(text)]


def _plain_number(fragment: str) -> str:
    """A matched number or fraction without the spaces of its grouping: "1 250" -> "1250", "3 / 4" -> "3/4"."""
    return fragment.replace(" ", "") if " " in fragment else fragment


def _sentence_number(fragment: str) -> str | None:
    """First number of the sentence after a marker; after an "=" if the model shows its working there."""
    sentence = re.split(r"\.\s|\n", fragment, maxsplit=1)[0]
    if "=" in sentence:
        sentence = sentence.rsplit("=", 1)[1]
    match = _MARKED_NUMBER_OR_FRACTION.search(sentence)
    return _plain_number(match.group(0)) if match else None


def _math_span(fragment: str) -> str | None:
    """Contents of the math the fragment opens with (``$...$``, ``\\[...\\]``, ``\\(...\\)``, ``\\boxed{...}``)."""
    if fragment.startswith("\\boxed"):
        boxed = _boxed_contents(fragment)
        return boxed[0] if boxed else None
    for opening, closing in _MATH_DELIMITERS:
        if fragment.startswith(opening):
            end = fragment.find(closing, len(opening))
            return fragment[len(opening) : end] if end > 0 else None
    return None


def _marked_value(fragment: str) -> str | None:
    """The answer a marker introduces: the math span it opens with, else the first number of its sentence."""
    span = _math_span(fragment)
    if span is not None:
        span = span.replace("\n", " ").strip()
        if "\\" in span:
            value = _latex_value(span)
            if value is not None:
                return value
        elif span:
            value = _sentence_number(span)
            if value is not None:
                return value
    return _sentence_number(fragment)


def _latex_value(content: str) -> str | None:
    """A LaTeX answer (a ``\\boxed`` body or a math span) as a plain number when it is one, else as it is.

    Cheap paths first — a plain number once LaTeX currency/percent/spacing is dropped, or one number with only
    words around it ("18 \\text{ dollars}") — then math-verify's parser, which knows units, ``\\frac34`` and the
    like. What math-verify cannot make a number (``2\\sqrt{2}``, a tuple) is returned whole for symbolic
    comparison.
    """
    if "\\boxed" in content:  # a span holding a box: "The final answer is $\boxed{9}$"
        boxed = _boxed_contents(content)
        content = boxed[-1] if boxed else ""
    if "=" in content and "," not in content:
        content = content.rsplit("=", 1)[1]  # "x = 5", "3 + 4 = 7": the value after the last "="
    content = content.strip()
    if not content:
        return None
    cleaned = _LATEX_NOISE.sub(lambda m: m.group(1) or "", content).strip().strip(_STRIP_AROUND)
    if _PLAIN.fullmatch(cleaned):
        return _plain_number(cleaned)
    numbers = _NUMBER_OR_FRACTION.findall(cleaned)
    if len(numbers) == 1 and not _OPERATOR.search(cleaned):  # "18 dollars"
        return _plain_number(numbers[0])
    return _math_verify_number(content) or content


def _statement_value(fragment: str) -> str | None:
    """The answer in a one-sentence statement after "Answer:" ("**Answer:** Each of the 4 friends gets 3
    cookies."): its last number, after an "=" if it shows working; the sentence states its result last.

    A paragraph of more than one sentence or line is working written after an echoed "Answer:" prompt ("Answer:
    Janet's ducks lay 16 eggs per day. She eats 3 ..."), not a statement of the answer: no value, so strict mode
    does not guess and flexible mode falls back to the last number.
    """
    paragraph = fragment.split("\n\n", 1)[0].strip()
    sentences = [part for part in _SENTENCE_END.split(paragraph) if part]
    if "\n" in paragraph or len(sentences) != 1:
        return None
    sentence = sentences[0].rsplit("=", 1)[-1]
    numbers = _LAST_NUMBER.findall(sentence)
    return numbers[-1] if numbers else None


def _answer_candidates(text: str) -> Iterator[tuple[int, str]]:
    """(position, answer) for every "answer is"-style marker that is followed by an answer.

    "answer is / =" takes the first number of its sentence ("The answer is 18. Check: 18 / 2 = 9"). "Answer:" and
    a "Final Answer" heading take the value they open with, or else a one-sentence statement of it (see
    _statement_value). Without a verb, "final answer" counts only right before a value ("**Final Answer**" then
    "7" on the next line) and "answer" only as a heading or before display math ("Answer \\[9\\]"), so "to get
    the final answer, add 3 and 4" is no marker.
    """
    if "nswer" not in text and "NSWER" not in text:
        return
    for match in _ANSWER_WORD.finditer(text):
        final, verb = match.group(1) is not None, match.group(2)
        window = text[match.end() : match.end() + _STATEMENT_WINDOW].lstrip(_FRAGMENT_LEAD)
        if verb is not None and verb != ":":  # "is", "="
            value = _marked_value(window[:_MARKER_WINDOW])
        else:
            line_start = text.rfind("\n", 0, match.start()) + 1
            heading = _HEADING_TAIL.match(text, match.end()) is not None and (
                final or _HEADING_LEAD.fullmatch(text, line_start, match.start()) is not None
            )
            if _VALUE_START.match(window) and (verb or heading or final or _DISPLAY_START.match(window)):
                value = _marked_value(window[:_MARKER_WINDOW])
            elif verb or heading:
                value = _statement_value(window)
            else:
                continue
        if value is not None:
            yield match.start(), value


def _marked_answer(text: str) -> Extraction | None:
    """The answer behind the *last* explicit marker: models often restate, and the last statement is final."""
    candidates: list[tuple[int, Extraction]] = []
    if "####" in text:
        for match in _GSM8K_MARKER.finditer(text):
            number = _marked_value(text[match.end() : match.end() + _MARKER_WINDOW].lstrip(_FRAGMENT_LEAD))
            if number is not None:
                candidates.append((match.start(), Extraction(number, "strict", "####")))
    for position, value in _answer_candidates(text):
        candidates.append((position, Extraction(value, "strict", "answer is")))
    if "\\boxed" in text:
        boxed = _boxed_spans(text)  # the last closed box; one cut off before its "}" holds no answer
        if boxed:
            position, contents = boxed[-1]
            answer = _latex_value(contents)
            if answer:
                candidates.append((position, Extraction(answer, "strict", "boxed")))
    if not candidates:
        return None
    return max(candidates, key=lambda item: item[0])[1]


def _last_number(text: str) -> str | None:
    matches = _LAST_NUMBER.findall(text)
    return matches[-1] if matches else None


def _extractions(text: str) -> dict[Mode, Extraction | None]:
    """The extraction in every mode from one pass over the text (the marker search is shared)."""
    text = _normalise(text)
    if "Q" in text:
        invented = _NEXT_QUESTION.search(text)
        if invented is not None and any(character.isdigit() for character in text[: invented.start()]):
            text = text[: invented.start()]  # the model answered, then made up a question and answered that
    marked = _marked_answer(text)
    if marked is not None:
        return {mode: Extraction(marked.answer, mode, marked.marker) for mode in MODES}
    number = _last_number(text)
    return {"strict": None, "flexible": Extraction(number, "flexible", "last number") if number is not None else None}


def extract_answer(text: str, mode: Mode = "flexible") -> Extraction | None:
    """Final answer of a completion in the given mode, or None when nothing answer-like is present."""
    if mode not in MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {MODES}")
    return _extractions(text)[mode]


def to_fraction(answer: str) -> Fraction | None:
    """Exact value of a plain numeric answer ("1,000", "$5.50", "-3/4", "\\frac{3}{4}", "75%"), else None.

    A comma or space inside a number must make proper thousands groups: "1,2" is a list, not twelve.
    """
    if answer.isascii() and answer.isdigit():  # the common case, a GSM8K reference: skip the string parsing of Fraction
        return Fraction(int(answer))
    cleaned = _normalise(answer.strip()).strip().strip(_STRIP_AROUND).rstrip(".")
    if "/" in cleaned:
        cleaned = re.sub(r"\s*/\s*", "/", cleaned)
    parts = cleaned.split("/")
    if len(parts) > 2:
        return None
    values = []
    for part in parts:
        if "," in part or " " in part:
            if not _GROUPED.fullmatch(part):
                return None
            part = part.replace(",", "").replace(" ", "")
        try:
            values.append(Fraction(part))
        except ValueError:
            return None
    if len(values) == 2:
        return values[0] / values[1] if values[1] else None
    return values[0]


@contextmanager
def _math_verify_guard() -> Iterator[int | None]:
    """The timeout to give math-verify, and quiet logs where it cannot have one.

    math-verify's timeouts use SIGALRM, which only works on the main thread (REFERENCE.md); off the main thread
    we disable them and silence the warning it logs on every call about doing so.
    """
    on_main = threading.current_thread() is threading.main_thread()
    logger = logging.getLogger("math_verify")
    previous = logger.level
    if not on_main:
        logger.setLevel(logging.ERROR)
    try:
        yield 5 if on_main else None
    finally:
        logger.setLevel(previous)


def _math_verify_parse(answer: str, timeout: int | None) -> list[Any]:
    # Lazy: the sympy import costs ~1 s and most answers never need it.
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(), ExprExtractionConfig()]  # LaTeX first, then plain expressions ("sqrt(8)")
    return parse(_as_latex(answer), extraction_config=config, parsing_timeout=timeout)


def _math_verify_number(latex: str) -> str | None:
    """The number a LaTeX fragment denotes per math-verify's parser ("120 \\text{ ft}^2" -> "120"), else None."""
    with _math_verify_guard() as timeout:
        try:
            parsed = _math_verify_parse(latex, timeout)
        except Exception:  # math-verify raises assorted sympy errors on garbage; garbage is no number
            return None
    value = parsed[0] if parsed else None
    if not getattr(value, "is_Number", False) or not value.is_finite:
        return None
    if value.is_Rational:
        return str(Fraction(int(value.p), int(value.q)))
    decimal = str(value)  # a sympy Float, printed to its 15 significant digits: "2.50000000000000"
    return decimal.rstrip("0").rstrip(".") if "." in decimal and "e" not in decimal else decimal


def _math_verify_equal(prediction: str, reference: str) -> bool:
    """Symbolic equivalence via math-verify (timeouts only on the main thread, see _math_verify_guard)."""
    from math_verify import verify

    with _math_verify_guard() as timeout:
        try:
            gold = _math_verify_parse(reference, timeout)
            target = _math_verify_parse(prediction, timeout)
            return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
        except Exception:  # math-verify raises assorted sympy errors on garbage; garbage is simply not equal
            return False


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
        return self._verdict(extract_answer(completion, self.mode), reference, self.mode, {})

    def score_modes(self, completion: str, reference: str) -> dict[str, Verdict]:
        """Verdicts in every mode, so runs report strict and flexible accuracy from one generation."""
        return self._mode_verdicts(_extractions(completion), reference)

    def assess(self, completion: str, reference: str) -> Assessment:
        """The verdict in this checker's mode, the outcome in every mode and the answer extracted in each, all from
        one extraction of the completion."""
        extractions = _extractions(completion)
        verdicts = self._mode_verdicts(extractions, reference)
        return Assessment(verdicts[self.mode], {mode: verdict.status.value for mode, verdict in verdicts.items()},
                          {mode: getattr(extractions[mode], "answer", None) for mode in MODES})

    def _mode_verdicts(self, extractions: dict[Mode, Extraction | None], reference: str) -> dict[str, Verdict]:
        matched: dict[str, bool] = {}  # both modes usually extract the same answer: compare it once
        return {mode: self._verdict(extractions[mode], reference, mode, matched) for mode in MODES}

    @staticmethod
    def _verdict(extraction: Extraction | None, reference: str, mode: Mode, matched: dict[str, bool]) -> Verdict:
        if extraction is None:
            return Verdict(Status.NO_ANSWER, f"no answer found ({mode}), expected {reference}")
        detail = f"extracted {extraction.answer} via {extraction.marker} ({mode}), expected {reference}"
        if extraction.answer not in matched:
            matched[extraction.answer] = answers_match(extraction.answer, reference)
        return Verdict(Status.PASSED if matched[extraction.answer] else Status.FAILED, detail)


class MathScorer(ExampleScorer):
    """`MathChecker` behind the `Scorer` interface: a completion is judged against `example.answer`."""

    def __init__(self, checker: MathChecker) -> None:
        self.checker = checker

    def score(self, example: Any, completion: str) -> Verdict:
        return self.checker.score(completion, example.answer)

    def assess(self, example: Any, completion: str) -> Assessment:
        return self.checker.assess(completion, example.answer)

    def assess_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                    ) -> list[Assessment]:
        check_lengths(examples, completions)
        return [self.assess(example, completion) for example, completion in zip(examples, completions)]

    def details(self, example: Any, completion: str) -> dict[str, str]:
        return self.assess(example, completion).scores
