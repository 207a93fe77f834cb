"""Statistics for benchmark results: accuracy, unbiased pass@k, intervals and paired tests.

Distillation gains on a few hundred items are often within noise, so every headline number carries a 95% CI, and
two arms evaluated on the *same items* are compared with a paired test (paired bootstrap of the difference, and
the exact McNemar test on discordant items for pass/fail outcomes) rather than by eyeballing two CIs.

A proportion's interval is the Wilson score interval, not a percentile bootstrap: when every outcome is equal
(0/50 is common for a 135M model) the bootstrap has nothing to resample and returns the zero-width "0.0 [0.0,
0.0]", which claims certainty the data cannot give; Wilson's upper bound at 0/50 is about 7%. The bootstrap stays
for differences of paired runs, where it is the standard tool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from statistics import NormalDist

import numpy as np


def accuracy(outcomes: Sequence[bool]) -> float:
    if len(outcomes) == 0:
        raise ValueError("accuracy of an empty list of outcomes is undefined")
    return sum(bool(x) for x in outcomes) / len(outcomes)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), in the numerically stable product form."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, each given as (samples drawn n, samples correct c)."""
    if not samples:
        raise ValueError("mean pass@k of no problems is undefined")
    return float(np.mean([pass_at_k(n, c, k) for n, c in samples]))


class Interval(str, Enum):
    """How an `Estimate`'s CI was computed; every table footer names it."""

    WILSON = "wilson"
    BOOTSTRAP = "bootstrap"


INTERVAL_DESCRIPTIONS = {
    Interval.WILSON: "Wilson score interval",
    Interval.BOOTSTRAP: "percentile bootstrap",
}


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    method: str = Interval.WILSON.value

    def to_dict(self) -> dict:
        return asdict(self)


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[indices].mean(axis=1)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, so reports are reproducible)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("bootstrap CI of no values is undefined")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if array.size == 1 or np.all(array == array[0]):
        return float(array[0]), float(array[0])
    means = _bootstrap_means(array, resamples, seed)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def wilson_interval(mean: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion observed as `mean` over `n` trials.

    Never zero-width for n >= 1, and inside [0, 1] by construction. Also used for the mean of per-problem values
    in [0, 1] (pass@k from n samples): a [0, 1] variable with mean p has variance at most p(1 - p), so treating
    the mean as a proportion over the problems is conservative.
    """
    if n < 1:
        raise ValueError("a Wilson interval needs at least one trial")
    if not 0 <= mean <= 1:
        raise ValueError(f"a Wilson interval is for proportions in [0, 1], got {mean}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    denominator = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denominator
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(values: Sequence[float] | Sequence[bool], confidence: float = 0.95,
             method: Interval = Interval.WILSON, resamples: int = 10_000, seed: int = 0) -> Estimate:
    """Mean with a CI. Wilson (default) needs values in [0, 1]: pass/fail outcomes or per-problem pass@k."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("an estimate of no values is undefined")
    mean = float(array.mean())
    if method is Interval.WILSON:
        low, high = wilson_interval(mean, int(array.size), confidence)
    else:
        low, high = bootstrap_ci(array, confidence, resamples, seed)
    return Estimate(n=int(array.size), mean=mean, ci_low=low, ci_high=high, confidence=confidence,
                    method=Interval(method).value)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of the discordant pairs against p = 1/2."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be non-negative")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """b versus a on the same items: diff = mean(b) - mean(a)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    bootstrap_p: float
    mcnemar_p: float | None
    only_a: int
    only_b: int
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                seed: int = 0) -> PairedComparison:
    """Compare two runs item by item. `a` and `b` must score the same items in the same order."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.size == 0 or first.shape != second.shape:
        raise ValueError(f"paired test needs two equally long, non-empty score lists; got {first.size} and "
                         f"{second.size}")
    differences = second - first
    diff = float(differences.mean())
    if np.all(differences == differences[0]):
        low = high = float(differences[0])
        bootstrap_p = 1.0 if differences[0] == 0 else 0.0
    else:
        means = _bootstrap_means(differences, resamples, seed)
        tail = (1 - confidence) / 2
        low, high = float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
        # Shift method: the null distribution is the bootstrap distribution centred on zero.
        bootstrap_p = float(min(1.0, np.mean(np.abs(means - diff) >= abs(diff))))
    binary = bool(np.all(np.isin(first, (0.0, 1.0))) and np.all(np.isin(second, (0.0, 1.0))))
    only_a = int(np.sum((first == 1) & (second == 0))) if binary else 0
    only_b = int(np.sum((first == 0) & (second == 1))) if binary else 0
    return PairedComparison(n=int(first.size), mean_a=float(first.mean()), mean_b=float(second.mean()), diff=diff,
                            ci_low=low, ci_high=high, bootstrap_p=bootstrap_p,
                            mcnemar_p=mcnemar_exact(only_a, only_b) if binary else None, only_a=only_a,
                            only_b=only_b, confidence=confidence)
