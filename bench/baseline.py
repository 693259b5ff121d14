"""The classical baseline: TF-IDF (character 1-4 and word 1-2 grams) + logistic regression.

    python -m bench.baseline                                    # train.py's default split, full data
    python -m bench.baseline --config experiments/seed_final.yaml   # that experiment's split
    python -m bench.baseline --max-train-samples 20000 --seed 1
    python -m bench.baseline --test-file data/test.csv --out submission_tfidf.csv
    python -m bench.baseline --blend-with runs/tiny-s42 runs/ens-offline   # does a model add to TF-IDF?

The rows come from `lib.finetune.splits.load_splits` with a `TrainConfig` built like train.py's (experiment
file, then these flags), so the validation rows are exactly those a fine-tuning run with the same
seed / val_size / train_file scores on, and every neural result can be reported next to this one.
The texts are the raw reviews: a classical baseline should not depend on our preprocessing.
Prints accuracy and macro-F1 on validation for the majority class and for TF-IDF + LR; with
--blend-with, also for the equal-weight average of TF-IDF's and each given folder's validation
log-probabilities (no weight is fitted on the validation rows, so the figure is not optimistic).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/baseline.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import FeatureUnion, make_pipeline

from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.core.options import read_config_file
from lib.data.tables import Columns, positions, read_table
from lib.ensemble.members import read_val_logits
from lib.finetune.config import TrainConfig
from lib.finetune.metrics import classification_report, format_report
from lib.finetune.predict import write_predictions
from lib.finetune.splits import load_splits


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UserError(message)


def build_model(c: float, max_iter: int, seed: int):
    """Sublinear TF-IDF on both views (min_df 2 drops one-off typos), multinomial logistic regression."""
    features = FeatureUnion([
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True)),
        # Korean particles and one-syllable words (잘, 꼭, 돈) matter: keep one-character tokens.
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                 token_pattern=r"(?u)\b\w+\b")),
    ])
    return make_pipeline(features, LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> tuple[float, float]:
    accuracy = float((predictions == labels).mean())
    macro_f1 = float(f1_score(labels, predictions, labels=list(range(num_labels)), average="macro", zero_division=0))
    return accuracy, macro_f1


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def aligned_log_probabilities(folder: Path, val_ids: np.ndarray, num_labels: int) -> np.ndarray:
    """`folder`'s validation log-probabilities in `val_ids` order; refused if it was scored on other rows."""
    ids, _, logits = read_val_logits(folder, num_labels)
    index = positions(ids, val_ids)
    missing = int((index < 0).sum())
    if missing or len(ids) != len(val_ids):
        raise UserError(f"--blend-with {folder}: its validation rows are not this split's ({len(ids)} rows, "
                        f"{missing} of ours missing); give the --config/--seed it was trained with")
    return log_softmax(logits[index])


def nll(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def main(argv: list[str]) -> int:
    parser = _Parser(prog="python -m bench.baseline", description=__doc__.splitlines()[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="train.py experiment file whose split (seed, val_size, train_file, ...) to use")
    parser.add_argument("--train-file", default=None, help="default: the config's (data/train.csv)")
    parser.add_argument("--seed", type=int, default=None, help="split seed; default: the config's (42)")
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="stratified subset of the training split, as train.py's flag")
    parser.add_argument("--C", type=float, default=1.0,
                        help="inverse L2 strength of the logistic regression (sklearn's default; "
                             "not tuned on the validation rows)")
    parser.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations")
    parser.add_argument("--blend-with", type=Path, nargs="+", default=(), metavar="FOLDER",
                        help="run, cross-validation or ensemble folders scored on the same split: also score "
                             "TF-IDF averaged with each one")
    parser.add_argument("--test-file", type=Path, default=None, help="CSV to predict (ID, review)")
    parser.add_argument("--out", type=Path, default=Path("submission_tfidf.csv"), help="with --test-file")
    args = parser.parse_args(argv)

    values = read_config_file(args.config) if args.config else {}
    cfg = TrainConfig.from_dict(values, source=str(args.config or "config"))
    flags = {"train_file": args.train_file, "seed": args.seed, "max_train_samples": args.max_train_samples}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    start = time.perf_counter()
    splits = load_splits(cfg)
    train, val = splits.train, splits.val
    split = f"--val-file {cfg.val_file}" if cfg.val_file else (
        f"fold {cfg.fold}/{cfg.num_folds}" if cfg.num_folds else f"val_size {cfg.val_size}")
    print(f"split: {len(train)} training / {len(val)} validation rows of {cfg.train_file} (seed {cfg.seed}, {split})")

    majority = int(np.bincount(train.labels, minlength=splits.num_labels).argmax())
    accuracy, macro_f1 = scores(val.labels, np.full(len(val), majority), splits.num_labels)
    print(f"majority class ({splits.label_names[majority]}): accuracy {accuracy:.4f}  macro_f1 {macro_f1:.4f}")

    others = {folder: aligned_log_probabilities(folder, val.ids, splits.num_labels) for folder in args.blend_with}
    model = build_model(args.C, args.max_iter, cfg.seed)
    fit_start = time.perf_counter()
    model.fit(train.texts, train.labels)
    fit_seconds = time.perf_counter() - fit_start
    probabilities = model.predict_proba(val.texts)
    log_probabilities = np.log(np.clip(probabilities, 1e-12, None))
    accuracy, macro_f1 = scores(val.labels, probabilities.argmax(axis=1), splits.num_labels)
    print(f"TF-IDF + LR (C={args.C:g}): accuracy {accuracy:.4f}  macro_f1 {macro_f1:.4f}  "
          f"nll {nll(log_probabilities, val.labels):.4f}")
    print(format_report(classification_report(probabilities, val.labels, splits.label_names)))
    union = model.steps[0][1]
    sizes = ", ".join(f"{name} {len(vectorizer.vocabulary_)}" for name, vectorizer in union.transformer_list)
    print(f"features: {sizes}; fit {fit_seconds:.0f} s")
    for folder, other in others.items():
        blended = (log_probabilities + other) / 2  # equal weights: nothing fitted on the validation rows
        accuracy, macro_f1 = scores(val.labels, blended.argmax(axis=1), splits.num_labels)
        print(f"TF-IDF + LR averaged with {folder}: accuracy {accuracy:.4f}  macro_f1 {macro_f1:.4f}  "
              f"nll {nll(log_softmax(blended), val.labels):.4f}")

    if args.test_file:
        columns = Columns(cfg.id_column, cfg.text_column, cfg.label_column)
        test = read_table(args.test_file, columns, labelled=False, flag="--test-file")
        write_predictions(args.out, test.ids, model.predict_proba(test.texts), cfg.id_column)
        print(f"wrote {len(test)} predictions to {args.out}")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
