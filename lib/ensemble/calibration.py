"""Calibration and class-prior correction of class scores.

Everything here takes "log-scores": rows whose softmax is the model's predicted distribution
(logits, log-probabilities, or the log of averaged probabilities). That keeps temperature scaling
and prior correction independent of how an ensemble pooled its members.

- Temperature scaling (Guo et al. 2017): one T > 0 fitted on validation NLL; it never moves the
  argmax. For ensembles it is applied after pooling (Rahaman & Thiery 2021).
- Prior correction under label shift, z'_y = z_y + log pi_t(y) - log pi_s(y):
  `em` estimates the test prior pi_t with the EM procedure of Saerens, Latinne & Decaestecker (2002),
  which assumes calibrated posteriors, so calibrate first; `train` assumes the test prior equals the
  training prior and finds the class offsets that make the mean test posterior equal to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

log = logging.getLogger(__name__)

PRIOR_CORRECTIONS = ("em", "train", "counts")
# --prior-correction counts: temperatures of the annealing, and how close the argmax shares must come
COUNT_MATCHING_TEMPERATURES = (1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
COUNT_MATCHING_TOLERANCE = 0.002
CALIBRATIONS = ("temperature",)
ECE_BINS = 15
_SMALLEST_PRIOR = 1e-12  # a class absent from training must not turn log(prior) into -inf


def nll(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels, in float64."""
    logp = log_softmax(np.asarray(scores, dtype=np.float64), axis=1)
    return max(0.0, float(-logp[np.arange(len(labels)), labels].mean()))  # no -0.0000 from rounding


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (lo, hi], as in Guo et al. 2017."""
    probs = softmax(np.asarray(scores, dtype=np.float64), axis=1)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        members = which == b
        total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(labels))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did to validation NLL and ECE."""

    temperature: float
    rows: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    separable: bool  # every row right: NLL falls as T -> 0, so no finite T is fitted

    def report(self) -> str:
        why = " (every validation row is right, so NLL has no finite minimum; T kept)" if self.separable else ""
        return "\n".join([
            f"temperature scaling on {self.rows} validation rows: T = {self.temperature:.4f}{why}",
            f"{'':>8}{'nll':>9}{'ece':>9}",
            f"{'before':>8}{self.nll_before:>9.4f}{self.ece_before:>9.4f}",
            f"{'after':>8}{self.nll_after:>9.4f}{self.ece_after:>9.4f}",
        ])


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The T minimising validation NLL of softmax(scores / T).

    NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search finds the minimum;
    T = 1 is kept when the search does not beat it, so validation NLL never goes up. When every
    row is already right the minimum is at T -> 0, which would make every test prediction certain:
    T = 1 is kept then too.
    """
    scores = np.asarray(scores, dtype=np.float64)
    before = nll(scores, labels)
    separable = bool((scores.argmax(axis=1) == labels).all())
    temperature = 1.0
    if not separable:
        search = minimize_scalar(lambda log_t: nll(scores / np.exp(log_t), labels),
                                 bounds=(np.log(0.02), np.log(50.0)), method="bounded", options={"xatol": 1e-5})
        temperature = float(np.exp(search.x)) if search.fun < before else 1.0
    return TemperatureFit(temperature, len(labels), before, nll(scores / temperature, labels),
                          expected_calibration_error(scores, labels),
                          expected_calibration_error(scores / temperature, labels), separable)


def shift_prior(scores: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """Log-posteriors under the target prior: log p_s(y|x) + log pi_t(y) - log pi_s(y), renormalised."""
    offsets = np.log(np.maximum(target_prior, _SMALLEST_PRIOR)) - np.log(np.maximum(source_prior, _SMALLEST_PRIOR))
    return log_softmax(log_softmax(np.asarray(scores, dtype=np.float64), axis=1) + offsets, axis=1)


def em_prior(scores: np.ndarray, source_prior: np.ndarray, tol: float = 1e-8,
             max_iter: int = 10_000) -> tuple[np.ndarray, int]:
    """Saerens et al. (2002): the test prior that maximises the likelihood of the unlabelled rows.

    Start at the training prior; E-step: re-weight each posterior by pi/pi_s and renormalise;
    M-step: pi = mean adjusted posterior. Returns the prior and the number of iterations.
    """
    source_prior = _normalised(source_prior)
    prior = source_prior
    for iteration in range(1, max_iter + 1):
        updated = np.exp(shift_prior(scores, source_prior, prior)).mean(axis=0)
        converged = np.abs(updated - prior).max() < tol
        prior = updated
        if converged:
            return prior, iteration
    log.warning("EM prior estimation stopped after %d iterations without converging", max_iter)
    return prior, max_iter


def match_prior(scores: np.ndarray, target_prior: np.ndarray, tol: float = 1e-10, max_iter: int = 10_000,
                initial: np.ndarray | None = None, warn: bool = True) -> np.ndarray:
    """Per-class log offsets b with mean_i softmax(scores_i + b) = target_prior.

    This is Sinkhorn scaling with rows summing to one and columns to the target shares; it
    converges for positive probabilities. The offsets are centred, since softmax ignores a constant.
    """
    target = _normalised(target_prior)
    logp = log_softmax(np.asarray(scores, dtype=np.float64), axis=1)
    offsets = np.zeros(logp.shape[1]) if initial is None else np.array(initial, dtype=np.float64)
    for _ in range(max_iter):
        mean = np.exp(log_softmax(logp + offsets, axis=1)).mean(axis=0)
        if np.abs(mean - target).max() < tol:
            break
        offsets += np.log(np.maximum(target, _SMALLEST_PRIOR)) - np.log(mean)
    else:
        if warn:
            log.warning("prior matching stopped after %d iterations without converging", max_iter)
    return offsets - offsets.mean()


def match_decisions(scores: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """Per-class log offsets after which the argmax shares follow `target_prior` (within 0.2 points).

    A model's mean posterior can match the prior while its argmax still under-predicts the classes
    it is rarely sure of. Matching the mean of ever sharper softmaxes (scores / T, T falling) makes
    the mean approach the argmax counts; each temperature starts from the last one's offsets, and the
    first that matches the counts ends it. Scores that barely differ between rows need a small T.
    """
    logp = log_softmax(np.asarray(scores, dtype=np.float64), axis=1)
    target = _normalised(target_prior)
    offsets = np.zeros(logp.shape[1])
    for temperature in COUNT_MATCHING_TEMPERATURES:
        offsets = temperature * match_prior(logp / temperature, target, tol=1e-6, max_iter=2000,
                                            initial=offsets / temperature, warn=False)
        shares = np.bincount((logp + offsets).argmax(axis=1), minlength=len(target)) / len(logp)
        if np.abs(shares - target).max() <= COUNT_MATCHING_TOLERANCE:
            return offsets
    log.warning("--prior-correction counts: predicted shares still %.1f points from the target",
                100 * np.abs(shares - target).max())
    return offsets


@dataclass(frozen=True)
class PriorCorrection:
    """Test log-scores after prior correction, with the test prior they assume."""

    method: str
    scores: np.ndarray
    test_prior: np.ndarray
    iterations: int | None = None


def correct_priors(scores: np.ndarray, train_counts: np.ndarray, method: str) -> PriorCorrection:
    """Apply `--prior-correction em|train|counts` to test log-scores from a model trained with `train_counts`."""
    source = _normalised(train_counts)
    if method == "em":
        prior, iterations = em_prior(scores, source)
        return PriorCorrection(method, shift_prior(scores, source, prior), prior, iterations)
    if method in ("train", "counts"):
        offsets = match_prior(scores, source) if method == "train" else match_decisions(scores, source)
        adjusted = log_softmax(log_softmax(np.asarray(scores, dtype=np.float64), axis=1) + offsets, axis=1)
        return PriorCorrection(method, adjusted, source)
    raise ValueError(f"unknown prior correction {method!r}")


def _normalised(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum()
