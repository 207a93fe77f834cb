"""Token prices and a running usage meter with an optional budget, so teacher spend is recorded and capped."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bench.models.base import Completion


class BudgetExceeded(RuntimeError):
    """The configured spending cap is reached; callers stop issuing requests and keep what they have."""


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0  # USD per million prompt tokens
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


class UsageMeter:
    """Thread-safe totals over completions, with an optional budget.

    Tokens and cost count every completion the method used, cache hits included (at the price recorded when the
    call was made): that is what the method costs, and it keeps the budget deterministic, so a resumed or re-run
    job stops at the same point as the original. `spent_usd` is what this process actually paid (cache misses).
    """

    def __init__(self, budget_usd: float | None = None, budget_tokens: int | None = None) -> None:
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens  # prompt + completion tokens: a budget local teachers can share
        self._lock = threading.Lock()
        self.calls = self.cached = self.prompt_tokens = self.completion_tokens = 0
        self.cost_usd = self.spent_usd = 0.0

    def add(self, completion: Completion) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens
            self.cost_usd += completion.cost_usd
            if completion.cached:
                self.cached += 1
            else:
                self.spent_usd += completion.cost_usd

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def exhausted(self) -> bool:
        return ((self.budget_usd is not None and self.cost_usd >= self.budget_usd) or
                (self.budget_tokens is not None and self.tokens >= self.budget_tokens))

    def check_budget(self) -> None:
        if self.exhausted():
            raise BudgetExceeded(f"spent ${self.cost_usd:.4f} and {self.tokens} tokens of the budget "
                                 f"(${self.budget_usd}, {self.budget_tokens} tokens)")

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            return {"calls": self.calls, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                    "spent_usd": round(self.spent_usd, 6), "budget_usd": self.budget_usd,
                    "budget_tokens": self.budget_tokens}
