"""Math scoring against a hand-graded table, and beside lm-evaluation-harness's GSM8K filters on the same outputs.

peer_cases/math_outputs.jsonl holds realistic model outputs in the shapes models produce: GSM8K few-shot "#### N",
MultiArith "The answer is N.", LaTeX/\\boxed (Qwen, Llama, DeepSeek), markdown bold and headings, "#### Step N:"
headers, GPT-4o-like display math, SmolLM-like rambling cut off mid-sentence, refusals, currency, percents,
decimals, negatives, fractions. Each row carries the strict and flexible verdicts a careful human grader gives.

* bench must reproduce every verdict;
* lm-eval's published GSM8K scoring (bench.scoring.peers.lm_eval_gsm8k) is run on the same rows. Its verdict
  (correct or not) differs from the expected one on some rows; each such row names why in its note, as
  "[lm-eval <mode>: <kind>]" with a kind from peers.DIFFERENCE_KINDS, and a row tagged so must really differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.scoring.math import MODES, MathChecker
from bench.scoring.peers import DIFFERENCE_KINDS, lm_eval_gsm8k

CASES = Path(__file__).parent / "peer_cases" / "math_outputs.jsonl"
ROWS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
TAG = re.compile(r"\[lm-eval (strict|flexible): (\w+)\]")


def _bench(row: dict) -> dict[str, str]:
    verdicts = MathChecker().score_modes(row["completion"], row["reference"])
    return {mode: verdicts[mode].status.value for mode in MODES}


def _lm_eval(row: dict) -> dict[str, bool]:
    return dict(zip(MODES, lm_eval_gsm8k(row["completion"], row["reference"])))


def _expected_pass(row: dict, mode: str) -> bool:
    return row[mode] == "passed"


def test_table_is_large_and_well_formed() -> None:
    assert len(ROWS) >= 120
    ids = [row["id"] for row in ROWS]
    assert len(ids) == len(set(ids)), "row ids must be unique"
    for row in ROWS:
        assert set(row) == {"id", "style", "completion", "reference", "strict", "flexible", "note"}, row["id"]
        assert {row["strict"], row["flexible"]} <= {"passed", "failed", "no_answer"}, row["id"]
        # Strict mode accepts only an explicit marker, flexible adds the last number: flexible is never stricter.
        assert not (row["strict"] == "passed" and row["flexible"] != "passed"), row["id"]
    assert len({row["style"] for row in ROWS}) >= 10


@pytest.mark.parametrize("row", ROWS, ids=[row["id"] for row in ROWS])
def test_bench_matches_the_expected_verdicts(row: dict) -> None:
    assert _bench(row) == {"strict": row["strict"], "flexible": row["flexible"]}, row["note"]


def test_every_lm_eval_difference_is_a_documented_kind() -> None:
    """Rows where lm-eval's verdict differs from the expected one are tagged with a documented reason, and only
    those: a tag on a row where lm-eval agrees is stale."""
    untagged, stale, unknown = [], [], []
    for row in ROWS:
        tags = dict(TAG.findall(row["note"]))
        unknown += [(row["id"], kind) for kind in tags.values() if kind not in DIFFERENCE_KINDS]
        lm_eval = _lm_eval(row)
        for mode in MODES:
            differs = lm_eval[mode] != _expected_pass(row, mode)
            if differs and mode not in tags:
                untagged.append((row["id"], mode, lm_eval[mode], row[mode]))
            if not differs and mode in tags:
                stale.append((row["id"], mode, tags[mode]))
    assert not unknown, f"kinds missing from peers.DIFFERENCE_KINDS: {unknown}"
    assert not untagged, f"lm-eval differs here without a documented reason: {untagged}"
    assert not stale, f"tagged as differing, but lm-eval agrees: {stale}"


def test_agreement_rates(record_property: pytest.RecordProperty, capsys: pytest.CaptureFixture[str]) -> None:
    """bench agrees with the human verdicts everywhere; lm-eval's rate is reported, and is below 1 (the table
    discriminates between the two)."""
    bench_agree = {mode: 0 for mode in MODES}
    lm_eval_agree = {mode: 0 for mode in MODES}
    for row in ROWS:
        bench, lm_eval = _bench(row), _lm_eval(row)
        for mode in MODES:
            bench_agree[mode] += bench[mode] == row[mode]
            lm_eval_agree[mode] += lm_eval[mode] == _expected_pass(row, mode)
    rates = {f"{who}_{mode}": counts[mode] / len(ROWS)
             for who, counts in (("bench", bench_agree), ("lm_eval", lm_eval_agree)) for mode in MODES}
    for name, rate in rates.items():
        record_property(f"agreement_{name}", round(rate, 4))
    with capsys.disabled():
        print(f"\nagreement with the expected verdicts on {len(ROWS)} rows: "
              + ", ".join(f"{name} {rate:.1%}" for name, rate in rates.items()))
    assert rates["bench_strict"] == rates["bench_flexible"] == 1.0
    assert rates["lm_eval_strict"] < 1.0 and rates["lm_eval_flexible"] < 1.0
    # Every documented kind is exercised by at least one row, so none of them is a hypothetical.
    used = {kind for row in ROWS for _, kind in TAG.findall(row["note"])}
    assert used == set(DIFFERENCE_KINDS), f"kinds without a row: {set(DIFFERENCE_KINDS) - used}"


def test_lm_eval_helper_follows_the_published_filters() -> None:
    """Spot checks of the reimplementation itself, on lm-eval's documented behaviour."""
    assert lm_eval_gsm8k("So 48 + 24 = 72.\n#### 72", "72") == (True, True)
    assert lm_eval_gsm8k("#### 1,000", "1000") == (True, True)  # ',' ignored on both sides
    assert lm_eval_gsm8k("The answer is $18.", "18") == (False, True)  # '$' and one trailing '.' ignored
    assert lm_eval_gsm8k("#### 0.50", "0.5") == (False, False)  # a string compare
    assert lm_eval_gsm8k("#### 5\n#### 6", "5") == (True, False)  # strict takes the first, flexible the last
    assert lm_eval_gsm8k("no numbers here", "5") == (False, False)  # '[invalid]'
    assert lm_eval_gsm8k("It cost $1,234.50", "Total: #### 1234.50") == (False, True)  # reference field stripped
