"""Which searched parameters the metric depended on: a fANOVA estimate from a random forest.

A random forest is fitted on the complete trials (parameters -> metric). For each tree the functional
ANOVA is exact, because a tree is piecewise constant on boxes: under the uniform distribution over
the search space, the marginal prediction of parameter j averages every leaf that overlaps a value
of j, weighted by the leaf's share of the other dimensions. A parameter's importance is the variance
of its marginal over the tree's total variance, averaged over trees and normalised to sum to 1
(interactions are left out, so the raw shares sum to less than 1).

Encoding, so that "uniform over the box" is the search space itself: a log-scaled range is searched
in log(value); a choice is its index in `values`, each index owning [i - 0.5, i + 0.5]; an int or
q grid point owns half a step either side. Pruned trials are left out: their value is the best so
far at the rung where they stopped, not a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lib.search.space import Parameter, SweepSpace
from lib.search.trials import Trial, TrialState

MIN_TRIALS = 8  # below this a forest of a few points ranks noise


@dataclass(frozen=True)
class Importance:
    """`ranking` (name, share) sorted by share, summing to 1; empty with a `reason` when there is none."""

    ranking: tuple[tuple[str, float], ...]
    trials: int
    reason: str | None = None

    def lines(self) -> list[str]:
        """The ranking as text lines, for --status."""
        if self.reason:
            return [f"parameter importance: {self.reason}"]
        width = max(len(name) for name, _ in self.ranking)
        head = f"parameter importance (fANOVA, random forest on {self.trials} complete trials):"
        return [head] + [f"  {name.ljust(width)}  {share:6.1%}  {'#' * round(40 * share)}"
                         for name, share in self.ranking]


def parameter_importance(space: SweepSpace, trials: Sequence[Trial], n_trees: int = 64,
                         seed: int = 0) -> Importance:
    """Rank `space.searched` by how much of the metric's variance each explains on its own."""
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.has_value]
    params = space.searched
    if not params:
        return Importance((), len(done), "nothing is searched (every parameter is fixed)")
    if len(done) < MIN_TRIALS:
        return Importance((), len(done), f"{len(done)} complete trial(s); a ranking needs at least {MIN_TRIALS}")
    y = np.array([t.value for t in done])
    if np.ptp(y) == 0:
        return Importance((), len(done), f"the metric is the same ({y[0]:.4g}) in every complete trial")
    x = np.array([[encode(p, t.params[p.name]) for p in params] for t in done])
    bounds = np.array([domain(p) for p in params])
    shares = fanova_shares(x, y, bounds, n_trees, seed)
    order = np.argsort(-shares, kind="stable")
    return Importance(tuple((params[i].name, float(shares[i])) for i in order), len(done))


def encode(parameter: Parameter, value) -> float:
    if parameter.is_choice:
        return float(parameter.values.index(value))
    return math.log(value) if parameter.log else float(value)


def domain(parameter: Parameter) -> tuple[float, float]:
    """The encoded search space of one parameter, so that uniform over it is uniform over its values."""
    if parameter.is_choice:
        return -0.5, len(parameter.values) - 0.5
    if parameter.log:
        return math.log(parameter.low), math.log(parameter.high)
    if parameter.step is not None:
        first, last = parameter.grid_ends()
        return first - parameter.step / 2, last + parameter.step / 2
    return parameter.low, parameter.high


def fanova_shares(x: np.ndarray, y: np.ndarray, bounds: np.ndarray, n_trees: int, seed: int) -> np.ndarray:
    """Each column's main-effect share of the variance, averaged over a forest's trees, summing to 1."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=n_trees, max_depth=64, random_state=seed).fit(x, y)
    per_tree = [s for s in (_tree_shares(tree.tree_, bounds) for tree in forest.estimators_) if s is not None]
    if not per_tree:
        return np.full(x.shape[1], 1.0 / x.shape[1])
    shares = np.mean(per_tree, axis=0)
    total = shares.sum()
    return shares / total if total > 0 else np.full(x.shape[1], 1.0 / x.shape[1])


def _tree_shares(tree, bounds: np.ndarray) -> np.ndarray | None:
    """Main-effect variance of each feature over the tree's total variance; None for a constant tree."""
    lows, highs, values = _leaf_boxes(tree, bounds)
    widths = highs - lows
    span = bounds[:, 1] - bounds[:, 0]
    weight = np.prod(widths / span, axis=1)  # each leaf's share of the space
    mean = weight @ values
    total = weight @ (values - mean) ** 2
    if total <= 1e-12 * max(1.0, mean**2):
        return None
    shares = np.zeros(len(bounds))
    for j in range(len(bounds)):
        cuts = np.unique(np.concatenate([lows[:, j], highs[:, j]]))
        mids = (cuts[:-1] + cuts[1:]) / 2
        inside = (lows[None, :, j] <= mids[:, None]) & (mids[:, None] < highs[None, :, j])
        # A leaf covering a value of j contributes its value times its share of the other dimensions.
        rest = np.divide(weight * span[j], widths[:, j], out=np.zeros_like(weight), where=widths[:, j] > 0)
        marginal = inside @ (values * rest)
        shares[j] = (np.diff(cuts) / span[j]) @ (marginal - mean) ** 2 / total
    return shares


def _leaf_boxes(tree, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box (lows, highs) and value of every leaf of a fitted sklearn tree, inside `bounds`."""
    lows, highs, values = [], [], []
    stack = [(0, bounds[:, 0].copy(), bounds[:, 1].copy())]
    while stack:
        node, low, high = stack.pop()
        left, right = tree.children_left[node], tree.children_right[node]
        if left == right:  # a leaf
            lows.append(low)
            highs.append(high)
            values.append(tree.value[node].ravel()[0])
            continue
        feature = tree.feature[node]
        cut = min(max(tree.threshold[node], low[feature]), high[feature])
        left_high, right_low = high.copy(), low.copy()
        left_high[feature], right_low[feature] = cut, cut  # x <= threshold goes left
        stack += [(left, low, left_high), (right, right_low, high)]
    return np.array(lows), np.array(highs), np.array(values)
