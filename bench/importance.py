"""Our parameter importance (lib/search/importance.py) next to Optuna's fANOVA on the same trials.

    python bench/importance.py runs/<sweep>
    python -m bench.importance runs/<sweep> --seeds 0 1 2 --trees 64

An Optuna study is built from the sweep journal's complete trials (`optuna.trial.create_trial`, each
parameter with the Optuna distribution of its sweep-space entry), and both rankings are printed side
by side with their Spearman rank correlation. Shares are averaged over `--seeds` (the forest's seed).

Both fit a random forest (64 trees, depth 64) and compute each tree's main effects exactly; what
differs is the encoding. Optuna works in raw values (`transform_log=False`) and one-hot encodes a
choice, summing its columns' shares; we search a log-scaled range in log(value) and give a choice one
index column. The middle column, "ours, linear", is our code in raw values: where it matches Optuna,
the two implementations agree and any gap to "ours" is the log scale (uniform over 1e-4..1e-2 in raw
values puts 91% of its mass in the top decade, so Optuna judges a learning rate mostly above 1e-3).
Optuna is a benchmark-only extra (bench/requirements.txt); the product never imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/importance.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

import numpy as np
from scipy.stats import spearmanr

from lib.search.importance import MIN_TRIALS, domain, encode, fanova_shares
from lib.search.space import Parameter
from lib.search.sweep import open_sweep
from lib.search.trials import TrialState


def optuna_distribution(parameter: Parameter):
    """The Optuna distribution that holds exactly the values this sweep parameter can take."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if parameter.is_choice:
        return CategoricalDistribution(list(parameter.values))
    if parameter.step is not None and not parameter.log:
        first, last = parameter.grid_ends()
        if parameter.integer:
            return IntDistribution(int(first), int(last), step=int(parameter.step))
        return FloatDistribution(first, last, step=parameter.step)
    if parameter.step is not None:  # a q grid in log scale: Optuna has no log with a float step
        first, last = parameter.grid_ends()
        return FloatDistribution(first, last, log=True)
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log)


def optuna_shares(params: tuple[Parameter, ...], trials: list, direction: str, n_trees: int, seed: int) -> np.ndarray:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {p.name: optuna_distribution(p) for p in params}
    study = optuna.create_study(direction=direction)
    for trial in trials:
        values = {}
        for p in params:
            value, dist = trial.params[p.name], distributions[p.name]
            if isinstance(dist, optuna.distributions.FloatDistribution):
                value = min(max(float(value), dist.low), dist.high)  # float noise at a bound
            values[p.name] = value
        study.add_trial(optuna.trial.create_trial(params=values, distributions=distributions, value=trial.value))
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, max_depth=64, seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return np.array([found.get(p.name, 0.0) for p in params])


def linear_features(params: tuple[Parameter, ...], trials: list) -> tuple[np.ndarray, np.ndarray]:
    """Our encoding without the log scale: what Optuna's fANOVA sees for every non-choice parameter."""
    x = np.array([[float(t.params[p.name]) if p.log else encode(p, t.params[p.name]) for p in params]
                  for t in trials])
    bounds = np.array([(p.low, p.high) if p.log else domain(p) for p in params])
    return x, bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder (runs/<sweep>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="forest seeds to average over (default: 0)")
    parser.add_argument("--trees", type=int, default=64, help="trees per forest (default: 64, as Optuna)")
    args = parser.parse_args(argv)
    _, journal, space = open_sweep(args.sweep)
    params = space.searched
    done = [t for t in journal.trials() if t.state is TrialState.COMPLETE and t.has_value]
    if len(done) < MIN_TRIALS or len(params) < 2:
        print(f"{args.sweep}: {len(done)} complete trial(s), {len(params)} searched parameter(s); "
              f"a comparison needs {MIN_TRIALS} trials and 2 parameters")
        return 1
    y = np.array([t.value for t in done])
    ours_x = np.array([[encode(p, t.params[p.name]) for p in params] for t in done])
    ours_bounds = np.array([domain(p) for p in params])
    raw_x, raw_bounds = linear_features(params, done)
    columns = {
        "ours": np.mean([fanova_shares(ours_x, y, ours_bounds, args.trees, s) for s in args.seeds], axis=0),
        "ours, linear": np.mean([fanova_shares(raw_x, y, raw_bounds, args.trees, s) for s in args.seeds], axis=0),
        "optuna fanova": np.mean([optuna_shares(params, done, space.metric.goal, args.trees, s)
                                  for s in args.seeds], axis=0),
    }
    print(f"{args.sweep}: {len(done)} complete trials, metric {space.metric.name} ({space.metric.goal}), "
          f"{args.trees} trees, seeds {' '.join(map(str, args.seeds))}\n")
    width = max(len(p.name) for p in params)
    print(f"{'parameter'.ljust(width)}  " + "  ".join(f"{name:>13}" for name in columns))
    for i in np.argsort(-columns["ours"], kind="stable"):
        print(f"{params[i].name.ljust(width)}  " + "  ".join(f"{shares[i]:13.1%}" for shares in columns.values()))
    print()
    for name in ("ours", "ours, linear"):
        rho = spearmanr(columns[name], columns["optuna fanova"]).statistic
        print(f"Spearman rank correlation, {name} vs optuna fanova: {rho:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
