"""Pruning benchmark: epochs spent and final regret, with and without each pruner.

    python -m bench.pruning                          # 30 seeds x 100 trials
    python -m bench.pruning --seeds 10 --trials 40   # quick

Each trial is a config of the user's sweep (experiments/sweep_seed.json) searched by our TPE, run
for its own num_train_epochs on a synthetic learning curve tied to the sweep surrogate of
bench.search. After epoch t of E, the validation loss is

    f(x) + A(x) * (1 - S(t) / S(E)) ** beta(x) + noise,     noise ~ N(0, 0.003^2)

f(x) is the surrogate loss (the converged value), S(t) the learning-rate integral up to epoch t
under the config's scheduler and warm-up, so a long schedule has done less of its work by a given
epoch, A(x) = 0.1 + 2 (f(x) - 0.3) makes worse configs start worse, and beta(x) grows with the
learning rate (scaled by the effective batch), so a low-LR run looks poor early and recovers late.
Early ranks therefore cross: the pruners are tested on curves where stopping early can be wrong.

A trial's result is its best reported value; the sweep's pick is the complete trial with the best
result; regret is that trial's noise-free f minus the optimum f*. Printed: at the user's 20 trials,
epochs and regret per pruner; then how many epochs each pruner needs to match the regret that no
pruning reaches with 20 and 40 trials (the saving factor), and regret at fixed epoch budgets.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/pruning.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import math
import multiprocessing
import time
from typing import Any

import numpy as np

from bench.search import SEED_CONFIG, sweep_loss, sweep_optimum
from lib.search import SweepSpace, TPESampler, Trial, TrialState, load_sweep_config
from lib.search.pruners import MedianPruner, Pruner, SuccessiveHalvingPruner, pruner_for

NOISE = 0.003
STEPS_PER_EPOCH_AT_32 = 250  # 8000 examples at an effective batch of 32


def pruners(space: SweepSpace) -> dict[str, Pruner | None]:
    sign = space.metric.sign
    return {
        "none": None,
        "median": MedianPruner(sign, n_startup_trials=5),
        "median_warmup1": MedianPruner(sign, n_startup_trials=5, n_warmup_epochs=1),
        "asha_seed_config": pruner_for(space),  # hyperband min_iter 2, eta 3 -> rungs 2, 6
        "asha_1_3": SuccessiveHalvingPruner(sign, min_resource=1, reduction_factor=3),
        "asha_1_4": SuccessiveHalvingPruner(sign, min_resource=1, reduction_factor=4),
    }


def lr_integral(params: dict[str, Any], epochs: np.ndarray) -> np.ndarray:
    """Learning-rate multiplier integrated from 0 to each epoch (in epochs)."""
    total = params["num_train_epochs"]
    effective = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
    warmup = min(1.0, params["warmup_steps"] / (total * STEPS_PER_EPOCH_AT_32 * 32 / effective))
    grid = np.linspace(0, 1, 2001)
    after = np.clip((grid - warmup) / max(1e-9, 1 - warmup), 0, 1)
    decay = {
        "linear": 1 - after,
        "cosine": 0.5 * (1 + np.cos(math.pi * after)),
        "constant": np.ones_like(after),
    }
    multiplier = np.where(grid < warmup, grid / max(warmup, 1e-9), decay[params["lr_scheduler_type"]])
    cumulative = np.concatenate([[0.0], np.cumsum((multiplier[1:] + multiplier[:-1]) / 2 * np.diff(grid))])
    return total * np.interp(epochs / total, grid, cumulative)


def learning_curve(params: dict[str, Any]) -> np.ndarray:
    """Noise-free validation loss after each epoch; the last one equals the surrogate f(x)."""
    final = sweep_loss(params)
    epochs = np.arange(1, params["num_train_epochs"] + 1, dtype=float)
    done = lr_integral(params, epochs) / lr_integral(params, epochs[-1:])
    effective = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
    speed = params["learning_rate"] / 2e-5 * math.sqrt(32 / effective)
    beta = 1 + 3 * speed / (1 + speed)
    return final + (0.1 + 2 * (final - 0.3)) * (1 - np.clip(done, 0, 1)) ** beta


def run(method: str, seed: int, n_trials: int) -> dict[str, np.ndarray]:
    """One sequential sweep; per trial: epochs run, pruned or not, and the incumbent's f."""
    space = load_sweep_config(SEED_CONFIG)
    pruner = pruners(space)[method]
    sampler = TPESampler(space, seed)
    noise = np.random.default_rng([seed, 7])
    trials: list[Trial] = []
    epochs, pruned, true_f, incumbent = (np.zeros(n_trials) for _ in range(4))
    for n in range(n_trials):
        trial = Trial(n, sampler.suggest(n, trials), TrialState.RUNNING)
        trials.append(trial)
        curve = learning_curve(trial.params) + noise.normal(0, NOISE, trial.params["num_train_epochs"])
        for epoch, value in enumerate(curve, start=1):
            trial.reports[epoch] = float(value)
            if epoch < len(curve) and pruner is not None and pruner.should_prune(trial, trials):
                trial.state, trial.value = TrialState.PRUNED, float(value)
                break
        else:
            trial.state, trial.value = TrialState.COMPLETE, float(curve.min())
        epochs[n], pruned[n], true_f[n] = (
            trial.last_epoch,
            trial.state is TrialState.PRUNED,
            sweep_loss(trial.params),
        )
        complete = [t for t in trials if t.state is TrialState.COMPLETE]
        incumbent[n] = true_f[min(complete, key=lambda t: t.value).number] if complete else math.inf
    return {"epochs": epochs, "pruned": pruned, "true_f": true_f, "incumbent": incumbent}


def _job(args: tuple[str, int, int]) -> tuple[str, int, dict[str, np.ndarray]]:
    method, seed, n_trials = args
    return method, seed, run(method, seed, n_trials)


def epochs_to_match(cum_epochs: np.ndarray, regret: np.ndarray, target: float) -> float:
    """Mean epochs at the first trial count whose mean regret reaches `target` (inf if never)."""
    reached = np.nonzero(regret.mean(axis=0) <= target)[0]
    return float(cum_epochs[:, reached[0]].mean()) if len(reached) else math.inf


def saving_interval(
    base_cum: np.ndarray,
    base_regret: np.ndarray,
    cum: np.ndarray,
    regret: np.ndarray,
    trials: int,
    rng: np.random.Generator,
    reps: int = 1000,
) -> tuple[float, float]:
    """95% interval of the saving factor, resampling the seeds of both sweeps independently."""
    n = len(base_cum)
    factors = np.empty(reps)
    for r in range(reps):
        b, p = rng.integers(n, size=n), rng.integers(n, size=n)
        target = base_regret[b, trials - 1].mean()
        factors[r] = base_cum[b, trials - 1].mean() / epochs_to_match(cum[p], regret[p], target)
    return float(np.quantile(factors, 0.025)), float(np.quantile(factors, 0.975))


def regret_at_budget(cum_epochs: np.ndarray, regret: np.ndarray, budget: float) -> float:
    """Mean regret of the incumbent after the last trial that fits in `budget` epochs."""
    values = []
    for cum, reg in zip(cum_epochs, regret):
        fits = np.nonzero(cum <= budget)[0]
        values.append(reg[fits[-1]] if len(fits) else np.nan)
    return float(np.nanmean(values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args()

    space = load_sweep_config(SEED_CONFIG)
    optimum = sweep_optimum(space)
    methods = list(pruners(space))
    results: dict[str, list[dict[str, np.ndarray]]] = {m: [{}] * args.seeds for m in methods}
    start = time.perf_counter()
    jobs = [(m, s, args.trials) for m in methods for s in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for method, seed, result in pool.imap_unordered(_job, jobs):
            results[method][seed] = result
    print(f"{len(jobs)} sweeps of {args.trials} trials in {time.perf_counter() - start:.0f} s")

    stacked = {m: {k: np.stack([r[k] for r in rs]) for k in rs[0]} for m, rs in results.items()}
    cum = {m: np.cumsum(s["epochs"], axis=1) for m, s in stacked.items()}
    regret = {m: s["incumbent"] - optimum for m, s in stacked.items()}
    n20 = min(20, args.trials) - 1
    print(f"\nAt {n20 + 1} trials, mean over {args.seeds} seeds")
    print(f"{'pruner':<18}{'epochs':>10}{'pruned %':>10}{'regret':>20}{'false prunes %':>16}")
    for m in methods:
        s = stacked[m]
        false = []
        for seed in range(args.seeds):
            # A false prune: a pruned trial whose true f beats the incumbent the sweep ended with.
            cut = s["pruned"][seed, : n20 + 1] == 1
            false.extend(s["true_f"][seed, : n20 + 1][cut] < s["incumbent"][seed, n20])
        r = regret[m][:, n20]
        print(
            f"{m:<18}{cum[m][:, n20].mean():>10.1f}{100 * s['pruned'][:, : n20 + 1].mean():>10.1f}"
            f"{r.mean():>12.4f} ± {r.std(ddof=1) / math.sqrt(len(r)):.4f}"
            f"{100 * np.mean(false) if false else 0.0:>16.1f}"
        )
    rng = np.random.default_rng(0)
    for trials in (20, 40):
        if trials > args.trials:
            continue
        target = regret["none"][:, trials - 1].mean()
        base = cum["none"][:, trials - 1].mean()
        print(f"\nEpochs to reach no pruning's mean regret after {trials} trials", end=" ")
        print(f"({target:.4f}, in {base:.0f} epochs); saving = {base:.0f} / epochs, [bootstrap 95%]:")
        for m in methods[1:]:
            needed = epochs_to_match(cum[m], regret[m], target)
            low, high = saving_interval(cum["none"], regret["none"], cum[m], regret[m], trials, rng)
            print(f"  {m:<18}{needed:>8.0f} epochs  saving x{base / needed:.2f} [{low:.2f}, {high:.2f}]")
    budgets = (50, 100, 200, 400)
    print("\nMean regret at a fixed budget of epochs:")
    print(f"{'pruner':<18}" + "".join(f"{b:>10}" for b in budgets))
    for m in methods:
        print(f"{m:<18}" + "".join(f"{regret_at_budget(cum[m], regret[m], b):>10.4f}" for b in budgets))


if __name__ == "__main__":
    main()
