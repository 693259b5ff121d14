"""Benchmark our TPE against Optuna's TPESampler (v5 defaults) and random search.

    python -m bench.search                      # 30 seeds x 200 trials, the reported numbers
    python -m bench.search --seeds 10 --trials 100 --workers 2   # a quick run

Problems: Branin, Hartmann-6, a mixed Ackley-7 (int and categorical parameters) and a surrogate of
the user's own sweep parsed from experiments/sweep_seed.json. Every problem is a W&B sweep config
parsed by lib.search, and Optuna gets the same space. Each sampler runs with its defaults (ours:
5 random startup trials, Optuna: 10). Paired design: within a seed every method starts from the same
random configurations (our random sampler's, enqueued into Optuna for its 10 startup trials; our
TPE's 5 are the first 5 of them). Prints mean regret at N = 10, 20, 50, 100, 200, the geometric-mean
ratio of mean regrets ours/Optuna and ours/random with a bootstrap-over-seeds 95% interval, per
problem paired Wilcoxon p-values (Holm-corrected), and milliseconds per suggestion.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/search.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.search import RandomSampler, SweepSpace, TPESampler, Trial, TrialState, parse_sweep_config
from lib.search.space import load_sweep_config

SEED_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "sweep_seed.json"
CHECKPOINTS = (10, 20, 50, 100, 200)
METHODS = ("ours_tpe", "optuna_tpe", "ours_random", "optuna_random")
OPTUNA_STARTUP = 10  # Optuna's default n_startup_trials


@dataclass(frozen=True)
class Problem:
    name: str
    space: SweepSpace
    objective: Callable[[dict[str, Any]], float]
    optimum: float


def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p: dict[str, Any]) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-(_H6_ALPHA * np.exp(-(_H6_A * (x - _H6_P) ** 2).sum(axis=1))).sum())


_ACKLEY_OFFSET = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 1.5}


def mixed_ackley(p: dict[str, Any]) -> float:
    x = np.array([p["f0"], p["f1"], p["f2"], p["f3"], p["i0"], p["i1"]], dtype=float)
    value = -20 * math.exp(-0.2 * math.sqrt((x**2).mean())) - math.exp(np.cos(2 * math.pi * x).mean())
    return value + 20 + math.e + _ACKLEY_OFFSET[p["c"]]


# The sweep surrogate: eval loss as a sum of smooth terms. Only learning rate, epochs, batch size,
# accumulation, warm-up and scheduler interact (the optimal LR moves with the effective batch and the
# epochs, a constant schedule punishes a too-high LR); the other five are separable bowls.
_TRAIN_EXAMPLES = 8000


def _lr_term(lr: np.ndarray, epochs: int, effective_batch: int, schedule: str) -> np.ndarray:
    log_opt = math.log10(2e-5) + 0.5 * math.log10(effective_batch / 32) - 0.3 * math.log10(epochs / 8)
    d = np.log10(lr) - log_opt
    loss = np.where(d < 0, 0.08 * d**2, 0.25 * d**2) + 0.01 * math.log(epochs / 9) ** 2
    if schedule == "constant":
        return loss + 0.02 + 0.1 * np.maximum(d, 0) ** 2
    return loss - 0.005 if schedule == "cosine" else loss


def _warmup_term(warmup: np.ndarray, epochs: int, effective_batch: int) -> np.ndarray:
    total_steps = epochs * _TRAIN_EXAMPLES / effective_batch
    return 0.02 * np.log(warmup / total_steps / 0.06) ** 2


def sweep_loss(p: dict[str, Any]) -> float:
    epochs = p["num_train_epochs"]
    effective = p["per_device_train_batch_size"] * p["gradient_accumulation_steps"]
    value = 0.30 + float(_lr_term(np.asarray(p["learning_rate"]), epochs, effective, p["lr_scheduler_type"]))
    value += float(_warmup_term(np.asarray(p["warmup_steps"]), epochs, effective))
    value += 0.5 * (p["weight_decay"] - 0.03) ** 2 + 0.004 * (p["focal_loss_gamma"] - 0.8) ** 2
    value += 0.3 * (p["label_smoothing_factor"] - 0.05) ** 2 + 0.2 * (p["dropout_rate"] - 0.12) ** 2
    return value + 0.01 * ((p["num_rare_words_to_remove"] - 600) / 1000) ** 2


def sweep_optimum(space: SweepSpace) -> float:
    """Exact minimum: the separable bowls have interior optima on their grids (0), so only the
    interacting terms need a search: dense in log LR, the whole warm-up grid, every combination."""
    by_name = {p.name: p for p in space.parameters}
    lr = by_name["learning_rate"]
    lrs = np.exp(np.linspace(math.log(lr.low), math.log(lr.high), 200001))
    warmups = np.asarray(by_name["warmup_steps"].grid(), dtype=float)
    best = math.inf
    for epochs in by_name["num_train_epochs"].values:
        for batch in by_name["per_device_train_batch_size"].values:
            for accum in by_name["gradient_accumulation_steps"].values:
                for schedule in by_name["lr_scheduler_type"].values:
                    value = _lr_term(lrs, epochs, batch * accum, schedule).min()
                    value += _warmup_term(warmups, epochs, batch * accum).min()
                    best = min(best, float(value))
    return 0.30 + best


def _floats(names: list[str], low: float, high: float) -> dict[str, Any]:
    return {n: {"distribution": "uniform", "min": low, "max": high} for n in names}


def problems() -> list[Problem]:
    def config(parameters: dict[str, Any]) -> SweepSpace:
        return parse_sweep_config({"method": "bayes", "metric": {"name": "loss"}, "parameters": parameters})

    ackley = _floats(["f0", "f1", "f2", "f3"], -5.0, 5.0)
    ackley |= {n: {"distribution": "int_uniform", "min": -5, "max": 5} for n in ("i0", "i1")}
    ackley["c"] = {"values": list(_ACKLEY_OFFSET)}
    sweep = load_sweep_config(SEED_CONFIG)
    return [
        Problem(
            "branin",
            config({"x1": _floats(["a"], -5.0, 10.0)["a"], "x2": _floats(["a"], 0.0, 15.0)["a"]}),
            branin,
            0.397887357729739,
        ),
        Problem(
            "hartmann6", config(_floats([f"x{i}" for i in range(6)], 0.0, 1.0)), hartmann6, -3.32236801141551
        ),
        Problem("mixed_ackley7", config(ackley), mixed_ackley, 0.0),
        Problem("sweep_surrogate", sweep, sweep_loss, sweep_optimum(sweep)),
    ]


def _optuna_distributions(space: SweepSpace) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for p in space.searched:
        if p.is_choice:
            out[p.name] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.step is None:
            out[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        elif p.log:
            raise NotImplementedError(f"{p.name}: Optuna has no log distribution with a step")
        else:
            first, last = p.grid_ends()
            cls = (
                optuna.distributions.IntDistribution if p.integer else optuna.distributions.FloatDistribution
            )
            out[p.name] = cls(first, last, step=p.step)
    return out


def run_one(problem: Problem, method: str, seed: int, n_trials: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-so-far regret after each trial, and seconds spent in each suggestion."""
    startup = RandomSampler(problem.space, seed)
    values = np.empty(n_trials)
    seconds = np.empty(n_trials)
    if method.startswith("ours"):
        sampler = TPESampler(problem.space, seed) if method == "ours_tpe" else startup
        trials: list[Trial] = []
        for n in range(n_trials):
            start = time.perf_counter()
            params = sampler.suggest(n, trials)
            seconds[n] = time.perf_counter() - start
            values[n] = problem.objective(params)
            trials.append(Trial(n, params, TrialState.COMPLETE, values[n]))
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if method == "optuna_tpe":
            optuna_sampler = optuna.samplers.TPESampler(seed=seed)
        else:
            optuna_sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(sampler=optuna_sampler)
        searched = {p.name for p in problem.space.searched}
        for n in range(min(OPTUNA_STARTUP, n_trials)):
            params = startup.suggest(n)
            study.enqueue_trial({k: v for k, v in params.items() if k in searched})
        distributions = _optuna_distributions(problem.space)
        for n in range(n_trials):
            start = time.perf_counter()
            trial = study.ask(distributions)
            seconds[n] = time.perf_counter() - start
            values[n] = problem.objective({**problem.space.constants, **trial.params})
            study.tell(trial, values[n])
    return np.minimum.accumulate(values) - problem.optimum, seconds


def _job(args: tuple[int, str, int, int]) -> tuple[int, str, int, np.ndarray, np.ndarray]:
    index, method, seed, n_trials = args
    regret, seconds = run_one(problems()[index], method, seed, n_trials)
    return index, method, seed, regret, seconds


def geo_ratio(a: np.ndarray, b: np.ndarray, floor: np.ndarray) -> float:
    """Geometric mean over problems of mean(a) / mean(b); arrays are (problems, seeds)."""
    num = np.maximum(a.mean(axis=1), floor)
    den = np.maximum(b.mean(axis=1), floor)
    return float(np.exp(np.log(num / den).mean()))


def bootstrap_ratio(
    a: np.ndarray, b: np.ndarray, floor: np.ndarray, rng: np.random.Generator, reps: int = 2000
) -> tuple[float, float]:
    """95% interval of `geo_ratio`, resampling seeds (paired) within each problem."""
    n_problems, n_seeds = a.shape
    ratios = np.empty(reps)
    for r in range(reps):
        idx = rng.integers(n_seeds, size=(n_problems, n_seeds))
        ratios[r] = geo_ratio(np.take_along_axis(a, idx, 1), np.take_along_axis(b, idx, 1), floor)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def holm(pvalues: list[float]) -> list[float]:
    order = np.argsort(pvalues)
    adjusted = np.empty(len(pvalues))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def report(
    names: list[str], regret: dict[str, np.ndarray], seconds: dict[str, np.ndarray], clip: np.ndarray
) -> dict[str, Any]:
    """Print the tables; return the JSON summary. regret[m] is (problems, seeds, trials)."""
    from scipy.stats import wilcoxon

    n_trials = regret["ours_tpe"].shape[2]
    floor = 1e-9 * clip
    rng = np.random.default_rng(0)
    summary: dict[str, Any] = {"checkpoints": {}}
    for n in [c for c in CHECKPOINTS if c <= n_trials]:
        at = {m: r[:, :, n - 1] for m, r in regret.items()}
        print(f"\nN = {n}: mean simple regret (± s.e.) over {at['ours_tpe'].shape[1]} seeds")
        print(f"{'problem':<16}" + "".join(f"{m:>22}" for m in METHODS))
        for i, name in enumerate(names):
            cells = [
                f"{at[m][i].mean():.4g} ± {at[m][i].std(ddof=1) / math.sqrt(at[m].shape[1]):.2g}"
                for m in METHODS
            ]
            print(f"{name:<16}" + "".join(f"{c:>22}" for c in cells))
        entry: dict[str, Any] = {}
        for other in ("optuna_tpe", "ours_random"):
            ratio = geo_ratio(at["ours_tpe"], at[other], floor)
            low, high = bootstrap_ratio(at["ours_tpe"], at[other], floor, rng)
            entry[f"ours/{other}"] = {"ratio": ratio, "ci95": [low, high]}
            print(f"geo-mean ratio ours_tpe/{other}: {ratio:.3f}  [95% CI {low:.3f}, {high:.3f}]")
        pvalues = []
        for i in range(len(names)):
            diff = at["ours_tpe"][i] - at["optuna_tpe"][i]
            pvalues.append(
                1.0 if np.all(diff == 0) else float(wilcoxon(at["ours_tpe"][i], at["optuna_tpe"][i]).pvalue)
            )
        per_problem = {}
        for i, (name, p) in enumerate(zip(names, holm(pvalues))):
            ratio = at["ours_tpe"][i].mean() / max(at["optuna_tpe"][i].mean(), floor[i])
            verdict = "worse" if p < 0.05 and ratio > 1 else "better" if p < 0.05 else "n.s."
            per_problem[name] = {"ratio": float(ratio), "holm_p": p, "verdict": verdict}
        print(
            "ours/optuna per problem (Holm p): "
            + ", ".join(
                f"{k} {v['ratio']:.2f} (p={v['holm_p']:.2g}, {v['verdict']})" for k, v in per_problem.items()
            )
        )
        entry["per_problem"] = per_problem
        summary["checkpoints"][str(n)] = entry
    print("\nms per suggestion, mean over model-guided trials (last 10 trials in brackets):")
    for m in METHODS:
        guided = seconds[m][:, :, OPTUNA_STARTUP:] * 1e3
        late = seconds[m][:, :, -10:] * 1e3
        cells = [f"{name} {guided[i].mean():.2f} ({late[i].mean():.2f})" for i, name in enumerate(names)]
        print(f"{m:<14} " + "; ".join(cells))
        summary[f"ms_per_suggestion/{m}"] = {name: float(guided[i].mean()) for i, name in enumerate(names)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--problems", nargs="*", help="subset of problem names")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()

    all_problems = problems()
    chosen = [i for i, p in enumerate(all_problems) if not args.problems or p.name in args.problems]
    names = [all_problems[i].name for i in chosen]
    jobs = [(i, m, s, args.trials) for i in chosen for m in METHODS for s in range(args.seeds)]
    regret = {m: np.empty((len(chosen), args.seeds, args.trials)) for m in METHODS}
    seconds = {m: np.empty((len(chosen), args.seeds, args.trials)) for m in METHODS}
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for index, method, seed, r, s in pool.imap_unordered(_job, jobs, chunksize=2):
            regret[method][chosen.index(index), seed] = r
            seconds[method][chosen.index(index), seed] = s
    elapsed = time.perf_counter() - start
    print(f"{len(jobs)} runs of {args.trials} trials in {elapsed:.0f} s on {args.workers} workers")
    # bayesmark's normaliser: the median random value after one evaluation (regret of trial 0).
    clip = np.median(regret["ours_random"][:, :, 0], axis=1)
    summary = report(names, regret, seconds, clip)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
