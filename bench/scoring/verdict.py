"""The one result type every scorer returns, so methods and metrics never care which scorer ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Closed set of outcomes; anything a scorer cannot classify is a `SANDBOX_ERROR`, never a silent pass."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASHED = "crashed"
    NO_ANSWER = "no_answer"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class Verdict:
    """Outcome of scoring one completion.

    `detail` is short and human-readable (the failing assert, "expected 18, got 15"): it is what Concept
    Distillation shows the teacher, so it must say *why* an answer was wrong, not just that it was.
    """

    status: Status
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["status"] = self.status.value
        return record
