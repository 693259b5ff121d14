"""Hyperparameter search: W&B-style sweep configs, random/grid/TPE samplers, pruners, the journal,
workers and their GPUs, trials launched under torchrun, and the report (charts, parameter importance)."""

from lib.search.journal import Journal, SweepHeader, default_worker_id
from lib.search.pruners import MedianPruner, Pruner, SuccessiveHalvingPruner, pruner_for
from lib.search.samplers import GridSampler, RandomSampler, Sampler, trial_rng
from lib.search.space import EarlyTerminate, Metric, Parameter, SweepSpace, load_sweep_config, parse_sweep_config
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
    "Journal",
    "MedianPruner",
    "Metric",
    "Parameter",
    "Pruner",
    "RandomSampler",
    "Sampler",
    "SuccessiveHalvingPruner",
    "SweepHeader",
    "SweepSpace",
    "TPESampler",
    "Trial",
    "TrialState",
    "default_worker_id",
    "load_sweep_config",
    "make_sampler",
    "parse_sweep_config",
    "pruner_for",
    "trial_rng",
]
