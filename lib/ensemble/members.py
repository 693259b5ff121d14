"""Ensemble members: finished run folders, or cross-validation folders written by `ensemble.py train --folds`.

A member is read through its saved validation logits (`val_logits.npz`: ids, labels, fp32 logits)
and, for test predictions, through its own preprocessor, tokenizer and model. A cross-validation
folder holds one finished run per fold plus `folds.json` and the out-of-fold logits as its
`val_logits.npz`; it predicts with the average of its fold models.

Members are compared row by row, aligned by id, never by position: predictions come back in file
order, but nothing else guarantees two runs list their validation rows alike.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.core.errors import UserError
from lib.data.tables import positions, table_columns
from lib.ensemble.pooling import equal_weights, pool
from lib.finetune.config import TrainConfig
from lib.finetune.predict import Inference, load_run, predict_run_table
from lib.finetune.run_folder import INCOMPLETE_SUFFIX, RunFolder

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"
ENSEMBLE_FILE = "ensemble.json"
VAL_LOGITS = "val_logits.npz"


@dataclass(frozen=True)
class Member:
    """One member: where it lives, what it predicts, and its validation rows."""

    path: Path
    model: str
    runs: tuple[Path, ...]  # the run folders that predict: the run itself, or one per fold
    label_names: tuple[str, ...]
    train_class_counts: tuple[int, ...]
    id_column: str
    text_column: str
    val_ids: np.ndarray
    val_labels: np.ndarray
    val_logits: np.ndarray

    @property
    def fingerprint(self) -> str:
        """Identifies the validation logits, so a saved ensemble notices a member trained again."""
        return hashlib.sha256(np.ascontiguousarray(self.val_logits, dtype=np.float32).tobytes()).hexdigest()[:16]


def open_member(path: Path) -> Member:
    """Read a member folder; every way it can be unusable is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run folder")
    if (path / ENSEMBLE_FILE).is_file():
        raise UserError(f"{path}: is an ensemble folder; give its member runs instead")
    if (path / FOLDS_FILE).is_file():
        return _open_folds(path)
    run = RunFolder(path)
    if path.name.endswith(INCOMPLETE_SUFFIX) or not run.result.is_file():
        if run.config.is_file():
            raise UserError(f"{path}: unfinished run (no result.json); resume it with python train.py --resume {path}")
        raise UserError(f"{path}: not a run folder (no result.json) nor a cross-validation folder "
                        f"from ensemble.py train --folds (no {FOLDS_FILE})")
    cfg = TrainConfig.load(run.config)
    # only the label set and counts: voting must not depend on the rest of the plan's schema
    plan = run.read_json(run.plan)
    try:
        names, counts = tuple(plan["label_names"]), tuple(plan["train_class_counts"])
    except KeyError as missing:
        raise UserError(f"{run.plan}: no {missing} entry; not a plan written by train.py") from None
    ids, labels, logits = read_val_logits(path, len(names))
    return Member(path, cfg.model, (path,), names, counts, cfg.id_column, cfg.text_column, ids, labels, logits)


def _open_folds(path: Path) -> Member:
    try:
        spec = json.loads((path / FOLDS_FILE).read_text(encoding="utf-8"))
        names, runs = tuple(spec["label_names"]), tuple(path / fold for fold in spec["folds"])
        ids, labels, logits = read_val_logits(path, len(names))
        return Member(path, spec["model"], runs, names, tuple(spec["train_class_counts"]), spec["id_column"],
                      spec["text_column"], ids, labels, logits)
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path / FOLDS_FILE}: not written by this version of ensemble.py") from None


def read_val_logits(path: Path, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, labels and validation logits of a run, cross-validation or ensemble folder."""
    try:
        with np.load(path / VAL_LOGITS) as saved:
            ids, labels, logits = saved["ids"].astype(str), saved["labels"].astype(np.int64), saved["logits"]
    except FileNotFoundError:
        raise UserError(f"{path}: missing {VAL_LOGITS}; the run predates saved validation logits") from None
    except (ValueError, KeyError, OSError):
        raise UserError(f"{path / VAL_LOGITS}: unreadable; expected arrays ids, labels, logits") from None
    if logits.ndim != 2 or logits.shape != (len(ids), num_labels) or len(labels) != len(ids):
        raise UserError(f"{path / VAL_LOGITS}: expected {num_labels} logits per validation row, "
                        f"got shape {logits.shape} for {len(ids)} ids")
    return ids, labels, logits.astype(np.float64)


@dataclass(frozen=True)
class AlignedValidation:
    """The members' validation logits on the same rows, in the first member's order."""

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray  # (members, rows, classes)


def align_validation(members: list[Member]) -> AlignedValidation:
    """Refuse members with another label set or other validation rows; stack the rest by id."""
    first = members[0]
    stacked = [first.val_logits]
    for member in members[1:]:
        if member.label_names != first.label_names:
            raise UserError(f"{member.path}: label set {list(member.label_names)} differs from "
                            f"{first.path}'s {list(first.label_names)}; members must classify the same labels")
        extra = np.setdiff1d(member.val_ids, first.val_ids)
        missing = np.setdiff1d(first.val_ids, member.val_ids)
        if len(extra) or len(missing) or len(member.val_ids) != len(first.val_ids):
            raise UserError(f"{member.path}: validation rows differ from {first.path} ({len(missing)} of "
                            f"{len(first.val_ids)} ids missing, {len(extra)} others); members must be validated "
                            "on the same rows (same --train-file, --seed and --val-size/--val-file/--num-folds)")
        order = positions(member.val_ids, first.val_ids)
        if (member.val_labels[order] != first.val_labels).any():
            raise UserError(f"{member.path}: validation labels differ from {first.path} on the same ids; "
                            "were they trained on different versions of the data?")
        stacked.append(member.val_logits[order])
    return AlignedValidation(first.val_ids, first.val_labels, np.stack(stacked))


def check_test_columns(path: Path, members: list[Member]) -> None:
    """The test file must have every member's id and text column, before any model is loaded."""
    header = table_columns(path, "--test")
    for member in members:
        missing = [c for c in (member.id_column, member.text_column) if c not in header]
        if missing:
            raise UserError(f"--test {path}: missing column {', '.join(map(repr, missing))} that {member.path} "
                            f"reads (ids from {member.id_column!r}, texts from {member.text_column!r}); "
                            f"the file has {', '.join(map(repr, header))}")


def predict_members(members: list[Member], path: Path, average: str, inference: Inference
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ids in file order, `(members, rows, classes)` scores) for the CSV at `path`.

    Each run predicts with its own preprocessor and tokenizer, one model in memory at a time. A
    cross-validation member pools its fold models with the ensemble's `average` mode.
    """
    ids, stacked = None, []
    for member in members:
        fold_ids, fold_scores = None, []
        for run_path in member.runs:
            log.info("predicting %s with %s", path, run_path)
            run_ids, logits = _predict_run(run_path, path, inference)
            if fold_ids is None:
                fold_ids = run_ids
            fold_scores.append(logits[positions(run_ids, fold_ids)])
        scores = pool(np.stack(fold_scores), equal_weights(len(fold_scores)), average)
        if ids is None:
            ids = fold_ids
        stacked.append(scores[positions(fold_ids, ids)])
    return ids, np.stack(stacked)


def _predict_run(run_path: Path, path: Path, inference: Inference) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_run(run_path, device=inference.device)
    try:
        return predict_run_table(loaded, path, inference)
    finally:
        del loaded
        free_memory()


def free_memory() -> None:
    """Release a model before loading the next one: members may not fit in memory together."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
