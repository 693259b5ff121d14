"""Random, grid and TPE sampling: bounds, grids, exact frequencies, determinism, convergence."""

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lib.search import (GridSampler, RandomSampler, TPESampler, Trial, TrialState, load_sweep_config, make_sampler,
                        parse_sweep_config, truncnorm)
from lib.search.samplers import quantile_value, sample_parameter, startup_design

SEED = Path(__file__).resolve().parent.parent / "experiments" / "sweep_seed.json"


def space(method="random", **parameters):
    return parse_sweep_config({"method": method, "metric": {"name": "loss"}, "parameters": parameters})


def draws(spec, n, seed=0):
    param = space(x=spec).parameters[0]
    rng = np.random.default_rng(seed)
    return param, [sample_parameter(param, rng) for _ in range(n)]


def chi_square_p(counts: Counter, probs: dict) -> float:
    """p-value of observed counts against expected probabilities (a fixed seed keeps it stable)."""
    assert set(counts) <= set(probs), f"values off the support: {set(counts) - set(probs)}"
    n = sum(counts.values())
    observed = np.array([counts[k] for k in probs])
    expected = np.array([probs[k] * n for k in probs])
    return stats.chisquare(observed, expected).pvalue


def on_grid(x, q):
    return abs(x / q - round(x / q)) < 1e-9


@pytest.mark.parametrize(
    "spec",
    [
        {"distribution": "int_uniform", "min": -3, "max": 4},
        {"distribution": "uniform", "min": -0.5, "max": 0.25},
        {"distribution": "log_uniform_values", "min": 1e-6, "max": 5e-5},
        {"distribution": "log_uniform", "min": -3.0, "max": 1.0},
        {"distribution": "q_uniform", "min": 0.05, "max": 0.95, "q": 0.1},
        {"distribution": "q_uniform", "min": 100, "max": 1000, "q": 50},
        {"distribution": "q_log_uniform_values", "min": 8, "max": 300, "q": 8},
        {"distribution": "q_log_uniform", "min": 0.0, "max": 4.0, "q": 3},
    ],
)
def test_random_samples_stay_in_bounds_and_on_the_grid(spec):
    param, xs = draws(spec, 3000)
    assert all(param.low - 1e-12 <= x <= param.high + 1e-12 for x in xs)
    if param.step is not None:
        assert all(on_grid(x, param.step) for x in xs)
        assert all(isinstance(x, int) for x in xs) == param.integer
        assert set(xs) == set(param.grid())  # every grid point is reachable


def test_int_uniform_is_uniform_with_inclusive_bounds():
    _, xs = draws({"distribution": "int_uniform", "min": 2, "max": 5}, 20000)
    assert chi_square_p(Counter(xs), {k: 0.25 for k in (2, 3, 4, 5)}) > 1e-3


def test_q_uniform_gives_the_end_points_half_mass_as_wandb_does():
    _, xs = draws({"distribution": "q_uniform", "min": 0, "max": 400, "q": 100}, 20000)
    probs = {0: 0.125, 100: 0.25, 200: 0.25, 300: 0.25, 400: 0.125}
    assert chi_square_p(Counter(xs), probs) > 1e-3
    # The same draws would fail a test that expects equal mass per grid point.
    assert chi_square_p(Counter(xs), {k: 0.2 for k in probs}) < 1e-6


def test_q_log_uniform_values_mass_follows_the_log_measure_of_each_cell():
    _, xs = draws({"distribution": "q_log_uniform_values", "min": 10, "max": 40, "q": 10}, 20000)
    edges = {10: (10, 15), 20: (15, 25), 30: (25, 35), 40: (35, 40)}
    total = math.log(40 / 10)
    probs = {k: math.log(b / a) / total for k, (a, b) in edges.items()}
    assert chi_square_p(Counter(xs), probs) > 1e-3


def test_categorical_with_probabilities_matches_them():
    spec = {"values": ["linear", "cosine", "constant"], "probabilities": [0.2, 0.3, 0.5]}
    _, xs = draws(spec, 20000)
    assert chi_square_p(Counter(xs), {"linear": 0.2, "cosine": 0.3, "constant": 0.5}) > 1e-3


def test_log_uniform_values_is_uniform_in_log_space():
    _, xs = draws({"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1}, 20000)
    decades = Counter(math.floor(math.log10(x)) for x in xs)  # four decades, equally likely
    assert chi_square_p(decades, {-5: 0.25, -4: 0.25, -3: 0.25, -2: 0.25}) > 1e-3


def test_random_sampler_is_a_function_of_seed_and_trial_number():
    sp = load_sweep_config(SEED)
    a, b = RandomSampler(sp, 7), RandomSampler(sp, 7)
    assert a.suggest(3) == b.suggest(3)
    assert a.suggest(3) != a.suggest(4)
    assert a.suggest(3) != RandomSampler(sp, 8).suggest(3)


def test_grid_visits_the_whole_product_once_then_stops():
    sp = space(
        "grid",
        a={"values": ["x", "y"]},
        b={"distribution": "int_uniform", "min": 1, "max": 3},
        c={"distribution": "q_uniform", "min": 0.0, "max": 0.2, "q": 0.1},
        d={"value": 5},
    )
    sampler = GridSampler(sp)
    points = [sampler.suggest(n, []) for n in range(sampler.size)]
    assert sampler.size == 18
    expected = [dict(zip("abcd", p)) for p in itertools.product("xy", [1, 2, 3], [0.0, 0.1, 0.2], [5])]
    assert points == expected
    assert sampler.suggest(18, []) is None


def quadratic_run(sampler, objective, n_trials):
    trials = []
    for n in range(n_trials):
        params = sampler.suggest(n, trials)
        trials.append(Trial(n, params, TrialState.COMPLETE, objective(params)))
    return trials


def test_tpe_starts_from_a_latin_hypercube_until_the_startup_trials_finish():
    sp = load_sweep_config(SEED)
    tpe = TPESampler(sp, 3, n_startup_trials=5)
    trials = quadratic_run(tpe, lambda p: p["weight_decay"], 5)
    assert [t.params for t in trials] == startup_design(sp, 3, 5)
    # Every scheduler is tried, and each continuous parameter has one value in each fifth of its range.
    assert {t.params["lr_scheduler_type"] for t in trials} == {"linear", "cosine", "constant"}
    fifths = sorted(int(t.params["weight_decay"] / 0.1 * 5) for t in trials)
    assert fifths == [0, 1, 2, 3, 4]
    # Running trials do not count toward the startup; past the design, startup draws are random.
    running = [Trial(t.number, t.params, TrialState.RUNNING) for t in trials]
    assert tpe.suggest(5, running) == RandomSampler(sp, 3).suggest(5)
    assert tpe.suggest(5, trials) != RandomSampler(sp, 3).suggest(5)


def test_quantile_value_is_the_inverse_cdf():
    uniform = space(x={"distribution": "uniform", "min": 2.0, "max": 4.0}).parameters[0]
    assert quantile_value(uniform, 0.25) == 2.5
    log = space(x={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}).parameters[0]
    assert quantile_value(log, 0.5) == pytest.approx(1e-3)
    ints = space(x={"distribution": "int_uniform", "min": 1, "max": 4}).parameters[0]
    assert [quantile_value(ints, u) for u in (0.0, 0.24, 0.25, 0.99)] == [1, 1, 2, 4]
    weighted = space(x={"values": ["a", "b"], "probabilities": [0.9, 0.1]}).parameters[0]
    assert [quantile_value(weighted, u) for u in (0.0, 0.89, 0.9, 0.999)] == ["a", "a", "b", "b"]


@pytest.mark.parametrize(
    "spec",
    [
        {"distribution": "uniform", "min": -5.0, "max": 5.0},
        {"distribution": "q_uniform", "min": -5.0, "max": 5.0, "q": 0.25},
        {"distribution": "int_uniform", "min": -50, "max": 50},
    ],
)
def test_tpe_concentrates_near_the_optimum_of_a_quadratic(spec):
    optimum = 1.25 if spec["distribution"] != "int_uniform" else 12
    sp = space("bayes", x=spec)
    errors, best = {}, {}
    for name, sampler in {"tpe": TPESampler(sp, 0), "random": RandomSampler(sp, 0)}.items():
        trials = quadratic_run(sampler, lambda p: (p["x"] - optimum) ** 2, 80)
        distance = [abs(t.params["x"] - optimum) for t in trials]
        errors[name], best[name] = np.median(distance[-40:]), min(distance)
    width = sp.parameters[0].high - sp.parameters[0].low
    # TPE keeps exploring (the prior kernel), so its typical late suggestion is near, not at, x*.
    assert errors["tpe"] < 0.1 * width
    assert errors["tpe"] < errors["random"] / 3
    assert best["tpe"] <= 0.01 * width


def test_tpe_suggestions_are_valid_on_the_users_mixed_space():
    sp = load_sweep_config(SEED)
    trials = quadratic_run(TPESampler(sp, 1), lambda p: math.log(p["learning_rate"]) ** 2, 25)
    for t in trials:
        for p in sp.parameters:
            x = t.params[p.name]
            if p.is_choice:
                assert x in p.values
            else:
                assert p.low <= x <= p.high
                assert p.step is None or on_grid(x, p.step)


def test_tpe_is_deterministic_and_streams_differ_by_trial_number():
    sp = load_sweep_config(SEED)
    history = quadratic_run(RandomSampler(sp, 0), lambda p: p["dropout_rate"], 12)
    assert TPESampler(sp, 5).suggest(12, history) == TPESampler(sp, 5).suggest(12, history)
    assert TPESampler(sp, 5).suggest(12, history) != TPESampler(sp, 5).suggest(13, history)


def test_a_running_trial_repels_the_next_suggestion_constant_liar():
    sp = space("bayes", x={"distribution": "uniform", "min": 0.0, "max": 1.0})
    history = quadratic_run(TPESampler(sp, 2), lambda p: (p["x"] - 0.3) ** 2, 30)
    tpe = TPESampler(sp, 2)
    alone = tpe.suggest(31, history)["x"]
    busy = history + [Trial(30, {"x": alone}, TrialState.RUNNING)]
    assert tpe.suggest(31, busy)["x"] != alone
    # With the liar off, the running trial is invisible.
    assert TPESampler(sp, 2, constant_liar=False).suggest(31, busy)["x"] == alone


def test_make_sampler_follows_the_method():
    assert isinstance(make_sampler(space("grid", x={"values": [1]}), 0), GridSampler)
    assert isinstance(make_sampler(space("random", x={"values": [1]}), 0), RandomSampler)
    assert isinstance(make_sampler(space("bayes", x={"values": [1]}), 0), TPESampler)


def test_truncated_normal_pieces_match_high_precision_references():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    x = np.linspace(-60, 40, 201)
    reference = [float(mpmath.log(mpmath.ncdf(v))) for v in x]
    assert np.allclose(truncnorm.log_ndtr(x), reference, rtol=1e-12, atol=1e-15)
    a = np.array([-80.0, -3.0, -0.5, 0.2, 5.0, 30.0, 39.0])
    b = a + np.array([1.0, 0.1, 1.0, 2.0, 0.5, 4.0, 1e-3])
    # The reference works on the negative side too: 50 digits cannot hold 1 - Phi(30).
    flipped = [(-hi, -lo) if lo > 0 else (lo, hi) for lo, hi in zip(a, b)]
    reference = [float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo))) for lo, hi in flipped]
    assert np.allclose(truncnorm.log_mass(a, b), reference, rtol=1e-9)
    rng = np.random.default_rng(0)
    draws_ = truncnorm.sample(np.full(20000, -0.3), np.full(20000, 40.0), rng)
    assert draws_.min() >= -0.3
    assert stats.kstest(draws_, stats.truncnorm(-0.3, 40.0).cdf).pvalue > 1e-3


def test_parzen_densities_match_optunas_on_the_users_space():
    """Our l(x)/g(x) are Optuna v5's (the TPE differences are in the defaults, see lib/search/tpe.py)."""
    pytest.importorskip("optuna")
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
    from optuna.samplers._tpe.sampler import default_weights

    from bench.search import _optuna_distributions
    from lib.search.parzen import Dimension, ParzenEstimator

    sp = load_sweep_config(SEED)
    dims = [Dimension.of(p) for p in sp.searched]
    distributions = _optuna_distributions(sp)
    observed = [RandomSampler(sp, 1).suggest(n) for n in range(30)]
    points = [RandomSampler(sp, 2).suggest(n) for n in range(50)]
    settings = _ParzenEstimatorParameters(1.0, True, False, default_weights, True)
    for n in (1, 2, 30):
        ours = ParzenEstimator(
            dims, np.array([[d.encode(o[d.name]) for d in dims] for o in observed[:n]]), 1.0
        )
        internal = {
            k: np.array([dist.to_internal_repr(o[k]) for o in observed[:n]])
            for k, dist in distributions.items()
        }
        theirs = _ParzenEstimator(internal, distributions, settings)
        x = np.array([[d.encode(p[d.name]) for d in dims] for p in points])
        x_theirs = {
            k: np.array([dist.to_internal_repr(p[k]) for p in points]) for k, dist in distributions.items()
        }
        assert np.allclose(ours.log_pdf(x), theirs.log_pdf(x_theirs), rtol=1e-12, atol=1e-12)
