"""Early stopping on validation loss and checkpoint selection: two separate trackers.

The HF Trainer ties both to one metric; here patience always watches the validation loss while
the selected checkpoint can be chosen by accuracy or macro-F1. Both follow HF's rules: strict
comparison (ties keep the earlier checkpoint), NaN never counts as an improvement, and an
absolute threshold for patience (as in Keras, the reference best only moves when an improvement
clears it). `--max-loss-increase x` restricts selection to checkpoints whose validation loss is
within (1 + x) of the lowest loss seen, the rule users apply by hand to avoid picking an
accuracy peak that is already over-fitted. The same rule ranks the epoch ends that
`--swa-select best|greedy` averages. Both objects keep all their state in plain dicts saved with the
training checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable


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
class CheckpointSelector:
    """The evaluation history and the rule that picks one checkpoint from it."""

    metric: str
    max_loss_increase: float | None = None
    history: list[dict] = field(default_factory=list)  # {"step", "epoch", "metrics"}

    @property
    def greater_is_better(self) -> bool:
        return not self.metric.endswith("loss")

    def record(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, "epoch": epoch, "metrics": dict(metrics)})

    def lowest_loss(self) -> float | None:
        losses = [e["metrics"]["loss"] for e in self.history if not math.isnan(e["metrics"]["loss"])]
        return min(losses) if losses else None

    def eligible(self, metrics: dict[str, float]) -> bool:
        """Whether a checkpoint with these metrics may be selected under --max-loss-increase."""
        loss = metrics["loss"]
        if math.isnan(loss) or math.isnan(metrics[self.metric]):
            return False
        if self.max_loss_increase is None:
            return True
        lowest = self.lowest_loss()
        return lowest is None or loss <= lowest * (1.0 + self.max_loss_increase)

    def selected(self) -> dict | None:
        """The selected evaluation: the best metric among eligible ones, the earliest on ties."""
        best = None
        for evaluation in self.history:
            metrics = evaluation["metrics"]
            if self.eligible(metrics) and (
                    best is None or _improves(metrics[self.metric], best["metrics"][self.metric],
                                              self.greater_is_better)):
                best = evaluation
        return best

    def better(self, metrics: dict[str, float], than: dict[str, float]) -> bool:
        """Whether `metrics` beat `than` on the selection metric: strictly, and NaN never does."""
        return _improves(metrics[self.metric], than[self.metric], self.greater_is_better)

    def ranked(self, steps: Iterable[int]) -> list[int]:
        """Those of `steps` that may be selected now, best first (ties: the earlier step first)."""
        latest = {e["step"]: e["metrics"] for e in self.history}
        eligible = [step for step in sorted(set(steps)) if step in latest and self.eligible(latest[step])]
        sign = -1.0 if self.greater_is_better else 1.0
        return sorted(eligible, key=lambda step: sign * latest[step][self.metric])  # stable: ties keep step order

    def may_rank_among_best(self, steps: Iterable[int], k: int) -> set[int]:
        """Those of `steps` that can still be among the `k` best eligible ones when training ends.

        Without --max-loss-increase eligibility never changes, so a step pushed out of the top k stays out;
        with it, a later lower loss can disqualify the leaders and let any eligible step move up. A step
        that is not eligible now never becomes so: the lowest loss only falls.
        """
        ranked = self.ranked(steps)
        return set(ranked if self.max_loss_increase is not None else ranked[:k])

    def may_be_selected_later(self) -> set[int]:
        """Steps whose checkpoints must be kept: the selection can only move among these."""
        if self.max_loss_increase is None:
            chosen = self.selected()
            return {chosen["step"]} if chosen else set()
        return {e["step"] for e in self.history if self.eligible(e["metrics"])}

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
