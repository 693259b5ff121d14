"""Temperature scaling, ECE and prior correction on cases whose answer is known."""

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from lib.ensemble.calibration import (correct_priors, em_prior, expected_calibration_error, fit_temperature,
                                      match_prior, nll)


def _sample_labels(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from softmax(scores): scores that are calibrated by construction."""
    probs = softmax(scores, axis=1)
    return (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)


def test_nll_of_uniform_scores_is_log_k():
    assert nll(np.zeros((5, 4)), np.array([0, 1, 2, 3, 0])) == pytest.approx(np.log(4))


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_the_temperature_and_never_raises_nll(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 4))
    labels = _sample_labels(logits / true_temperature, rng)  # calibrated at T = true_temperature
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(true_temperature, rel=0.1)
    assert fit.nll_after <= fit.nll_before
    assert fit.nll_after == pytest.approx(nll(logits / fit.temperature, labels))
    assert (np.argmax(logits / fit.temperature, axis=1) == np.argmax(logits, axis=1)).all()
    if true_temperature != 1.0:
        assert fit.ece_after < fit.ece_before


@pytest.mark.parametrize("seed", range(8))
def test_temperature_scaling_never_raises_nll_on_arbitrary_scores(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=rng.uniform(0.1, 10), size=(50, 3))
    labels = rng.integers(0, 3, size=50)  # unrelated to the scores: the worst case for a fit
    fit = fit_temperature(logits, labels)
    assert fit.temperature > 0
    assert nll(logits / fit.temperature, labels) <= nll(logits, labels)


def test_no_temperature_is_fitted_when_every_validation_row_is_right():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.5]])
    fit = fit_temperature(logits, np.array([0, 1, 0]))
    assert fit.temperature == 1.0 and fit.separable and "no finite minimum" in fit.report()
    assert not fit_temperature(logits, np.array([0, 1, 1])).separable


def _scores_with_confidence(confidences, correct):
    """Two-class log-scores predicting class 0 with the given confidence; labels right where `correct`."""
    p = np.asarray(confidences, dtype=float)
    scores = np.log(np.stack([p, 1 - p], axis=1))
    labels = np.where(np.asarray(correct), 0, 1)
    return scores, labels


def test_ece_of_a_known_case():
    scores, labels = _scores_with_confidence([0.8] * 10, [True] * 5 + [False] * 5)
    assert expected_calibration_error(scores, labels) == pytest.approx(0.3)
    # two bins: confidence 0.9 with 3/4 right (gap 0.15) and 0.6 with 2/4 right (gap 0.1), equal weight
    scores, labels = _scores_with_confidence([0.9] * 4 + [0.6] * 4,
                                             [True, True, True, False, True, True, False, False])
    assert expected_calibration_error(scores, labels) == pytest.approx(0.125)
    perfectly_calibrated, labels = _scores_with_confidence([0.75] * 4, [True, True, True, False])
    assert expected_calibration_error(perfectly_calibrated, labels) == pytest.approx(0.0)


def _label_shift_posteriors(source_prior, target_prior, n, seed):
    """Test rows drawn under `target_prior` from 1-D Gaussians; exact posteriors under `source_prior`."""
    rng = np.random.default_rng(seed)
    means = np.array([-2.0, 0.0, 2.0])
    labels = rng.choice(3, size=n, p=target_prior)
    x = rng.normal(means[labels], 1.0)
    scores = np.log(source_prior) - 0.5 * (x[:, None] - means[None, :]) ** 2
    return log_softmax(scores, axis=1), labels


@pytest.mark.parametrize("target", [[0.1, 0.3, 0.6], [0.5, 0.3, 0.2], [0.7, 0.05, 0.25]])
def test_em_recovers_a_known_shifted_prior(target):
    source = np.array([0.5, 0.3, 0.2])
    scores, labels = _label_shift_posteriors(source, np.array(target), 30000, seed=1)
    prior, iterations = em_prior(scores, source)
    np.testing.assert_allclose(prior, target, atol=0.015)
    assert iterations > 1
    corrected = correct_priors(scores, source * 100, "em")  # counts, not shares: the scale must not matter
    np.testing.assert_allclose(corrected.test_prior, prior, atol=1e-6)
    np.testing.assert_allclose(np.exp(corrected.scores).mean(axis=0), prior, atol=1e-6)
    if target != list(source):
        assert (corrected.scores.argmax(1) == labels).mean() > (scores.argmax(1) == labels).mean()


def test_train_prior_correction_makes_the_mean_posterior_match_the_training_prior():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(500, 4)) + np.array([1.5, 0.0, 0.0, -1.0])  # a model drifting to class 0
    counts = np.array([10, 20, 30, 40])
    corrected = correct_priors(scores, counts, "train")
    np.testing.assert_allclose(np.exp(corrected.scores).mean(axis=0), counts / counts.sum(), atol=1e-8)
    before, after = (np.bincount(s.argmax(1), minlength=4) for s in (scores, corrected.scores))
    assert after[3] > before[3] and after[0] < before[0]
    assert match_prior(scores, counts).sum() == pytest.approx(0.0, abs=1e-9)


def test_count_matching_makes_the_predicted_counts_follow_the_training_distribution():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(4000, 4)) + np.array([0.0, -0.5, 0.5, 2.0])  # argmax mostly class 3
    counts = np.array([12, 9, 25, 54])
    corrected = correct_priors(scores, counts, "counts")
    shares = np.bincount(corrected.scores.argmax(1), minlength=4) / len(scores)
    np.testing.assert_allclose(shares, counts / counts.sum(), atol=0.005)
    assert abs(np.bincount(scores.argmax(1), minlength=4)[1] / len(scores) - 0.09) > 0.03  # it had to move
    np.testing.assert_allclose(np.exp(corrected.scores).sum(axis=1), 1.0)


def test_count_matching_works_for_a_model_that_barely_tells_rows_apart():
    """An undertrained model gives every row nearly the training prior: argmax is one class throughout."""
    rng = np.random.default_rng(5)
    counts = np.array([12, 9, 25, 54])
    scores = np.log(counts / counts.sum()) + 0.01 * rng.normal(size=(3000, 4))
    assert np.bincount(scores.argmax(1), minlength=4)[3] == 3000
    shares = np.bincount(correct_priors(scores, counts, "counts").scores.argmax(1), minlength=4) / 3000
    np.testing.assert_allclose(shares, counts / counts.sum(), atol=0.005)
