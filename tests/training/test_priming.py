"""Priming prompts: the published strings, the paraphrase, and how a priming meets the question."""

from __future__ import annotations

import pytest

from bench.config import Wording
from bench.training.priming import PARAPHRASED_PRIMING, PUBLISHED_PRIMING, priming_for


def test_custom_priming_needs_its_text() -> None:
    with pytest.raises(ValueError, match="custom_priming"):
        priming_for("custom")
    assert priming_for("custom", "paraphrase", "Explain like a tutor.").apply("Q") == "Explain like a tutor.\n\nQ"
    assert priming_for("custom", "published", "Explain like a tutor. ").apply("Q") == "Explain like a tutor. Q"


def test_published_strings_are_the_public_codes_verbatim() -> None:
    """llama-3.1-405b-6bpw/inference_gsm8k-prompt{1,2,3}.ipynb, as shared/REFERENCE.md transcribes them."""
    assert PUBLISHED_PRIMING["teacher"] == ("As a teacher, guide your student through solving the question below. "
                                            "Provide a clear, simple explanation for someone unfamiliar with the "
                                            "problem. ")
    assert PUBLISHED_PRIMING["ground_truth"] == (
        "As a smart language model, provide a detailed answer that is clear and feasible for smaller models to "
        "understand and learn from without losing too much detail. ")
    # the parenthetical is part of the published prefix, placed before the question although it says "at the end"
    assert PUBLISHED_PRIMING["confidence"] == ("(At the end of the question) Briefly double-check that your answer "
                                               "is correct once done. ")
    assert PUBLISHED_PRIMING["base"] == PARAPHRASED_PRIMING["base"] == ""
    assert set(PUBLISHED_PRIMING) == set(PARAPHRASED_PRIMING)


def test_published_wording_is_a_raw_prefix_and_paraphrases_a_paragraph() -> None:
    question = "Natalia sold 48 clips."
    published = priming_for("ground_truth")  # the default wording
    assert published.raw_prefix and published.apply(question) == PUBLISHED_PRIMING["ground_truth"] + question
    assert published.apply(question).startswith("As a smart language model") and "\n" not in published.apply(question)
    paraphrase = priming_for("ground_truth", Wording.paraphrase)
    assert paraphrase.apply(question) == f"{PARAPHRASED_PRIMING['ground_truth']}\n\n{question}"
    for wording in ("published", "paraphrase"):
        assert priming_for("base", wording).apply(question) == question


def test_unknown_wording_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="paraphrase"):
        priming_for("teacher", "exact")
