"""Early stopping (patience on val loss) and best-checkpoint selection, table-driven."""

import math

import pytest

from lib.finetune.selection import CheckpointSelector, EarlyStopping


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


def _selector(metric, history, max_loss_increase=None):
    selector = CheckpointSelector(metric, max_loss_increase)
    for step, (loss, accuracy) in enumerate(history, start=1):
        selector.record(step * 10, float(step), {"loss": loss, "accuracy": accuracy})
    return selector


def test_lowest_loss_is_selected_and_ties_keep_the_earlier_step():
    selector = _selector("loss", [(1.0, 0.5), (0.8, 0.6), (0.8, 0.7), (math.nan, 0.9), (0.9, 0.8)])
    assert selector.selected()["step"] == 20
    assert selector.may_be_selected_later() == {20}


def test_highest_accuracy_is_selected_without_a_loss_rule():
    selector = _selector("accuracy", [(0.9, 0.60), (0.7, 0.65), (0.75, 0.66), (1.2, 0.70), (1.3, 0.70)])
    assert selector.selected()["step"] == 40


def test_max_loss_increase_picks_the_best_accuracy_that_has_not_overfitted():
    # lowest loss 0.70 at step 20: with 10% allowed, losses up to 0.77 are eligible
    history = [(0.90, 0.60), (0.70, 0.65), (0.76, 0.68), (0.78, 0.71), (1.20, 0.72)]
    selector = _selector("accuracy", history, max_loss_increase=0.1)
    assert selector.selected()["step"] == 30
    assert selector.may_be_selected_later() == {20, 30}
    assert _selector("accuracy", history, max_loss_increase=0.2).selected()["step"] == 40


def test_the_selection_moves_back_when_a_lower_loss_makes_it_ineligible():
    selector = _selector("accuracy", [(0.80, 0.60), (0.85, 0.70)], max_loss_increase=0.1)
    assert selector.selected()["step"] == 20
    selector.record(30, 3.0, {"loss": 0.76, "accuracy": 0.65})  # 0.85 > 0.76 * 1.1: step 20 drops out
    assert selector.selected()["step"] == 30
    selector.record(40, 4.0, {"loss": 0.70, "accuracy": 0.50})  # 0.76 <= 0.77 still; 0.80 > 0.77 drops
    assert selector.selected()["step"] == 30
    assert selector.may_be_selected_later() == {30, 40}


def test_selector_state_round_trip():
    selector = _selector("accuracy", [(0.8, 0.6), (0.7, 0.7)], max_loss_increase=0.05)
    restored = CheckpointSelector("loss")
    restored.load_state_dict(selector.state_dict())
    assert restored == selector and restored.selected()["step"] == 20
