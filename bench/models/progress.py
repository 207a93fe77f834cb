"""One progress bar per `generate` call that moves inside a batch, so a long batched decode never looks hung.

The default run's bar used to sit at `0/50` for minutes: it moved once per cache chunk of 64 requests. Now the
bar counts requests, and its postfix shows where the current batch's decode stands (`batch 2/4 · step 212/384`)
with an upper bound on the time left: every batch is assumed to run to `max_new_tokens`, so the estimate only ever
comes down as batches end early on EOS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from bench.models.base import Completion


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class GenerationProgress:
    """A bar over the requests of one generate call; backends report batches and decode steps into it.

    The cache wrapper makes one (hits count as done) and hands it to the backend, so the bar spans every chunk;
    a backend called directly makes its own. Disabled, the bar draws nothing. Backends report each finished
    request through `completed`, which also hands its completion to `on_completed` (the cache stores it there and
    then: a run killed with -9 never asks a server again for a reply it was already given).
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, done: int = 0,
                 on_completed: Callable[[int, Completion], None] | None = None) -> None:
        self.on_completed = on_completed
        self.enabled = enabled and total > done
        self.total = total
        self.done = done
        self._bar = tqdm(total=total, initial=done, desc=desc, unit="req", disable=not self.enabled,
                         dynamic_ncols=True)
        self._batch_size = 0
        self._batch_number = 0
        self._max_steps = 0
        self._batch_started = 0.0
        self._first_step_done = 0.0
        self._last_drawn = float("-inf")  # the first step always draws
        self._seconds_per_step: float | None = None

    def start_batch(self, size: int, max_steps: int) -> None:
        """A batch of `size` requests starts decoding, for at most `max_steps` tokens."""
        self._batch_size, self._max_steps = size, max_steps
        self._batch_number += 1
        self._batch_started = time.perf_counter()

    def step(self, step: int) -> None:
        """Decode step `step` (1-based) of the current batch finished."""
        if not self.enabled or step < 1:
            return
        now = time.perf_counter()
        if step == 1:  # the first step includes the prompt's prefill: a poor guide to the pace of the rest
            self._first_step_done = now
            if self._seconds_per_step is None:
                self._seconds_per_step = now - self._batch_started
        else:
            self._seconds_per_step = (now - self._first_step_done) / (step - 1)
        if now - self._last_drawn < self._bar.mininterval and step < self._max_steps:
            return  # a compiled GPU decode steps every few ms: redraw (and write to a job's log) at tqdm's pace
        self._last_drawn = now
        self._bar.set_postfix_str(f"batch {self._batch_number}/{self._batch_number + self._batches_after()}"
                                  f" · step {step}/{self._max_steps} · ≤{format_seconds(self.seconds_left(step))} "
                                  "left", refresh=False)
        self._bar.refresh()

    def seconds_left(self, step: int) -> float:
        """Upper bound: the rest of this batch and every later batch at `max_steps` each, at the measured pace."""
        pace = self._seconds_per_step or 0.0
        return pace * ((self._max_steps - step) + self._batches_after() * self._max_steps)

    def _batches_after(self) -> int:
        remaining = self.total - self.done - self._batch_size
        return -(-remaining // self._batch_size) if self._batch_size and remaining > 0 else 0

    def advance(self, requests: int) -> None:
        """`requests` more requests are finished."""
        self.done += requests
        self._bar.update(requests)

    def completed(self, index: int, completion: Completion | None) -> None:
        """Request `index` of the backend's call finished, answered (`completion`) or not (None)."""
        if completion is not None and self.on_completed is not None:
            self.on_completed(index, completion)
        self.advance(1)

    def close(self) -> None:
        self._bar.close()


def progress_for(progress: bool | GenerationProgress, total: int, desc: str) -> tuple[GenerationProgress, bool]:
    """(the bar to report into, whether this caller owns it and must close it)."""
    if isinstance(progress, GenerationProgress):
        return progress, False
    return GenerationProgress(total, desc, enabled=bool(progress)), True
