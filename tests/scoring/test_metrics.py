"""Metrics against hand-computed values (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest

from bench.scoring.metrics import (Interval, accuracy, bootstrap_ci, estimate, mcnemar_exact, mean_pass_at_k,
                                   paired_test, pass_at_k, wilson_interval)


def test_accuracy() -> None:
    assert accuracy([True, False, True, True]) == 0.75
    with pytest.raises(ValueError):
        accuracy([])


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4),          # c / n
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 0, 3, 0.0),         # no correct sample
    (4, 3, 2, 1.0),          # n - c = 1 < k: every 2-subset holds a correct sample
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
])
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_combinatorial_formula() -> None:
    for n in range(1, 15):
        for c in range(n + 1):
            for k in range(1, n + 1):
                direct = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(direct)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_invalid_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([(5, 2), (5, 0)], 1) == pytest.approx(0.2)  # (0.4 + 0) / 2


def test_mcnemar_hand_values() -> None:
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)  # 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # capped
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_bootstrap_ci_normal_approximation() -> None:
    values = [1.0] * 50 + [0.0] * 50
    low, high = bootstrap_ci(values, seed=1)
    # normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = 0.5 +- 0.098
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)


def test_bootstrap_ci_properties() -> None:
    small = [1, 0, 1, 1, 0, 1, 0, 1]
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    low, high = bootstrap_ci(small)
    assert low <= sum(small) / len(small) <= high
    wide = high - low
    low, high = bootstrap_ci(small * 20)
    assert high - low < wide
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_estimate() -> None:
    result = estimate([True, False, True, True])
    assert result.n == 4 and result.mean == 0.75 and result.ci_low <= 0.75 <= result.ci_high
    assert set(result.to_dict()) == {"n", "mean", "ci_low", "ci_high", "confidence", "method"}
    assert result.method == "wilson"
    assert estimate([True, False] * 10, method=Interval.BOOTSTRAP).method == "bootstrap"


def test_interval_at_zero_percent_is_not_zero_width() -> None:
    """The defect: 0/50 was reported as "0.0 [0.0, 0.0]" by the percentile bootstrap."""
    result = estimate([False] * 50)
    # z = 1.95996, z^2/n = 0.076829; centre = (z^2/2n) / (1 + z^2/n) = 0.038415 / 1.076829 = 0.035674 = half-width
    assert result.mean == 0.0 and result.ci_low == 0.0
    assert result.ci_high == pytest.approx(0.071348, abs=1e-5)


def test_interval_at_hundred_percent_is_not_zero_width() -> None:
    result = estimate([True] * 50)
    assert result.ci_high == 1.0 and result.ci_low == pytest.approx(1 - 0.071348, abs=1e-5)  # mirror of 0/50


@pytest.mark.parametrize(("mean", "n", "low", "high"), [
    # 5/10: z^2/n = 0.384146, centre 0.5; half = 1.95996 * sqrt(0.025 + 0.0096037) / 1.384146 = 0.263407
    (0.5, 10, 0.236593, 0.763407),
    # 1/10: centre (0.1 + 0.192073) / 1.384146 = 0.211013; half = 1.95996 * sqrt(0.009 + 0.0096037) / 1.384146
    # = 0.193137 (the textbook Wilson interval for 1/10 is [0.018, 0.404])
    (0.1, 10, 0.017876, 0.404150),
])
def test_wilson_hand_values(mean: float, n: int, low: float, high: float) -> None:
    assert wilson_interval(mean, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_rejects_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError):
        wilson_interval(1.5, 10)
    with pytest.raises(ValueError):
        estimate([])


def test_paired_identical_runs() -> None:
    runs = [1, 0, 1, 1, 0]
    result = paired_test(runs, runs)
    assert result.diff == 0 and result.mcnemar_p == 1.0 and result.bootstrap_p == 1.0
    assert (result.only_a, result.only_b) == (0, 0)


def test_paired_discordant_counts() -> None:
    a = [1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 1, 1, 1, 1, 1]
    result = paired_test(a, b)
    assert (result.only_a, result.only_b) == (1, 3)  # item 1 only a; items 2, 3, 5 only b
    assert result.diff == pytest.approx(2 / 7)
    assert result.mcnemar_p == pytest.approx(mcnemar_exact(1, 3))  # 2 * (1 + 4) / 16 = 0.625


def test_paired_large_consistent_improvement_is_significant() -> None:
    a = [0] * 60 + [1] * 40
    b = [1] * 60 + [1] * 40
    result = paired_test(a, b)
    assert result.diff == pytest.approx(0.6)
    assert result.mcnemar_p < 1e-10 and result.bootstrap_p < 0.01
    assert result.ci_low > 0.4


def test_paired_non_binary_scores_have_no_mcnemar() -> None:
    result = paired_test([0.5, 0.2, 0.9], [0.6, 0.1, 1.0])
    assert result.mcnemar_p is None and result.diff == pytest.approx(0.1 / 3)


def test_paired_requires_equal_lengths() -> None:
    with pytest.raises(ValueError, match="equally long"):
        paired_test([1, 0], [1])
    with pytest.raises(ValueError):
        paired_test([], [])
