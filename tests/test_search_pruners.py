"""Median and successive-halving pruning on scripted trial histories."""

import math

from lib.search.pruners import MedianPruner, SuccessiveHalvingPruner, loss_at
from lib.search.trials import Trial, TrialState

MIN, MAX = 1.0, -1.0


def trial(number, curve, state=TrialState.COMPLETE):
    """A trial whose epoch e (from 1) reported curve[e - 1]."""
    return Trial(number, {}, state, reports={e + 1: v for e, v in enumerate(curve)})


COMPLETE = [
    trial(n, [1.0 + 0.1 * n, 0.8 + 0.1 * n, 0.7 + 0.1 * n]) for n in range(5)
]  # medians .9/.7/.6 at e1..3


def test_median_prunes_a_trial_worse_than_the_median_at_its_epoch():
    pruner = MedianPruner(MIN, n_startup_trials=5)
    assert pruner.should_prune(trial(9, [1.3, 1.25], TrialState.RUNNING), COMPLETE)
    assert not pruner.should_prune(trial(9, [1.3, 0.95], TrialState.RUNNING), COMPLETE)  # .95 < median 1.0


def test_median_uses_the_best_value_so_far():
    pruner = MedianPruner(MIN, n_startup_trials=5)
    # Epoch 2 is bad (1.5) but epoch 1 (1.05) beats epoch 2's median (1.0)? No: 1.05 > 1.0 -> prune.
    assert pruner.should_prune(trial(9, [1.05, 1.5], TrialState.RUNNING), COMPLETE)
    # A good first epoch carries the trial: best so far 0.9 < 1.0.
    assert not pruner.should_prune(trial(9, [0.9, 1.5], TrialState.RUNNING), COMPLETE)


def test_median_waits_for_startup_trials_and_warmup_epochs():
    bad = trial(9, [5.0, 5.0], TrialState.RUNNING)
    assert not MedianPruner(MIN, n_startup_trials=6).should_prune(bad, COMPLETE)
    assert not MedianPruner(MIN, n_startup_trials=5, n_warmup_epochs=2).should_prune(bad, COMPLETE)
    assert MedianPruner(MIN, n_startup_trials=5, n_warmup_epochs=1).should_prune(bad, COMPLETE)
    # Every second epoch after the warm-up: checked at 2, not at 3.
    every_other = MedianPruner(MIN, n_startup_trials=5, n_warmup_epochs=1, interval_epochs=2)
    assert every_other.should_prune(bad, COMPLETE)
    assert not every_other.should_prune(trial(9, [5.0, 5.0, 5.0], TrialState.RUNNING), COMPLETE)


def test_median_is_goal_aware():
    accuracy = [trial(n, [0.5 + 0.1 * n, 0.6 + 0.1 * n]) for n in range(5)]  # median .7/.8
    pruner = MedianPruner(MAX, n_startup_trials=5)
    assert pruner.should_prune(trial(9, [0.6, 0.75], TrialState.RUNNING), accuracy)
    assert not pruner.should_prune(trial(9, [0.6, 0.85], TrialState.RUNNING), accuracy)


def test_running_and_pruned_trials_are_not_the_median_reference():
    others = COMPLETE + [trial(n, [0.1, 0.1], TrialState.RUNNING) for n in range(5, 15)]
    others += [trial(n, [0.1, 0.1], TrialState.PRUNED) for n in range(15, 25)]
    assert not MedianPruner(MIN, n_startup_trials=5).should_prune(
        trial(30, [1.3, 0.95], TrialState.RUNNING), others
    )


def test_a_short_complete_trial_is_carried_forward_at_later_epochs():
    short = trial(0, [0.5, 0.4])  # a 2-epoch schedule that finished
    assert loss_at(short, 4, MIN) == 0.4
    assert loss_at(trial(1, [0.5, 0.4], TrialState.PRUNED), 4, MIN) is None
    assert loss_at(trial(2, [0.5, 0.4], TrialState.RUNNING), 4, MIN) is None
    assert loss_at(trial(3, [0.5, 0.6, 0.3]), 2, MIN) == 0.5
    assert loss_at(trial(3, [0.5, 0.6, 0.3]), 2, MIN, best=False) == 0.6
    # So a long trial at epoch 4 must beat what the short ones ended with.
    shorts = [trial(n, [0.5, 0.4 + 0.01 * n]) for n in range(5)]
    assert MedianPruner(MIN).should_prune(trial(9, [0.9, 0.8, 0.7, 0.6], TrialState.RUNNING), shorts)


def test_nan_prunes():
    assert MedianPruner(MIN, n_startup_trials=5).should_prune(
        trial(9, [math.nan], TrialState.RUNNING), COMPLETE
    )
    assert SuccessiveHalvingPruner(MIN).should_prune(trial(9, [math.nan], TrialState.RUNNING), [])


def test_halving_rungs():
    assert SuccessiveHalvingPruner(MIN, 1, 3).rungs(30) == [1, 3, 9, 27]
    assert SuccessiveHalvingPruner(MIN, 2, 2, min_early_stopping_rate=1).rungs(20) == [4, 8, 16]


def test_halving_first_at_a_rung_continues_later_ones_must_rank_in_the_top_third():
    pruner = SuccessiveHalvingPruner(MIN, min_resource=1, reduction_factor=3)
    assert not pruner.should_prune(trial(0, [0.9], TrialState.RUNNING), [])
    # Two at the rung: floor(2 / 3) = 0, so the newcomer must be the best.
    assert pruner.should_prune(trial(1, [1.0], TrialState.RUNNING), [trial(0, [0.9])])
    assert not pruner.should_prune(trial(1, [0.8], TrialState.RUNNING), [trial(0, [0.9])])
    # Nine at the rung, any state: the top three continue.
    eight = [
        trial(n, [0.1 * n], state)
        for n, state in zip(range(1, 9), [TrialState.PRUNED, TrialState.RUNNING] * 4)
    ]
    assert not pruner.should_prune(trial(9, [0.25], TrialState.RUNNING), eight)  # 3rd of 0.1, 0.2, 0.25, ...
    assert pruner.should_prune(trial(9, [0.35], TrialState.RUNNING), eight)  # 4th


def test_halving_only_decides_when_a_report_reaches_a_rung():
    pruner = SuccessiveHalvingPruner(MIN, min_resource=1, reduction_factor=3)
    leaders = [trial(n, [0.1, 0.1, 0.1]) for n in range(6)]
    assert pruner.should_prune(trial(9, [1.0], TrialState.RUNNING), leaders)  # epoch 1 is a rung
    assert not pruner.should_prune(trial(9, [1.0, 1.0], TrialState.RUNNING), leaders)  # epoch 2 is not
    assert pruner.should_prune(trial(9, [1.0, 1.0, 1.0], TrialState.RUNNING), leaders)  # epoch 3 is
    # A trial that skipped reporting epoch 3 is still judged when it reports epoch 4.
    skipped = Trial(9, {}, TrialState.RUNNING, reports={1: 0.2, 2: 1.0, 4: 1.0})
    assert pruner.should_prune(skipped, leaders)


def test_halving_strict_compares_the_current_value():
    others = [trial(n, [0.5, 0.5, 0.5]) for n in range(3)]
    recovering = trial(9, [0.4, 0.9, 0.9], TrialState.RUNNING)
    assert not SuccessiveHalvingPruner(MIN, 1, 3).should_prune(recovering, others)
    assert SuccessiveHalvingPruner(MIN, 1, 3, best_so_far=False).should_prune(recovering, others)
