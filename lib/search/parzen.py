"""Multivariate Parzen estimator over a search space: the l(x) and g(x) of TPE.

A mixture with one product kernel per observed trial plus a prior kernel (Optuna v5 semantics):
- numeric parameters live in a working coordinate, log(value) for log distributions; a kernel is a
  normal truncated to the domain, centred on the observation, with the "neighbour" bandwidth (the
  larger gap to the adjacent centres, extremes using their inner gap) clipped to
  [range / min(100, n + 2), range]; the prior kernel sits mid-domain with sigma = range;
- grid parameters (int, q) widen the domain by half a step at each end and give each grid point the
  kernel's mass on its cell [v - step/2, v + step/2] (taken in log space for log grids);
- categorical parameters get a row per kernel, prior_weight / (n + 1) on every choice plus 1 on the
  observed one; the prior row is uniform, or the W&B `probabilities`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.search import truncnorm
from lib.search.space import Parameter


@dataclass(frozen=True)
class Dimension:
    """A searched parameter in TPE's working coordinate (category index, or value / log value)."""

    param: Parameter
    lo: float = 0.0
    hi: float = 0.0

    @classmethod
    def of(cls, param: Parameter) -> Dimension:
        if param.is_choice:
            return cls(param)
        step = param.step
        lo, hi = (param.low, param.high) if step is None else param.grid_ends()
        if step is not None:
            lo, hi = lo - step / 2, hi + step / 2
        return cls(param, *(_forward(param, v) for v in (lo, hi)))

    @property
    def name(self) -> str:
        return self.param.name

    def encode(self, value: Any) -> float:
        if self.param.is_choice:
            return float(self.param.values.index(value))
        return _forward(self.param, float(value))

    def decode(self, x: float) -> Any:
        if self.param.is_choice:
            return self.param.values[int(x)]
        return self.param.to_python(_backward(self.param, x))

    def snap(self, y: np.ndarray) -> np.ndarray:
        """Continuous draws in working coordinates to the nearest allowed point."""
        if self.param.step is None:
            return np.clip(y, self.lo, self.hi)
        return _forward(self.param, self.param.snap(_backward(self.param, y)))

    def cells(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Working-coordinate ends of the grid cells around grid points x."""
        v = _backward(self.param, x)
        half = self.param.step / 2
        return _forward(self.param, v - half), _forward(self.param, v + half)


def _forward(param: Parameter, v: Any) -> Any:
    return np.log(v) if param.log else v


def _backward(param: Parameter, x: Any) -> Any:
    return np.exp(x) if param.log else x


def default_weights(n: int) -> np.ndarray:
    """Kernel weights by age: flat for the newest 25, a linear ramp from 1/n for the older ones."""
    if n < 25:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, num=n - 25), np.ones(25)])


class ParzenEstimator:
    """Mixture of product kernels fitted to observations (rows ordered oldest first)."""

    def __init__(self, dims: list[Dimension], observations: np.ndarray, prior_weight: float) -> None:
        n = len(observations)
        weights = np.append(default_weights(n), prior_weight) if n else np.ones(1)
        self._log_weights = np.log(weights / weights.sum())
        self._dims = dims
        self._kernels = [_kernels(d, observations[:, i], prior_weight) for i, d in enumerate(dims)]

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draw whole points: pick a component, then every dimension from that component."""
        component = rng.choice(len(self._log_weights), p=np.exp(self._log_weights), size=size)
        out = np.empty((size, len(self._dims)))
        for i, (dim, kernel) in enumerate(zip(self._dims, self._kernels)):
            if dim.param.is_choice:
                cum = np.cumsum(kernel[component], axis=1)
                u = rng.random(size)[:, None] * cum[:, -1:]
                out[:, i] = np.minimum((cum < u).sum(axis=1), cum.shape[1] - 1)
            else:
                mu, sigma = kernel[0][component], kernel[1][component]
                z = truncnorm.sample((dim.lo - mu) / sigma, (dim.hi - mu) / sigma, rng)
                out[:, i] = dim.snap(mu + sigma * z)
        return out

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """Log density (log mass on grid dimensions) of each row of x."""
        total = np.tile(self._log_weights, (len(x), 1))
        for i, (dim, kernel) in enumerate(zip(self._dims, self._kernels)):
            if dim.param.is_choice:
                total += np.log(kernel[:, x[:, i].astype(int)]).T
            else:
                total += _numeric_log_pdf(dim, x[:, i], *kernel)
        peak = total.max(axis=1, keepdims=True)
        return (peak + np.log(np.exp(total - peak).sum(axis=1, keepdims=True)))[:, 0]


def _kernels(dim: Dimension, obs: np.ndarray, prior_weight: float) -> Any:
    """Per-kernel parameters for one dimension: a probability table, or (mu, sigma)."""
    if dim.param.is_choice:
        k = len(dim.param.values)
        prior = dim.param.probabilities or (1.0 / k,) * k
        rows = np.full((len(obs), k), prior_weight / (len(obs) + 1))
        rows[np.arange(len(obs)), obs.astype(int)] += 1.0
        rows = np.vstack([rows, prior])
        return rows / rows.sum(axis=1, keepdims=True)
    width = dim.hi - dim.lo
    sigma = _neighbour_bandwidths(obs, dim.lo, dim.hi)
    sigma = np.clip(sigma, width / min(100.0, len(obs) + 2.0), width)
    return np.append(obs, 0.5 * (dim.lo + dim.hi)), np.append(sigma, width)


def _neighbour_bandwidths(mu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    order = np.argsort(mu)
    padded = np.concatenate([[lo], mu[order], [hi]])
    gaps = np.diff(padded)
    sorted_sigma = np.maximum(gaps[:-1], gaps[1:])
    if len(mu) >= 2:
        # The extreme centres ignore the domain edge and take their inner gap.
        sorted_sigma[0], sorted_sigma[-1] = gaps[1], gaps[-2]
    sigma = np.empty_like(sorted_sigma)
    sigma[order] = sorted_sigma
    return sigma


def _numeric_log_pdf(dim: Dimension, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(points x kernels) log density; grid dimensions use the mass of each point's cell."""
    log_norm = truncnorm.log_mass((dim.lo - mu) / sigma, (dim.hi - mu) / sigma)
    if dim.param.step is None:
        z = (x[:, None] - mu) / sigma
        return -0.5 * z * z - math.log(math.sqrt(2 * math.pi)) - np.log(sigma) - log_norm
    # Candidates repeat grid points often, so compute each distinct point's cell masses once.
    points, inverse = np.unique(x, return_inverse=True)
    left, right = dim.cells(points)
    cell = truncnorm.log_mass((left[:, None] - mu) / sigma, (right[:, None] - mu) / sigma)
    return (cell - log_norm)[inverse]
