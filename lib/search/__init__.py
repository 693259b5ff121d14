"""Hyperparameter search: W&B-style sweep configs, random/grid/TPE samplers, pruners, the journal."""

from lib.search.samplers import GridSampler, RandomSampler, Sampler, trial_rng
from lib.search.space import (
    EarlyTerminate,
    Metric,
    Parameter,
    SweepSpace,
    load_sweep_config,
    parse_sweep_config,
)
from lib.search.tpe import TPESampler
from lib.search.trials import Trial, TrialState


def make_sampler(space: SweepSpace, seed: int, n_startup_trials: int = 5) -> Sampler:
    """The sampler for `space.method`: random, grid, or bayes (our TPE)."""
    if space.method == "grid":
        return GridSampler(space)
    if space.method == "random":
        return RandomSampler(space, seed)
    return TPESampler(space, seed, n_startup_trials=n_startup_trials)


__all__ = [
    "EarlyTerminate",
    "GridSampler",
    "Metric",
    "Parameter",
    "RandomSampler",
    "Sampler",
    "SweepSpace",
    "TPESampler",
    "Trial",
    "TrialState",
    "load_sweep_config",
    "make_sampler",
    "parse_sweep_config",
    "trial_rng",
]
