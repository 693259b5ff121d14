"""`train.py --model tfidf`: the classical member, trained on a neural run's split and written as a run folder.

TF-IDF + logistic regression (lib.model.tfidf) on the same rows as a neural run with the same data
options (`load_splits`), after the same fitted preprocessor (lib.finetune.prepare's settings), so
predict.py and ensemble.py read it like any run. Its folder holds what applies of a neural run's
(lib.finetune.run_folder):

    config.json        the resolved TrainConfig; model "tfidf" is how readers tell the kind
    plan.json          a ClassicalPlan: kind, label set, class counts, special tokens, features per view
    environment.json   as a neural run's, plus the scikit-learn version
    preprocessor.json  the fitted text preprocessor, applied before the features
    best/              the model (settings.json, vocabulary.json, weights.npz; no pickles), the only one
    val_logits.npz     ids, labels and fp32 log-probabilities of the validation rows
    result.json        kept ("best"), best and models {"best": metrics}, report, timings
    submission.csv     when --test-file was given

No tokenizer/, last/, metrics.jsonl or tensorboard/: there are no tokens, steps or checkpoints, and
nothing to resume. Everything is computed in memory first (fit, validation, test predictions), so
bad input leaves nothing behind; then the folder is written as `.incomplete` and renamed.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import sklearn
import torch

from lib.core.errors import UserError
from lib.core.files import atomic_directory
from lib.data.preprocess import TextPreprocessor
from lib.data.tables import class_distribution
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig
from lib.finetune.losses import FocalLoss
from lib.finetune.metrics import classification_metrics, classification_report, format_report
from lib.finetune.plan import ClassicalPlan
from lib.finetune.predict import predict_table, write_predictions
from lib.finetune.run_folder import RunFolder, finish, new_run_folder
from lib.finetune.splits import load_splits
from lib.loop.work_folder import environment_record
from lib.model.tfidf import TfidfClassifier

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


def train_classical(cfg: TrainConfig, *, overwrite: bool = False, argv: list[str] | None = None) -> RunFolder:
    """Fit TF-IDF + logistic regression on `cfg`'s split; returns the finished run folder."""
    if cfg.model != CLASSICAL_MODEL:
        raise UserError(f"--model {cfg.model}: not the classical model ({CLASSICAL_MODEL})")
    splits = load_splits(cfg)
    train, val, label_names = splits.train, splits.val, list(splits.label_names)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns,
                                    cfg.special_pattern_min_count, cfg.num_rare_words_to_remove)
    train_texts = preprocessor.fit(train.texts).transform(train.texts)

    started = time.perf_counter()
    model = TfidfClassifier().fit(train_texts, train.labels, splits.num_labels, cfg.seed)
    fit_seconds = time.perf_counter() - started
    if not model.converged:
        log.warning("--model tfidf: the logistic regression did not converge in %d iterations", model.iterations)
    plan = ClassicalPlan(kind=CLASSICAL_MODEL, num_labels=splits.num_labels, label_names=label_names,
                         train_class_counts=class_distribution(train.labels, splits.num_labels),
                         val_class_counts=class_distribution(val.labels, splits.num_labels),
                         special_tokens=preprocessor.special_tokens, features=model.feature_counts)

    started = time.perf_counter()
    val_logits = model.logits(preprocessor.transform(val.texts))
    eval_seconds = time.perf_counter() - started
    # the objective is plain cross entropy: config.py refuses focal loss and label smoothing with tfidf
    metrics = classification_metrics(val_logits, val.labels, FocalLoss(splits.num_labels), label_names)
    report = classification_report(val_logits, val.labels, label_names)
    result = {
        "kept": "best",
        "best": metrics,
        "models": {"best": metrics},
        "report": report,
        "features": model.feature_counts,
        "iterations": model.iterations,
        "converged": model.converged,
        "train_seconds": round(fit_seconds, 2),
        "train_samples_per_second": round(len(train) / max(fit_seconds, 1e-9), 1),
        "eval_samples_per_second": round(len(val) / max(eval_seconds, 1e-9), 1),
    }
    test = None
    if cfg.test_file:  # through predict.py's own path, so the submission is what predict.py would write
        test = predict_table(cfg, plan, preprocessor, None, model, cfg.test_file, CPU, show_progress=False)
        result["test_predicted_counts"] = class_distribution(test[1].argmax(axis=1), splits.num_labels)

    run = _write_folder(cfg, overwrite, argv, plan, preprocessor, model, val, val_logits, test, result)
    log.info("%s: %d train / %d val rows, %s features, fit in %.1f s (%d iterations); val loss %.4f  "
             "accuracy %.4f  macro_f1 %.4f\n%s", run.path, len(train), len(val),
             " + ".join(f"{n} {name}" for name, n in model.feature_counts.items()), fit_seconds, model.iterations,
             metrics["loss"], metrics["accuracy"], metrics["macro_f1"], format_report(report))
    return finish(run, overwrite)


def _write_folder(cfg: TrainConfig, overwrite: bool, argv: list[str] | None, plan: ClassicalPlan,
                  preprocessor: TextPreprocessor, model: TfidfClassifier, val, val_logits: np.ndarray,
                  test: tuple[np.ndarray, np.ndarray] | None, result: dict) -> RunFolder:
    """The unfinished run folder with everything a neural run has that applies; removed if writing fails."""
    run = new_run_folder(cfg.output_dir, cfg.run_name, cfg.model, overwrite)
    try:
        cfg.save(run.config)
        run.write_json(run.plan, plan.to_dict())
        run.write_json(run.environment, {**environment_record(CPU, argv or []), "scikit-learn": sklearn.__version__})
        preprocessor.save(run.preprocessor)
        with atomic_directory(run.best) as folder:
            model.save(folder)
        run.save_val_logits(val.ids, val.labels, val_logits)
        if test is not None:
            write_predictions(run.submission, *test, cfg.id_column)
        run.write_json(run.result, result)
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run
