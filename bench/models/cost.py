"""Token prices and a running usage meter with an optional budget, so teacher spend is recorded and capped.

Spend of a run that fails: `generate_metered` counts the replies that arrived before a failure or Ctrl-C (the
backend and cache hand them over on the error) and appends what the meter then holds to an append-only ledger,
`<phase artifacts>/teacher_usage.failed.jsonl`, one line per failed attempt. The resumed run finds those replies in
the generation cache (counted as cached, not paid again), so a run's teacher spend is the `spent_usd` of its
finished `teacher_usage.json` plus the `spent_usd` of every ledger line: together, what the server served.
A ledger rather than a partial usage file, because a second failure must not overwrite the first one's spend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.models.base import ChatModel, Completion, GenerationRequest, carried_completions

FAILED_USAGE_LEDGER = "teacher_usage.failed.jsonl"


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

    def add_many(self, completions: Iterable[Completion | None]) -> None:
        """Count each completion; None slots (requests that failed or were never sent) cost nothing."""
        for completion in completions:
            if completion is not None:
                self.add(completion)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def exhausted(self) -> bool:
        return ((self.budget_usd is not None and self.cost_usd >= self.budget_usd) or
                (self.budget_tokens is not None and self.tokens >= self.budget_tokens))

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            return {"calls": self.calls, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                    "spent_usd": round(self.spent_usd, 6), "budget_usd": self.budget_usd,
                    "budget_tokens": self.budget_tokens}


def append_failed_usage(ledger: Path, phase: str, meter: UsageMeter, error: BaseException) -> None:
    """Append one failed attempt's usage (what `meter` holds when the error escapes) to the ledger file."""
    record = {"phase": phase, "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "error": f"{type(error).__name__}: {str(error)[:300]}", **meter.snapshot()}
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def generate_metered(model: ChatModel, requests: Sequence[GenerationRequest], meter: UsageMeter, ledger: Path,
                     phase: str, progress: bool = True) -> list[Completion]:
    """`model.generate` whose every reply is counted in `meter`, including those that arrived before a failure or
    Ctrl-C; on such an error the meter's totals go to the `ledger` before the error is re-raised, so a failed run
    leaves its spend on disk (see the module docstring for how it adds up with the resumed run)."""
    try:
        completions = model.generate(requests, progress=progress)
    except BaseException as error:
        meter.add_many(carried_completions(error))
        append_failed_usage(ledger, phase, meter, error)
        raise
    meter.add_many(completions)
    return completions
