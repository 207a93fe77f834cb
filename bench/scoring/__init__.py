"""Scoring backends shared by every method: a sandboxed code executor and a math answer checker, each behind
the `Scorer` interface (bench/scoring/scorer.py) that tasks hand out."""

from bench.scoring.scorer import AssessingScorer, Assessment, ExampleScorer, Scorer
from bench.scoring.verdict import Status, Verdict

__all__ = ["AssessingScorer", "Assessment", "ExampleScorer", "Scorer", "Status", "Verdict"]
