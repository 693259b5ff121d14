"""Stacking: a logistic-regression meta-learner over the members' class scores.

The features of a row are the members' log-probabilities, concatenated in member order (log-softmax
removes each member's arbitrary logit offset). The fitted model is kept as plain coefficients, so an
ensemble folder stores it as JSON and predicts with numpy alone, without pickled scikit-learn objects.
Its score is only honest out of fold: `cross_fitted` gives every row a prediction from a model
that did not see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from lib.core.errors import UserError

CV_FOLDS = 5
CV_SEED = 0
REGULARISATION_C = 1.0


def stack_features(member_scores: np.ndarray) -> np.ndarray:
    """`(members, rows, classes)` -> `(rows, members * classes)` of member log-probabilities."""
    logp = log_softmax(np.asarray(member_scores, dtype=np.float64), axis=2)
    return np.concatenate(list(logp), axis=1)


@dataclass(frozen=True)
class Stacker:
    """Multinomial logistic regression: log-scores = features @ coef.T + intercept."""

    coef: np.ndarray  # (classes, members * classes)
    intercept: np.ndarray  # (classes,)
    regularisation_c: float

    def scores(self, member_scores: np.ndarray) -> np.ndarray:
        return stack_features(member_scores) @ self.coef.T + self.intercept

    def to_dict(self) -> dict:
        return {"features": "members' log-softmax, concatenated in member order",
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "C": self.regularisation_c}

    @classmethod
    def from_dict(cls, data: dict) -> "Stacker":
        return cls(np.asarray(data["coef"], dtype=np.float64), np.asarray(data["intercept"], dtype=np.float64),
                   float(data["C"]))


def fit_stacker(member_scores: np.ndarray, labels: np.ndarray) -> Stacker:
    """Fit the meta-learner on rows the members did not train on (validation or out-of-fold)."""
    num_classes = member_scores.shape[2]
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise UserError(f"--stack: the validation rows have no example of class {missing[0]}; "
                        "stacking needs every class")
    model = LogisticRegression(C=REGULARISATION_C, max_iter=2000).fit(stack_features(member_scores), labels)
    coef, intercept = model.coef_, model.intercept_
    if num_classes == 2:  # scikit-learn keeps one row for binary problems: the log-odds of class 1
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return Stacker(coef, intercept, REGULARISATION_C)


def cross_fitted(fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray], labels: np.ndarray,
                 num_classes: int, flag: str) -> np.ndarray:
    """Out-of-fold log-scores: `fit_and_score(train_rows, held_out_rows)` on stratified folds.

    Uses 5 folds, fewer when a class has fewer rows than that; refuses below 2 rows per class.
    """
    counts = np.bincount(labels, minlength=num_classes)
    folds = min(CV_FOLDS, int(counts.min()))
    if folds < 2:
        raise UserError(f"{flag}: cross-fitting needs at least 2 validation rows of every class; "
                        f"class {int(counts.argmin())} has {int(counts.min())}")
    out = np.empty((len(labels), num_classes))
    for train_rows, held_out in StratifiedKFold(folds, shuffle=True, random_state=CV_SEED).split(labels, labels):
        out[held_out] = fit_and_score(train_rows, held_out)
    return out
