"""Early stopping (patience on val loss) and best-checkpoint selection, table-driven."""

import math

import pytest

from lib.selection import BestTracker, EarlyStopping


@pytest.mark.parametrize("losses, patience, threshold, stops_at", [
    ([1.0, 0.9, 0.8, 0.7], 1, 0.0, None),
    ([1.0, 0.9, 0.95, 0.7], 1, 0.0, 2),
    ([1.0, 0.9, 0.95, 0.96, 0.5], 2, 0.0, 3),
    ([1.0, 0.9, 0.95, 0.85, 0.96, 0.97], 2, 0.0, 5),
    ([1.0, 0.99, 0.985, 0.97], 2, 0.02, 2),   # improvements below the threshold count as none
    ([1.0, math.nan, math.nan], 2, 0.0, 2),  # NaN never improves
    ([1.0, 1.0, 1.0], 2, 0.0, 2),            # ties do not improve
    ([1.0, 2.0, 3.0], None, 0.0, None),      # no patience: never stops
])
def test_early_stopping(losses, patience, threshold, stops_at):
    stopper = EarlyStopping(patience, threshold)
    stopped = [i for i, loss in enumerate(losses) if stopper.update(loss)]
    assert (stopped[0] if stopped else None) == stops_at


def test_early_stopping_state_round_trip():
    stopper = EarlyStopping(3, 0.01)
    for loss in (1.0, 0.9, 0.95):
        stopper.update(loss)
    restored = EarlyStopping(3, 0.01)
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def test_best_loss_is_lowest_and_ties_keep_the_earlier_step():
    tracker = BestTracker("loss")
    updates = [tracker.update({"loss": v}, step, step / 10) for step, v in
               [(10, 1.0), (20, 0.8), (30, 0.8), (40, math.nan), (50, 0.9)]]
    assert updates == [True, True, False, False, False]
    assert (tracker.best_value, tracker.best_step) == (0.8, 20)


def test_best_accuracy_is_highest():
    tracker = BestTracker("accuracy")
    for step, value in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7)]:
        tracker.update({"accuracy": value, "loss": 0.0}, step, float(step))
    assert (tracker.best_value, tracker.best_step) == (0.7, 2)
