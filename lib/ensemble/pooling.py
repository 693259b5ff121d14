"""Soft voting: pooling members' class scores, with given or fitted member weights.

Members arrive as one array `(members, rows, classes)` of log-scores aligned by row id.

- `logits`: softmax(sum_m w_m z_m), log-linear pooling (a normalised weighted geometric mean of
  the members' probabilities). Averaging log-probabilities gives the same softmax, because
  log_softmax only shifts each row by a constant; the member with the largest logit scale counts most.
- `probs`: sum_m w_m softmax(z_m), linear pooling, the usual deep-ensemble rule.

Pooled scores are returned as log-scores (the log of the pooled probabilities for `probs`), so
calibration and prior correction treat both modes alike.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax

from lib.core.errors import UserError

AVERAGE_MODES = ("logits", "probs")


def pool(member_scores: np.ndarray, weights: np.ndarray, average: str) -> np.ndarray:
    """Pooled log-scores `(rows, classes)` of weighted members, in float64."""
    scores = np.asarray(member_scores, dtype=np.float64)
    if average == "logits":
        return np.einsum("m,mnk->nk", weights, scores)
    if average == "probs":
        # a probability that underflowed to 0 must not become log(0) = -inf
        return np.log(np.maximum(np.einsum("m,mnk->nk", weights, softmax(scores, axis=2)), 1e-300))
    raise ValueError(f"unknown average mode {average!r}")


def equal_weights(count: int) -> np.ndarray:
    return np.full(count, 1.0 / count)


def parse_weights(text: str, count: int) -> np.ndarray:
    """`--weights 1,1,2`: one non-negative number per member, scaled to sum to one."""
    try:
        values = np.array([float(part) for part in text.split(",")])
    except ValueError:
        raise UserError(f"--weights: expected 'fit' or comma-separated numbers, got {text!r}") from None
    if len(values) != count:
        raise UserError(f"--weights: {len(values)} weights given for {count} members; give one per member")
    if not np.isfinite(values).all() or (values < 0).any():
        raise UserError(f"--weights: expected non-negative numbers, got {text!r}")
    if values.sum() == 0:
        raise UserError("--weights: at least one weight must be positive")
    return values / values.sum()


def fit_weights(member_scores: np.ndarray, labels: np.ndarray, average: str, max_iter: int = 200,
                tol: float = 1e-9) -> np.ndarray:
    """Weights w >= 0, sum 1, minimising the pooled NLL on the given rows.

    The NLL is convex in w for both pooling modes, so projected gradient descent on the simplex
    finds the optimum. It starts from equal weights and accepts only steps that lower the NLL
    (backtracking), so the result never scores worse than equal weights on these rows.
    """
    scores = np.asarray(member_scores, dtype=np.float64)
    rows = np.arange(len(labels))
    if average == "logits":
        onehot = np.eye(scores.shape[2])[labels]

        def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            logp = log_softmax(np.einsum("m,mnk->nk", w, scores), axis=1)
            # d/dw_m of mean -log p_y = mean over rows of (p - onehot) . z_m
            return -logp[rows, labels].mean(), np.einsum("nk,mnk->m", np.exp(logp) - onehot, scores) / len(rows)
    elif average == "probs":
        true_class = softmax(scores, axis=2)[:, rows, labels]  # (members, rows): p_m(y_i | x_i)

        def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            pooled = np.maximum(w @ true_class, 1e-300)
            return -np.log(pooled).mean(), -(true_class / pooled).mean(axis=1)
    else:
        raise ValueError(f"unknown average mode {average!r}")

    weights = equal_weights(len(scores))
    current, grad = loss_and_grad(weights)
    step = 1.0
    for _ in range(max_iter):
        while True:
            candidate = project_to_simplex(weights - step * grad)
            if np.abs(candidate - weights).max() < 1e-12:
                return weights  # a fixed point of the projected gradient step: the optimum
            value, candidate_grad = loss_and_grad(candidate)
            if value < current:
                break
            step /= 2
        improvement = current - value
        weights, current, grad, step = candidate, value, candidate_grad, step * 2
        if improvement < tol:
            break
    return weights


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0].max()
    return np.maximum(v - cumulative[rho] / (rho + 1), 0)
