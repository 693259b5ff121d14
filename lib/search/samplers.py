"""Random and grid search, and the factory that picks a sampler for a sweep's `method`.

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
    """The random stream of one suggestion."""
    return np.random.default_rng([seed, number])


def sample_parameter(param: Parameter, rng: np.random.Generator) -> Any:
    """One draw from the parameter's W&B distribution."""
    dist = param.distribution
    if dist in ("constant", "categorical"):
        return param.values[rng.integers(len(param.values))]
    if dist == "categorical_w_probabilities":
        probs = np.asarray(param.probabilities)
        return param.values[rng.choice(len(param.values), p=probs / probs.sum())]
    if dist == "int_uniform":
        return int(rng.integers(param.min, param.max + 1))
    if param.log:
        x = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        x = rng.uniform(param.low, param.high)
    return param.to_python(param.snap(x) if param.step is not None else x)


class RandomSampler:
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
