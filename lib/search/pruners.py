"""Pruners: stop a trial after an epoch when its validation metric is unpromising.

A pruner is a pure function of the trial table (each trial's per-epoch reports), so it needs no
state of its own and resumes with the journal. Call `should_prune` after each epoch's report except
the last one (pruning a finished schedule saves nothing). Both pruners are goal-aware through the
sign of the metric.

Comparing trials whose schedules differ in length (num_train_epochs 5 to 12, say): we compare at
the same epoch, i.e. the same training resource spent, which is what successive halving's rungs
mean, and every trial reports epoch 1 whatever its length, so the earliest (cheapest) decision is
possible for all of them. A trial's value at epoch k is its best reported value up to k, because a
trial's result is its best checkpoint. A complete trial that ended before epoch k keeps its final
best value at k: it can no longer improve, and that value is what a longer trial has to beat. The
known bias: at a given epoch a long schedule still has a higher learning rate than a short one, so
early comparisons favour short runs; warm-up epochs (median) or a later first rung (halving) reduce
it. The alternative, comparing at the same fraction of each schedule, would pit a short run's epoch 1
against a long run's epoch 3 (three times the training), and could not decide anything at epoch 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from lib.search.space import SweepSpace
from lib.search.trials import Trial, TrialState


class Pruner(Protocol):
    def should_prune(self, trial: Trial, trials: Sequence[Trial]) -> bool:
        """Whether `trial`, at its last reported epoch, should stop; `trials` is the table."""


def loss_at(trial: Trial, epoch: int, sign: float, best: bool = True) -> float | None:
    """The trial's loss (metric times sign) at `epoch`, or None if it has none to compare there.

    `best` takes the best report up to the epoch, otherwise the latest one. A complete trial that
    stopped earlier is carried forward; a running or pruned trial that has not reached the epoch
    has no value.
    """
    if trial.last_epoch < epoch and trial.state is not TrialState.COMPLETE:
        return None
    seen = [sign * v for e, v in sorted(trial.reports.items()) if e <= epoch]
    if not seen:
        return None
    if not best:
        return seen[-1]
    return math.nan if any(math.isnan(v) for v in seen) else min(seen)


class MedianPruner:
    """Prune when the trial's best-so-far is worse than the median of complete trials at that epoch.

    Nothing is pruned before `n_startup_trials` trials completed, or at epochs up to
    `n_warmup_epochs`; after that, checks happen every `interval_epochs`.
    """

    def __init__(
        self,
        sign: float,
        n_startup_trials: int = 5,
        n_warmup_epochs: int = 0,
        interval_epochs: int = 1,
        n_min_trials: int = 1,
    ) -> None:
        self.sign = sign
        self.n_startup_trials = n_startup_trials
        self.n_warmup_epochs = n_warmup_epochs
        self.interval_epochs = interval_epochs
        self.n_min_trials = n_min_trials

    def should_prune(self, trial: Trial, trials: Sequence[Trial]) -> bool:
        epoch = trial.last_epoch
        if epoch <= self.n_warmup_epochs or (epoch - self.n_warmup_epochs - 1) % self.interval_epochs:
            return False
        complete = [t for t in trials if t.state is TrialState.COMPLETE and t.number != trial.number]
        if len(complete) < self.n_startup_trials:
            return False
        mine = loss_at(trial, epoch, self.sign)
        if mine is None:
            return False
        if math.isnan(mine):
            return True
        others = [v for t in complete if (v := loss_at(t, epoch, self.sign)) is not None]
        others = [v for v in others if not math.isnan(v)]
        return len(others) >= self.n_min_trials and mine > float(np.median(others))


class SuccessiveHalvingPruner:
    """Asynchronous successive halving: at each rung a trial must rank in the top 1/eta.

    Rungs sit at epochs ceil(min_resource * eta**(min_early_stopping_rate + k)). When a report
    reaches a rung, the trial competes with every trial (any state) that has a value there, itself
    included; it continues if it is among the best floor(n / eta), or is the best when that is 0.
    """

    def __init__(
        self,
        sign: float,
        min_resource: int = 1,
        reduction_factor: float = 3,
        min_early_stopping_rate: int = 0,
        best_so_far: bool = True,
    ) -> None:
        if min_resource < 1 or reduction_factor <= 1:
            raise ValueError("successive halving needs min_resource >= 1 and reduction_factor > 1")
        self.sign = sign
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.min_early_stopping_rate = min_early_stopping_rate
        self.best_so_far = best_so_far

    def rungs(self, up_to: int) -> list[int]:
        """The rung epochs up to `up_to`."""
        out: list[int] = []
        k = self.min_early_stopping_rate
        while (rung := math.ceil(self.min_resource * self.reduction_factor**k - 1e-9)) <= up_to:
            out.append(rung)
            k += 1
        return out

    def should_prune(self, trial: Trial, trials: Sequence[Trial]) -> bool:
        epoch = trial.last_epoch
        previous = max((e for e in trial.reports if e < epoch), default=0)
        crossed = [r for r in self.rungs(epoch) if r > previous]
        mine = loss_at(trial, epoch, self.sign, self.best_so_far)
        if crossed and (mine is None or math.isnan(mine)):
            return True
        for rung in crossed:
            values = [mine]
            for other in trials:
                if other.number != trial.number:
                    value = loss_at(other, rung, self.sign, self.best_so_far)
                    if value is not None and not math.isnan(value):
                        values.append(value)
            keep = math.floor(len(values) / self.reduction_factor)
            if mine > sorted(values)[max(keep, 1) - 1]:
                return True
        return False


def pruner_for(space: SweepSpace) -> Pruner | None:
    """W&B `early_terminate: {type: hyperband, min_iter, eta}` as successive halving over epochs.

    One asynchronous bracket, not W&B's per-band thresholds over several brackets: with ~20 trials
    more brackets starve each other. `strict: true` compares the value at the rung, as W&B does;
    otherwise (and by default) the best value so far, consistent with a trial's result.
    """
    terminate = space.early_terminate
    if terminate is None:
        return None
    return SuccessiveHalvingPruner(
        space.metric.sign,
        min_resource=terminate.min_resource,
        reduction_factor=terminate.eta,
        best_so_far=not terminate.strict,
    )
