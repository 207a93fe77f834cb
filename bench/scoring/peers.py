"""Peer harnesses' math scoring, reimplemented to the letter so bench's verdicts can be set beside theirs.

lm-evaluation-harness GSM8K (``lm_eval/tasks/gsm8k/gsm8k.yaml``, version 3.0):

* ``strict-match``: regex ``#### (\\-?[0-9\\.\\,]+)``, the *first* match, stripped;
* ``flexible-extract``: regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, the *last* match (``group_select: -1``), its first
  non-empty group, stripped;
* no match gives ``"[invalid]"``; then ``exact_match`` with ``ignore_case`` and ``regexes_to_ignore``
  ``[",", "\\$", "(?s).*#### ", "\\.$"]`` applied to prediction and reference alike: a string comparison.

Where bench's verdict differs from lm-eval's on the same output, it is for one of the reasons in
``DIFFERENCE_KINDS`` (tests/scoring/test_math_peer_agreement.py checks every differing row of its table is tagged
with one of them):
"""

from __future__ import annotations

import re

LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
LM_EVAL_INVALID = "[invalid]"

DIFFERENCE_KINDS: dict[str, str] = {
    "answer_format": "lm-eval's strict-match knows only '#### N' (one space, then the number); bench's "
    "strict mode also takes 'The answer is N', 'Answer: N', '**Final Answer**', '\\boxed{N}' and display math, "
    "the markers instruction-tuned models are prompted or trained to use.",
    "after_answer": "lm-eval's flexible-extract takes the last number in the whole text, even when it comes after "
    "the stated answer (a check like '18 / 2 = 9', a unit exponent 'ft^2', a follow-up remark); bench takes the "
    "explicitly stated answer.",
    "math_delimiter": "lm-eval's flexible regex '[$0-9.,]{2,}' also matches a closing math '$' and the "
    "sentence's full stop ('$\\boxed{6}$.'), so its last match is '$.', which normalises to an empty answer.",
    "numeric_equivalence": "lm-eval compares strings, so '18.00' != '18', '2.50' != '2.5', '3/4' != '0.75'; bench "
    "compares values exactly.",
    "latex_number": "lm-eval's digit regex cannot read LaTeX numbers ('\\frac{3}{4}', '14{,}916', '1,\\!250', "
    "'3\\frac{1}{2}', '2\\sqrt{2}'); bench normalises them or compares them with math-verify.",
    "unicode_minus": "lm-eval's regex reads '-' only, so the Unicode minus in '−8' is dropped and the answer "
    "becomes 8; bench reads it as a minus.",
    "currency_in_marker": "lm-eval's strict regex needs a digit right after '#### ', so '#### $15' is invalid; "
    "bench drops the currency sign.",
    "space_grouped": "'1 250' after an answer marker is one number to bench; lm-eval reads 250 (flexible) or 1 "
    "(strict).",
    "list_not_number": "lm-eval deletes every comma, so '1,2' (a list) becomes 12; bench requires proper "
    "thousands groups and compares a list as a list.",
    "first_marker": "lm-eval's strict-match takes the first '#### N'; a model that corrects itself writes a second "
    "one, and bench takes the last.",
    "invented_question": "after answering, the model made up a next question and answered that too; lm-eval's "
    "flexible-extract reads the made-up answer, bench reads the text before the invented question (lm-eval "
    "itself avoids this by stopping generation at 'Question:').",
}

if __doc__:  # None under python -OO
    __doc__ += "".join(f"\n* ``{kind}``: {reason}" for kind, reason in DIFFERENCE_KINDS.items())


def _lm_eval_first_group(match: str | tuple[str, ...]) -> str:
    if isinstance(match, tuple):
        match = [group for group in match if group][0]
    return match.strip()


def lm_eval_gsm8k_extract(completion: str) -> tuple[str, str]:
    """lm-eval's (strict-match, flexible-extract) filtered answers, ``"[invalid]"`` where its regex finds none."""
    strict = LM_EVAL_STRICT.findall(completion)
    flexible = LM_EVAL_FLEXIBLE.findall(completion)
    return (_lm_eval_first_group(strict[0]) if strict else LM_EVAL_INVALID,
            _lm_eval_first_group(flexible[-1]) if flexible else LM_EVAL_INVALID)


def lm_eval_normalise(answer: str) -> str:
    """lm-eval's ``exact_match`` normalisation of both sides: the ignored regexes, then lower case."""
    for pattern in LM_EVAL_IGNORE:
        answer = re.sub(pattern, "", answer)
    return answer.lower()


def lm_eval_gsm8k(completion: str, reference: str) -> tuple[bool, bool]:
    """Whether lm-evaluation-harness's GSM8K task scores the completion correct: (strict-match, flexible-extract).

    ``reference`` is the final answer ("72"), or a whole GSM8K answer field (its "... #### 72" is stripped the same
    way lm-eval strips it).
    """
    target = lm_eval_normalise(reference)
    strict, flexible = lm_eval_gsm8k_extract(completion)
    return lm_eval_normalise(strict) == target, lm_eval_normalise(flexible) == target
