"""Random and grid search, and the Latin-hypercube design that starts TPE.

Every sampler is a pure function of (trial number, trial table): the random stream of a suggestion
comes from (sweep seed, trial number), so a resumed sweep proposes what an uninterrupted one would
have, and parallel workers asking for different trial numbers never share a stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from lib.search.space import Parameter, SweepSpace
from lib.search.trials import Trial


class Sampler(Protocol):
    def suggest(self, number: int, trials: Sequence[Trial]) -> dict[str, Any] | None:
        """Parameters for trial `number` given the table, or None when the space is exhausted."""


def trial_rng(seed: int, number: int) -> np.random.Generator:
    """The random stream of one suggestion (seed and number are non-negative integers)."""
    return np.random.default_rng([seed, number])


def sample_parameter(param: Parameter, rng: np.random.Generator) -> Any:
    """One draw from the parameter's W&B distribution."""
    return quantile_value(param, rng.random())


def quantile_value(param: Parameter, u: float) -> Any:
    """The value at quantile u in [0, 1) of the parameter's W&B distribution (its inverse CDF)."""
    if param.is_choice:
        k = len(param.values)
        if param.probabilities is None:
            return param.values[min(int(u * k), k - 1)]
        cum = np.cumsum(param.probabilities) / sum(param.probabilities)
        return param.values[min(int(np.searchsorted(cum, u, side="right")), k - 1)]
    if param.distribution == "int_uniform":
        return int(param.min + min(int(u * (param.max - param.min + 1)), param.max - param.min))
    if param.log:
        x = math.exp(math.log(param.low) + u * (math.log(param.high) - math.log(param.low)))
    else:
        x = param.low + u * (param.high - param.low)
    return param.to_python(param.snap(x) if param.step is not None else x)


def startup_design(space: SweepSpace, seed: int, n: int) -> list[dict[str, Any]]:
    """n space-filling points, a Latin hypercube in quantile space: each parameter's n values fall
    in n different equal-probability strata, so every category of a choice of <= n values appears.
    A function of the seed alone, so trial k of the design is the same after a resume."""
    rng = np.random.default_rng([seed, n, 1])  # a stream no trial uses: theirs are (seed, number)
    quantiles = {p.name: (rng.permutation(n) + rng.random(n)) / n for p in space.parameters}
    return [{p.name: quantile_value(p, quantiles[p.name][k]) for p in space.parameters} for k in range(n)]


class RandomSampler:
    """W&B random search: every parameter drawn independently from its distribution."""

    def __init__(self, space: SweepSpace, seed: int) -> None:
        self.space = space
        self.seed = seed

    def suggest(self, number: int, trials: Sequence[Trial] = ()) -> dict[str, Any]:
        rng = trial_rng(self.seed, number)
        return {p.name: sample_parameter(p, rng) for p in self.space.parameters}


class GridSampler:
    """Trial k takes the k-th point of the cartesian product (last parameter varies fastest)."""

    def __init__(self, space: SweepSpace) -> None:
        self._axes = [(p.name, p.grid()) for p in space.parameters]
        self.size = math.prod(len(values) for _, values in self._axes)

    def suggest(self, number: int, trials: Sequence[Trial] = ()) -> dict[str, Any] | None:
        if number >= self.size:
            return None
        out: dict[str, Any] = {}
        for name, values in reversed(self._axes):
            number, index = divmod(number, len(values))
            out[name] = values[index]
        return {name: out[name] for name, _ in self._axes}
