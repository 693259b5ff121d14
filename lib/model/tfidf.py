"""The classical classifier: TF-IDF features (character 1-4 and word 1-2 grams) + multinomial logistic regression.

The settings are bench/baseline.py's, as measured there: `char_wb` 1-4 grams and word 1-2 grams
(one-character words kept: Korean particles and words such as 잘, 꼭, 돈 matter), both with
min_df 2, sublinear tf, smoothed idf, lower-casing and l2-normalised rows, and sklearn's
LogisticRegression (L-BFGS, C 1, 1000 iterations) on the two views side by side.

Saved without pickles, in a folder of its own:

    settings.json     format version, the view and regression settings, the classes seen in training
    vocabulary.json   each view's terms in column order (JSON, readable)
    weights.npz       idf_char, idf_word, coef, intercept (float64; loaded with allow_pickle=False)

How the transform is rebuilt: `TfidfVectorizer` is used only to *learn* each view (vocabulary and
idf, with its min_df and smoothing); the features themselves are always computed here, by a
`CountVectorizer(vocabulary=...)` (which needs no fitting) followed by tf-idf weighting and l2
normalisation, the arithmetic of sklearn's `TfidfTransformer.transform`. Training, validation and
a reloaded model therefore go through the same code with the same arrays, so a reloaded model
gives the same logits bit for bit; setting `idf_` on a fresh `TfidfVectorizer` would instead rely on
sklearn's private fitted-state checks, which change between versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import log_softmax
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from lib.core.errors import UserError

FORMAT_VERSION = 1
SETTINGS_FILE = "settings.json"
VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "weights.npz"
# The log-probability of a class no training row had (the regression cannot score it); the baseline's
# own clip of probabilities, so such a class is never predicted and losses stay finite.
ABSENT_CLASS_LOG_PROBABILITY = float(np.log(1e-12))


@dataclass(frozen=True)
class ViewSettings:
    """One TF-IDF view: how texts become terms (kept at load) and how the terms were chosen (fit only)."""

    analyzer: str
    ngram_range: tuple[int, int]
    min_df: int = 2
    token_pattern: str | None = None  # words only; characters ignore it
    lowercase: bool = True
    sublinear_tf: bool = True
    smooth_idf: bool = True

    def counter(self, vocabulary: dict[str, int] | None = None) -> CountVectorizer:
        return CountVectorizer(analyzer=self.analyzer, ngram_range=self.ngram_range, token_pattern=self.token_pattern,
                               lowercase=self.lowercase, vocabulary=vocabulary, dtype=np.float64)


@dataclass(frozen=True)
class TfidfSettings:
    char: ViewSettings = ViewSettings("char_wb", (1, 4))
    word: ViewSettings = ViewSettings("word", (1, 2), token_pattern=r"(?u)\b\w+\b")
    C: float = 1.0  # inverse L2 strength, sklearn's default (not tuned on the validation rows)
    max_iter: int = 1000

    @property
    def views(self) -> dict[str, ViewSettings]:
        return {"char": self.char, "word": self.word}

    @classmethod
    def from_dict(cls, data: dict) -> "TfidfSettings":
        view = lambda d: ViewSettings(**{**d, "ngram_range": tuple(d["ngram_range"])})
        return cls(view(data["char"]), view(data["word"]), float(data["C"]), int(data["max_iter"]))


@dataclass
class _View:
    """A fitted view: its terms in column order and their idf."""

    settings: ViewSettings
    terms: list[str]
    idf: np.ndarray
    _counter: CountVectorizer | None = field(default=None, repr=False)

    @classmethod
    def fit(cls, settings: ViewSettings, texts: Sequence[str], name: str) -> "_View":
        vectorizer = TfidfVectorizer(analyzer=settings.analyzer, ngram_range=settings.ngram_range,
                                     min_df=settings.min_df, token_pattern=settings.token_pattern,
                                     lowercase=settings.lowercase, sublinear_tf=settings.sublinear_tf,
                                     smooth_idf=settings.smooth_idf, dtype=np.float64)
        try:
            vectorizer.fit(texts)
        except ValueError as error:  # no term left after min_df, or only empty texts
            raise UserError(f"--model tfidf: no {name} features from {len(texts)} training texts ({error})") from None
        vocabulary = vectorizer.vocabulary_
        return cls(settings, sorted(vocabulary, key=vocabulary.get), vectorizer.idf_.astype(np.float64))

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """tf-idf rows, as TfidfTransformer.transform computes them: 1 + log(tf), times idf, l2 norm."""
        if self._counter is None:
            self._counter = self.settings.counter({term: i for i, term in enumerate(self.terms)})
        counts = sp.csr_matrix(self._counter.transform(texts), dtype=np.float64)
        if self.settings.sublinear_tf:
            np.log(counts.data, out=counts.data)
            counts.data += 1.0
        counts.data *= self.idf[counts.indices]
        return normalize(counts, norm="l2", copy=False)


class TfidfClassifier:
    """`fit` on preprocessed texts, then `logits` (log-probabilities) for any texts; `save` / `load` a folder."""

    def __init__(self, settings: TfidfSettings = TfidfSettings()) -> None:
        self.settings = settings
        self.views: dict[str, _View] = {}
        self.classes = np.zeros(0, dtype=np.int64)  # the labels the regression saw, columns of coef
        self.num_labels = 0
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)
        self.iterations = 0

    @property
    def feature_counts(self) -> dict[str, int]:
        return {name: len(view.terms) for name, view in self.views.items()}

    def fit(self, texts: Sequence[str], labels: np.ndarray, num_labels: int, seed: int) -> "TfidfClassifier":
        texts, labels = list(texts), np.asarray(labels, dtype=np.int64)
        if len(np.unique(labels)) < 2:
            raise UserError("--model tfidf: the training rows hold fewer than two classes; nothing to separate")
        self.views = {name: _View.fit(settings, texts, name) for name, settings in self.settings.views.items()}
        regression = LogisticRegression(C=self.settings.C, max_iter=self.settings.max_iter, random_state=seed)
        regression.fit(self.features(texts), labels)
        self.classes = regression.classes_.astype(np.int64)
        self.num_labels = num_labels
        self.coef, self.intercept = regression.coef_.astype(np.float64), regression.intercept_.astype(np.float64)
        self.iterations = int(np.max(regression.n_iter_))
        return self

    @property
    def converged(self) -> bool:
        return self.iterations < self.settings.max_iter

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Both views side by side, character columns first (as bench/baseline.py's FeatureUnion)."""
        texts = list(texts)
        return sp.hstack([view.transform(texts) for view in self.views.values()], format="csr")

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """float32 log-probabilities `(rows, num_labels)`: softmax of them is predict_proba."""
        scores = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        if len(self.classes) == 2:  # binary: one row of coefficients, the score of the second class against 0
            scores = np.hstack([np.zeros_like(scores), scores])
        out = np.full((scores.shape[0], self.num_labels), ABSENT_CLASS_LOG_PROBABILITY)
        out[:, self.classes] = log_softmax(scores, axis=1)
        return out.astype(np.float32)

    def save(self, folder: Path) -> None:
        """Write the three files into `folder` (the caller makes it atomic)."""
        folder = Path(folder)
        settings = {"format_version": FORMAT_VERSION, "kind": "tfidf", **asdict(self.settings),
                    "num_labels": self.num_labels, "classes": self.classes.tolist(), "iterations": self.iterations,
                    "features": self.feature_counts}
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        vocabulary = {name: view.terms for name, view in self.views.items()}
        (folder / VOCABULARY_FILE).write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        np.savez(folder / WEIGHTS_FILE, coef=self.coef, intercept=self.intercept,
                 **{f"idf_{name}": view.idf for name, view in self.views.items()})

    @classmethod
    def load(cls, folder: Path) -> "TfidfClassifier":
        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
            if settings.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {settings.get('format_version')!r}, expected {FORMAT_VERSION}")
            vocabulary = json.loads((folder / VOCABULARY_FILE).read_text(encoding="utf-8"))
            model = cls(TfidfSettings.from_dict(settings))
            with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
                model.views = {name: _View(view, list(vocabulary[name]), weights[f"idf_{name}"])
                               for name, view in model.settings.views.items()}
                model.coef, model.intercept = weights["coef"], weights["intercept"]
            model.classes = np.asarray(settings["classes"], dtype=np.int64)
            model.num_labels, model.iterations = int(settings["num_labels"]), int(settings["iterations"])
        except FileNotFoundError as error:
            raise UserError(f"{folder}: missing {Path(error.filename).name}; not a TF-IDF model saved by "
                            "train.py --model tfidf") from None
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise UserError(f"{folder}: not a TF-IDF model saved by this version of train.py ({error})") from None
        columns = sum(len(view.terms) for view in model.views.values())
        rows = 1 if len(model.classes) == 2 else len(model.classes)
        if any(len(v.idf) != len(v.terms) for v in model.views.values()) or model.coef.shape != (rows, columns):
            raise UserError(f"{folder}: vocabulary, idf and coefficients do not match; the model files are corrupt")
        return model
