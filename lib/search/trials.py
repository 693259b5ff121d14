"""The trial table: what samplers, pruners and the status view read, rebuilt from the journal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialState(str, Enum):
    WAITING = "waiting"  # created or requeued, not yet claimed by a worker
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)


@dataclass
class Trial:
    """One trial's parameters and outcome; `reports` maps epoch (from 1) to the metric value."""

    number: int
    params: dict[str, Any]
    state: TrialState = TrialState.WAITING
    value: float | None = None
    reports: dict[int, float] = field(default_factory=dict)
    worker: str | None = None
    attempt: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    last_seen: float = 0.0
    error: str | None = None

    @property
    def has_value(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def last_epoch(self) -> int:
        return max(self.reports, default=0)
