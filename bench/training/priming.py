"""Teacher priming prompts (RP-KD, arXiv 2412.17846): the published strings, and our paraphrases beside them.

Two wordings, chosen with `method.priming_wording`:
  published   the strings of the public RP-KD code, verbatim (each ends with a space), placed as the public code
              places them: a raw prefix glued to the question, `priming + question`.
  paraphrase  our own words after the paper's intent (written before the public strings were read), placed as a
              paragraph before the question in the same user turn: `priming + "\\n\\n" + question`.
Either way `base` adds nothing. Whether the primed question then goes through the teacher's chat template depends
on the teacher signal (`method.signal`): `published` feeds the raw string, as the public code did; the others put
it in a user turn, as every other prompt of the harness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.config import Wording


# Quoted from the public RP-KD code (github.com/alonso130r/knowledge-distillation, by the paper's authors;
# llama-3.1-405b-6bpw/inference_gsm8k-prompt{1,2,3}.ipynb, as transcribed in shared/REFERENCE.md). Teacher =
# prompt1, Ground Truth = prompt2, Confidence = prompt3; Base is inference_gsm8k.ipynb, the question alone. The
# Confidence string's parenthetical "(At the end of the question)" is part of the published prefix, so it is kept.
PUBLISHED_PRIMING: Mapping[str, str] = {
    "base": "",
    "teacher": ("As a teacher, guide your student through solving the question below. Provide a clear, simple "
                "explanation for someone unfamiliar with the problem. "),
    "ground_truth": ("As a smart language model, provide a detailed answer that is clear and feasible for smaller "
                     "models to understand and learn from without losing too much detail. "),
    "confidence": "(At the end of the question) Briefly double-check that your answer is correct once done. ",
}

# Paraphrases (not the published wording): what this harness used before the published strings were available.
PARAPHRASED_PRIMING: Mapping[str, str] = {
    "base": "",
    "teacher": ("You are a teacher guiding a student through the problem below. Work through it step by step and "
                "explain each step so that the student can learn the method."),
    "ground_truth": ("You are a highly capable model. Write a detailed, clear and correct solution to the problem "
                     "below that a smaller model can follow and learn from."),
    "confidence": ("Solve the problem below. Before you state the final answer, briefly double-check your work "
                   "and make sure you are confident in it."),
}
WORDINGS: Mapping[Wording, Mapping[str, str]] = {Wording.published: PUBLISHED_PRIMING,
                                                        Wording.paraphrase: PARAPHRASED_PRIMING}


@dataclass(frozen=True)
class Priming:
    """One arm's priming text and how it meets the question."""

    text: str
    raw_prefix: bool  # True: `text + question` verbatim (published); False: a paragraph before the question

    def apply(self, question: str) -> str:
        if not self.text:
            return question
        return self.text + question if self.raw_prefix else f"{self.text}\n\n{question}"


def wording(value: str | Wording) -> Wording:
    try:
        return Wording(value)
    except ValueError:
        raise ValueError(f"unknown method.priming_wording {value!r}; choose from "
                         f"{[w.value for w in Wording]}") from None


def priming_for(arm: str, wording_name: str | Wording = Wording.published,
                custom: str | None = None) -> Priming:
    """The arm's priming in the chosen wording; `custom` is the user's text, placed like that wording's strings."""
    chosen = wording(wording_name)
    raw_prefix = chosen is Wording.published
    if arm == "custom":
        if not custom:
            raise ValueError("the custom arm needs method.custom_priming (the priming prompt's text)")
        return Priming(custom, raw_prefix)
    if arm not in PUBLISHED_PRIMING:
        raise ValueError(f"no priming prompt for arm {arm!r}; expected one of {sorted(PUBLISHED_PRIMING)} or custom")
    return Priming(WORDINGS[chosen][arm], raw_prefix)
