"""Table-driven tests of the math answer checker on outputs shaped like real model completions.

Each row: completion, reference, expected status in strict mode, expected status in flexible mode.
P = passed, F = failed, N = no_answer. Rows marked "trap" are ones a naive last-number / substring extractor
gets wrong.
"""

from __future__ import annotations

import threading

import pytest

from bench.scoring import Status
from bench.scoring.math import MathChecker, answers_match, extract_answer, gsm8k_reference, to_fraction

P, F, N = Status.PASSED, Status.FAILED, Status.NO_ANSWER

CASES: list[tuple[str, str, Status, Status]] = [
    # GSM8K-style "#### N"
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72", P, P),
    ("She earns 12/60 = $0.2 per minute.\n#### 10", "10", P, P),
    ("#### 1,000", "1000", P, P),  # thousands separator
    ("#### 1,000", "1", F, F),  # trap: naive "[0-9]+" takes "1"
    ("####18", "18", P, P),
    ("#### -3", "-3", P, P),
    ("#### 2.50", "2.5", P, P),
    ("#### $15", "15", P, P),
    ("The total is 5 + 7 = 12.\n#### 12\nThe student then asks about 30 apples.", "12", P, P),  # trap: last num 30
    # "The answer is N"
    ("Janet has 16 eggs, eats 3 and bakes 4, leaving 9. She sells them at $2 each. The answer is 18.", "18", P, P),
    ("The answer is 18. Check: 18 / 2 = 9.", "18", P, P),  # trap: last number is 9
    ("The answer is $18.00.", "18", P, P),  # currency, trailing zeros, trailing period
    ("The final answer is 42", "42", P, P),
    ("Final answer: 7", "7", P, P),
    ("Answer: 1,250 dollars", "1250", P, P),  # separator + unit
    ("The answer is 5 + 3 = 8.", "8", P, P),  # trap: first number after marker is 5
    ("The answer is 17.", "18", F, F),
    ("The answer is 180.", "18", F, F),  # trap: substring match accepts "18" in "180"
    ("The answer is 18.5", "18", F, F),
    ("The answer is -4 degrees.", "-4", P, P),
    ("The answer is 4 degrees below zero, i.e. -4.", "-4", F, F),  # marker answer wins, even when wrong
    ("I first thought 12. The answer is 15.", "15", P, P),
    ("The answer is 15. Wait, I made an error. The answer is 20.", "20", P, P),  # last marker is final
    ("the answer is: 3/4", "0.75", P, P),  # fraction vs decimal
    ("The answer is 0.75", "3/4", P, P),
    ("The answer is 50%.", "50", P, P),
    ("The answer is 1,2 apples", "12", F, F),  # "1,2" is not a thousands group
    ("answer = 64", "64", P, P),
    # \boxed{}
    ("So the total is $\\boxed{72}$.", "72", P, P),
    ("\\boxed{\\frac{3}{4}}", "0.75", P, P),
    ("Therefore \\boxed{18 \\text{ dollars}}", "18", P, P),
    ("\\boxed{\\$1{,}000}", "1000", P, P),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", P, P),  # symbolic: math-verify
    ("\\boxed{17}", "18", F, F),
    ("We get \\boxed{5} but recheck: \\boxed{6}", "6", P, P),
    ("\\boxed{6} and there were 10 birds", "6", P, P),  # trap: last number is 10
    ("\\boxed{}", "6", N, N),
    # no marker: strict gives no_answer, flexible takes the last number
    ("48 / 2 = 24 in May, so 48 + 24 = 72 in total.", "72", N, P),
    ("She has 5 - 3 = 2 apples left", "2", N, P),  # trap: "-3" must not be read as a negative number
    ("5-3=2", "2", N, P),
    ("It costs $1,234.50 altogether.", "1234.5", N, P),
    ("It costs $1,234.50 altogether.", "1234", N, F),
    ("The temperature dropped to -7.", "-7", N, P),
    ("He ran 3.5 miles.", "3.5", N, P),
    ("He ran 3.5 miles.", "3", N, F),
    ("That makes 2,000,000 grains.", "2000000", N, P),
    ("Half of it, 1/2, is gone; 10 remain.", "10", N, P),
    ("Each gets 3/4 of a pie", "0.75", N, P),
    ("She makes 40 dollars over two days, so 40 / 2", "20", N, F),  # trap: unfinished working, not 20
    ("The answer is 3 / 4", "0.75", P, P),  # after a marker, a spaced fraction is still the stated answer
    ("Each gets .5 of a pie", "0.5", N, P),
    ("There are 12 eggs in a box and 3 boxes, so 36", "36", N, P),
    ("There are 12 eggs in a box and 3 boxes, so 36 eggs.", "12", N, F),
    ("Step 1: 4 * 6 = 24\nStep 2: 24 + 6 = 30 minutes", "30", N, P),
    ("The result is 18.", "18", N, P),
    ("She is 5th in line with 9 tickets", "9", N, P),
    # nothing extractable
    ("I don't know.", "18", N, N),
    ("", "18", N, N),
    ("Let me think step by step about the eggs", "18", N, N),
    ("The answer is unknown.", "4", N, N),
    # messy real-model endings
    ("**Answer:** 26", "26", P, P),
    ("The answer is **26**.", "26", P, P),
    ("The answer is (B) 26", "26", P, P),
    ("So, the answer is 1,000 dollars.\n\nI hope this helps!", "1000", P, P),
    ("Total cost = 3 * $4 = $12\n#### 12.", "12", P, P),
    ("#### 12\n\nQuestion: Tom has 5 apples", "12", P, P),  # trap: model rambles on to a new question
    ("The answer is 0", "0", P, P),
    ("The answer is 007", "7", P, P),
    ("The answer is 1e3", "1000", F, F),  # scientific notation is not a GSM8K answer; we read "1"
]


@pytest.mark.parametrize(("completion", "reference", "strict", "flexible"), CASES)
def test_checker_table(completion: str, reference: str, strict: Status, flexible: Status) -> None:
    verdicts = MathChecker().score_modes(completion, reference)
    assert (verdicts["strict"].status, verdicts["flexible"].status) == (strict, flexible), verdicts


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_detail_says_what_was_extracted_and_expected() -> None:
    verdict = MathChecker("flexible").score("so 5 + 10 = 15 apples", "18")
    assert verdict.status is Status.FAILED
    assert "extracted 15" in verdict.detail and "expected 18" in verdict.detail and "flexible" in verdict.detail


def test_no_answer_detail_names_the_mode() -> None:
    verdict = MathChecker("strict").score("about fifteen", "18")
    assert verdict.status is Status.NO_ANSWER and "strict" in verdict.detail


def test_extraction_reports_its_marker() -> None:
    assert extract_answer("#### 5").marker == "####"
    assert extract_answer("The answer is 5").marker == "answer is"
    assert extract_answer("\\boxed{5}").marker == "boxed"
    assert extract_answer("5 apples").marker == "last number"
    assert extract_answer("5 apples", "strict") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("1,000", 1000), ("$5.50", "11/2"), ("-3/4", "-3/4"), ("\\frac{3}{4}", "3/4"), ("75%", 75), ("18.", 18),
     (".5", "1/2"), ("abc", None), ("1/0", None)],
)
def test_to_fraction(text: str, value: object) -> None:
    from fractions import Fraction

    assert to_fraction(text) == (None if value is None else Fraction(value))


def test_answers_match_is_exact_for_numbers() -> None:
    assert answers_match("0.1", "1/10")
    assert not answers_match("0.3333333", "1/3")  # exact, not rounded
    assert answers_match("18.0", "18")


def test_math_verify_works_off_the_main_thread() -> None:
    """math-verify's SIGALRM timeout breaks in worker threads; the checker must still answer there."""
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(answers_match("2\\sqrt{2}", "\\sqrt{8}")))
    worker.start()
    worker.join(timeout=60)
    assert results == [True]


def test_gsm8k_reference() -> None:
    assert gsm8k_reference("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_reference("... #### 1,000") == "1000"
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("no final line")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="strict"):
        MathChecker("lenient")  # type: ignore[arg-type]


# --- Answer forms real models produce that a plain-text extractor misjudges: one test per class. ---


def _statuses(completion: str, reference: str) -> tuple[Status, Status]:
    verdicts = MathChecker().score_modes(completion, reference)
    return verdicts["strict"].status, verdicts["flexible"].status


def test_latex_frac_outside_boxed() -> None:
    assert _statuses("The answer is \\frac{3}{4}.", "0.75") == (P, P)
    assert _statuses("The answer is \\frac{3}{4}.", "3/4") == (P, P)
    assert _statuses("Each friend gets 3 \\div 4 = \\dfrac{3}{4}", "3/4") == (N, P)
    assert _statuses("So she keeps $-\\frac{1}{2}$ of it", "-1/2") == (N, P)
    assert _statuses("The answer is \\tfrac{3}{4}", "4") == (F, F)  # trap: not the denominator
    assert _statuses("The answer is $3\\frac{1}{2}$ cups.", "7/2") == (P, P)  # mixed number
    assert extract_answer("= \\dfrac{3}{4}").answer == "3/4"


def test_latex_thousands_separators() -> None:
    assert _statuses("The answer is $14{,}916$.", "14916") == (P, P)
    assert _statuses("In total she pays $1,\\!250$ dollars.", "1250") == (N, P)
    assert _statuses("In total she pays $1,\\!250$ dollars.", "250") == (N, F)  # trap: "250" after the "\!"
    assert _statuses("Total: $2\\,500$ m", "2500") == (N, P)  # thin-space group
    assert extract_answer("so $14{,}916$ people").answer in {"14,916", "14916"}


def test_space_grouped_thousands_after_marker() -> None:
    assert _statuses("The answer is 1 250.", "1250") == (P, P)
    assert _statuses("#### 1 000", "1000") == (P, P)
    assert _statuses("The answer is 12 345 678", "12345678") == (P, P)
    assert _statuses("The answer is 1\u202f250.", "1250") == (P, P)  # narrow no-break space, as in French output
    # Without a marker, numbers are not glued together: "3 100" is two numbers, the last being 100.
    assert _statuses("She bought 3 100-page books", "3100") == (N, F)
    assert _statuses("She bought 3 100-page books", "100") == (N, P)
    assert _statuses("The answer is 5 25", "525") == (F, F)  # "25" is no thousands group


def test_unicode_minus() -> None:
    assert _statuses("The answer is \u22128.", "-8") == (P, P)
    assert _statuses("The temperature ends at \u22128 degrees", "-8") == (N, P)
    assert _statuses("#### \u22128", "8") == (F, F)
    assert _statuses("$\\boxed{\u22128}$", "-8") == (P, P)


def test_negative_currency() -> None:
    assert _statuses("The answer is -$12.", "-12") == (P, P)
    assert _statuses("The answer is $-12.", "-12") == (P, P)
    assert _statuses("So her balance is -$12", "-12") == (N, P)
    assert _statuses("The answer is -$12.", "12") == (F, F)
    assert _statuses("$\\boxed{-\\$12}$", "-12") == (P, P)
    assert _statuses("It cost $20-$8 = $12", "12") == (N, P)  # a subtraction, not a negative amount
    assert _statuses("Expenses:\n- $8 for lunch\n- $12 for dinner", "12") == (N, P)  # markdown bullets


def test_bold_final_answer_marker() -> None:
    assert _statuses("Adding up, 3 + 4 = 7 apples.\n\n**Final Answer**: 7", "7") == (P, P)
    assert _statuses("Adding up, 3 + 4 = 7 apples.\n\n**Final Answer:** 7", "7") == (P, P)
    assert _statuses("So 3 + 4 = 7.\n\n**Final Answer**\n\n7", "7") == (P, P)
    assert _statuses("So 3 + 4 = 7.\n\n## Final Answer\n7 apples", "7") == (P, P)
    assert _statuses("So 3 + 4 = 7.\n\n**Final Answer**: 7\n\nHope this helps with 2 more!", "7") == (P, P)
    assert _statuses("**Final Answer**: 8", "7") == (F, F)
    assert extract_answer("**Final Answer**: 7", "strict").answer == "7"
    # "final answer" in running prose is no marker when no value follows it.
    assert _statuses("To get the final answer, add 3 and 4 to get 7", "7") == (N, P)


def test_display_math_answer_marker() -> None:
    assert _statuses("Adding gives 4 + 5.\n\nAnswer \\[9\\]", "9") == (P, P)
    assert _statuses("Answer:\n\\[\n9\n\\]", "9") == (P, P)
    assert _statuses("Adding 4 and 5 gives 9 pencils. The final answer is $\\boxed{9}$", "9") == (P, P)
    assert _statuses("There are 4 + 5 = 9 pencils.\nAnswer: \\( 9 \\)", "9") == (P, P)
    assert _statuses("Answer: \\( 2\\sqrt{2} \\)", "\\sqrt{8}") == (P, P)  # symbolic span kept whole
    assert _statuses("Answer \\[10\\]", "9") == (F, F)


def test_markdown_step_headers_are_not_gsm8k_marker() -> None:
    completion = (
        "#### Step 1: Count the apples\nShe has 2 apples.\n\n"
        "#### Step 2: Add the new ones\n2 + 3 = 5\n\n"
        "### Step 3\nThe answer is 5"
    )
    assert _statuses(completion, "5") == (P, P)
    assert extract_answer(completion, "strict").answer == "5"
    cut_off = "#### Step 1: Count the apples\nShe has 2 apples.\n\n#### Step 2: Add 3 more\n2 + 3 = 5 app"
    assert extract_answer(cut_off, "strict") is None  # not "1" from "#### Step 1"
    assert _statuses(cut_off, "5") == (N, P)
    assert _statuses("#### 72", "72") == (P, P)  # the real GSM8K marker still counts


def test_units_inside_boxed() -> None:
    assert _statuses("The area is $\\boxed{120 \\text{ ft}^2}$.", "120") == (P, P)
    assert _statuses("She pays $\\boxed{\\$1,250}$.", "1250") == (P, P)
    assert _statuses("The discount is $\\boxed{15\\%}$", "15") == (P, P)
    assert _statuses("$\\boxed{18 \\text{ dollars}}$", "18") == (P, P)
    assert _statuses("$\\boxed{120 \\text{ ft}^2}$", "2") == (F, F)  # trap: the exponent is no answer
    assert _statuses("$\\boxed{5\\text{ m/s}}$", "5") == (P, P)
    assert extract_answer("\\boxed{120 \\text{ ft}^2}").answer == "120"


def test_boxed_list_is_not_thousands() -> None:
    assert _statuses("\\boxed{1,2}", "12") == (F, F)
    assert _statuses("\\boxed{1,2}", "1,2") == (P, P)  # a set/tuple, compared as one by math-verify
    assert _statuses("The answer is \\boxed{1, 2, 3}", "123") == (F, F)
    assert _statuses("\\boxed{1,250}", "1250") == (P, P)  # a proper thousands group still is one
    assert not answers_match("1,2", "12")
    assert to_fraction("1,2") is None
    assert to_fraction("1 2") is None


def test_answer_colon_statement_vs_echoed_working() -> None:
    """After "Answer:", one sentence states the answer (its last number); a paragraph of working is no statement."""
    assert _statuses("**Answer:** Janet makes $18 per day.", "18") == (P, P)
    assert _statuses("**Answer:** Each of the 4 friends gets 3 cookies.", "3") == (P, P)
    working = "Answer: Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    assert _statuses(working, "72") == (N, P)  # neither the first number (48) nor "24" is the stated answer
    assert _statuses("Answer: She has 16 eggs. She eats 3 and bakes 4, so 9 * 2 = 18 dollars.", "18") == (N, P)


def test_invented_next_question_is_not_the_answer() -> None:
    """A model that answers and then makes up a next question (few-shot continuation) is scored on its answer."""
    assert _statuses("The answer is 7.\n\nQ: Sam had 10 marbles and lost 4.\nA: The answer is 6.", "7") == (P, P)
    assert _statuses("9 * 2 = 18 dollars.\nQuestion: Tom has 5 apples and eats 2.\n5 - 2 = 3", "18") == (N, P)
    assert _statuses("Question: How much does Janet make?\nShe makes 9 * 2 = 18. The answer is 18.", "18") == (P, P)
