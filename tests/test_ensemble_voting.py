"""Soft voting, member weights and stacking against hand computations."""

import math

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from lib.core.errors import UserError
from lib.ensemble.calibration import nll
from lib.ensemble.pooling import equal_weights, fit_weights, parse_weights, pool, project_to_simplex
from lib.ensemble.stacking import Stacker, cross_fitted, fit_stacker

# two members, two rows, three classes
MEMBERS = np.array([
    [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]],
    [[0.1, 1.5, 0.2], [-0.5, -0.2, 2.0]],
])


def _softmax_row(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 3.0)])
def test_soft_voting_equals_a_hand_computation(weights):
    w = np.array(weights) / sum(weights)
    for row in range(2):
        # logits: softmax of the weighted mean logit
        mean_logits = [w[0] * MEMBERS[0, row, k] + w[1] * MEMBERS[1, row, k] for k in range(3)]
        expected_logits = _softmax_row(mean_logits)
        # probs: the weighted mean of the members' probabilities
        p0, p1 = _softmax_row(MEMBERS[0, row]), _softmax_row(MEMBERS[1, row])
        expected_probs = [w[0] * p0[k] + w[1] * p1[k] for k in range(3)]
        np.testing.assert_allclose(softmax(pool(MEMBERS, w, "logits"), axis=1)[row], expected_logits, rtol=1e-12)
        np.testing.assert_allclose(softmax(pool(MEMBERS, w, "probs"), axis=1)[row], expected_probs, rtol=1e-12)
        np.testing.assert_allclose(np.exp(pool(MEMBERS, w, "probs"))[row], expected_probs, rtol=1e-12)


def test_the_two_modes_differ_but_equal_weights_are_the_plain_mean():
    logits, probs = pool(MEMBERS, equal_weights(2), "logits"), pool(MEMBERS, equal_weights(2), "probs")
    assert not np.allclose(softmax(logits, axis=1), softmax(probs, axis=1))
    np.testing.assert_allclose(logits, MEMBERS.mean(axis=0))


def test_logit_mean_softmax_equals_log_prob_mean_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(3, 20, 5)) + rng.normal(scale=10.0, size=(3, 20, 1))  # row offsets
    w = np.array([0.2, 0.5, 0.3])
    from_logits = softmax(pool(logits, w, "logits"), axis=1)
    from_log_probs = softmax(pool(log_softmax(logits, axis=2), w, "logits"), axis=1)
    np.testing.assert_allclose(from_logits, from_log_probs, rtol=1e-10)


def _members_of_mixed_quality(seed, rows=400):
    """A good member, a weak one and an over-confident one, on the same labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=rows)
    signal = np.eye(4)[labels]
    good = 3.0 * signal + rng.normal(size=(rows, 4))
    weak = 0.5 * signal + rng.normal(size=(rows, 4))
    overconfident = 8.0 * (signal + rng.normal(scale=0.8, size=(rows, 4)))
    return np.stack([good, weak, overconfident]), labels


@pytest.mark.parametrize("average", ["logits", "probs"])
@pytest.mark.parametrize("seed", range(4))
def test_fitted_weights_never_score_worse_than_equal_weights(average, seed):
    scores, labels = _members_of_mixed_quality(seed)
    w = fit_weights(scores, labels, average)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    fitted, equal = nll(pool(scores, w, average), labels), nll(pool(scores, equal_weights(3), average), labels)
    assert fitted <= equal
    assert fitted < equal - 0.01  # the members differ, so the fit finds something better
    assert w[0] == w.max()  # the good member counts most


@pytest.mark.parametrize("average", ["logits", "probs"])
def test_fitted_weights_find_the_optimum_of_a_grid_search(average):
    scores, labels = _members_of_mixed_quality(7)
    pair = scores[[1, 2]]
    grid = [nll(pool(pair, np.array([a, 1 - a]), average), labels) for a in np.linspace(0, 1, 1001)]
    assert nll(pool(pair, fit_weights(pair, labels, average), average), labels) <= min(grid) + 1e-7


def test_fitted_weights_drop_a_useless_member():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=600)
    good = 2.0 * np.eye(3)[labels] + rng.normal(size=(600, 3))
    noise = 5.0 * rng.normal(size=(600, 3))
    w = fit_weights(np.stack([good, noise]), labels, "probs")
    assert w[1] < 0.02


def test_fitting_one_member_keeps_its_weight():
    scores, labels = _members_of_mixed_quality(0)
    np.testing.assert_allclose(fit_weights(scores[:1], labels, "logits"), [1.0])


@pytest.mark.parametrize("v, expected", [([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]), ([2.0, 0.0], [1.0, 0.0]),
                                          ([0.5, 0.5, -3.0], [0.5, 0.5, 0.0]), ([1.0, 1.0], [0.5, 0.5])])
def test_projection_onto_the_simplex(v, expected):
    np.testing.assert_allclose(project_to_simplex(np.array(v)), expected, atol=1e-12)


def test_weights_are_parsed_and_normalised():
    np.testing.assert_allclose(parse_weights("1,1,2", 3), [0.25, 0.25, 0.5])


@pytest.mark.parametrize("text, needle", [("1,2", "2 weights given for 3 members"), ("1,-1,2", "non-negative"),
                                          ("a,b,c", "comma-separated numbers"), ("0,0,0", "positive"),
                                          ("1,nan,1", "non-negative")])
def test_bad_weights_are_refused_in_one_line(text, needle):
    with pytest.raises(UserError, match="--weights") as error:
        parse_weights(text, 3)
    assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_stacker_survives_json_and_beats_chance_out_of_fold(num_classes):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes, size=300)
    members = np.stack([2.0 * np.eye(num_classes)[labels] + rng.normal(size=(300, num_classes)) for _ in range(2)])
    stacker = fit_stacker(members, labels)
    assert stacker.coef.shape == (num_classes, 2 * num_classes)
    restored = Stacker.from_dict(stacker.to_dict())
    np.testing.assert_allclose(restored.scores(members), stacker.scores(members))
    if num_classes == 2:  # the padded binary model gives scikit-learn's probabilities
        from sklearn.linear_model import LogisticRegression

        from lib.ensemble.stacking import stack_features
        reference = LogisticRegression(C=stacker.regularisation_c, max_iter=2000).fit(stack_features(members), labels)
        np.testing.assert_allclose(softmax(stacker.scores(members), axis=1),
                                   reference.predict_proba(stack_features(members)), rtol=1e-6)
    out_of_fold = cross_fitted(lambda fit, rows: fit_stacker(members[:, fit], labels[fit]).scores(members[:, rows]),
                               labels, num_classes, "--stack")
    assert (out_of_fold.argmax(1) == labels).mean() > 0.8


def test_cross_fitting_refuses_a_class_with_one_row():
    labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(UserError, match="--stack: .* class 2 has 1"):
        cross_fitted(lambda fit, rows: np.zeros((len(rows), 3)), labels, 3, "--stack")
