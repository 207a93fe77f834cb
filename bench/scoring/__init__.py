"""Scoring backends shared by every method: a sandboxed code executor and a math answer checker."""

from bench.scoring.verdict import Status, Verdict

__all__ = ["Status", "Verdict"]
