"""Early stopping on validation loss and best-checkpoint selection: two separate trackers.

The HF Trainer ties both to one metric; here patience always watches the validation loss while
`best/` can be chosen by accuracy or macro-F1. Both follow HF's rules: strict comparison (ties keep
the earlier checkpoint), an absolute threshold for patience, and NaN never counts as an improvement.
Both are plain objects whose state is saved in the training checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def _improves(value: float, best: float | None, greater_is_better: bool, threshold: float = 0.0) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value - best > threshold if greater_is_better else best - value > threshold


@dataclass
class EarlyStopping:
    patience: int | None
    threshold: float = 0.0
    best_loss: float | None = None
    evaluations_without_improvement: int = 0

    def update(self, val_loss: float) -> bool:
        """Record one evaluation; True when training should stop."""
        if _improves(val_loss, self.best_loss, greater_is_better=False, threshold=self.threshold):
            self.best_loss = val_loss
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class BestTracker:
    metric: str
    best_value: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None

    @property
    def greater_is_better(self) -> bool:
        return not self.metric.endswith("loss")

    def update(self, metrics: dict[str, float], step: int, epoch: float) -> bool:
        """True when `metrics` is a new best (the caller then saves best/)."""
        value = metrics[self.metric]
        if not _improves(value, self.best_value, self.greater_is_better):
            return False
        self.best_value, self.best_step, self.best_epoch = value, step, epoch
        return True

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
