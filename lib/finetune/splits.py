"""The training and validation rows of one fine-tuning run, read and split exactly as its config says."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.core.errors import UserError
from lib.data.tables import (Columns, TextTable, add_derived_rows, check_label_range, class_distribution, positions,
                             read_table, stratified_fold, stratified_sample, stratified_split)
from lib.finetune.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistilledRows:
    """Unlabelled training rows with a teacher's class probabilities as their targets."""

    ids: np.ndarray
    texts: list[str]
    probabilities: np.ndarray  # (rows, classes), float32, rows sum to 1

    def __len__(self) -> int:
        return len(self.texts)


def load_distilled(cfg: TrainConfig, labelled_ids: np.ndarray, num_labels: int) -> DistilledRows:
    """The rows of --unlabeled-file with softmax(teacher score / --distill-temperature) as targets.

    The teacher's scores are joined by id from an `.npz` of `ids` and `logits` (what predict.py
    --logits-out writes for a run or an ensemble). A row whose id is also in the labelled file is
    refused: it would train on a teacher's guess for a row that has a label, or is validation.
    """
    columns = Columns(cfg.id_column, cfg.text_column, cfg.label_column)
    table = read_table(cfg.unlabeled_file, columns, labelled=False, flag="--unlabeled-file")
    shared = np.intersect1d(table.ids, labelled_ids)
    if len(shared):
        raise UserError(f"--unlabeled-file {cfg.unlabeled_file}: {len(shared)} ids are also in the "
                        f"labelled data (e.g. {shared[0]!r}); expected rows without labels")
    path = Path(cfg.teacher_logits)
    if not path.is_file():
        raise UserError(f"--teacher-logits: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            teacher_ids, logits = stored["ids"].astype(str), stored["logits"].astype(np.float64)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"--teacher-logits {path}: expected an .npz with 'ids' and 'logits' as predict.py "
                        f"--logits-out writes ({error})") from None
    if logits.ndim != 2 or logits.shape[1] != num_labels or len(logits) != len(teacher_ids):
        raise UserError(f"--teacher-logits {path}: logits of shape {logits.shape}, expected one row per id "
                        f"and {num_labels} classes")
    index = positions(teacher_ids, table.ids)
    missing = table.ids[index < 0]
    if len(missing):
        raise UserError(f"--teacher-logits {path}: no scores for {len(missing)} of the {len(table)} rows of "
                        f"{cfg.unlabeled_file} (e.g. {str(missing[0])!r}); write them with predict.py <teacher> "
                        f"--test {cfg.unlabeled_file} --logits-out {path}")
    scores = logits[index]
    if not np.isfinite(scores).all():
        raise UserError(f"--teacher-logits {path}: holds non-finite scores")
    scaled = scores / cfg.distill_temperature
    probabilities = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    log.info("%s: %d unlabelled rows with teacher targets (temperature %g)", cfg.unlabeled_file, len(table),
             cfg.distill_temperature)
    return DistilledRows(table.ids, table.texts, probabilities.astype(np.float32))


@dataclass(frozen=True)
class Splits:
    """The training and validation rows of one run, with the label set they were checked against.

    Training is `train` (gold labels) followed by `distilled` (teacher targets), if any.
    """

    train: TextTable
    val: TextTable
    num_labels: int
    label_names: tuple[str, ...]
    distilled: DistilledRows | None = None

    @cached_property
    def training_texts(self) -> list[str]:
        """Built once: augmentation reads it for every training batch."""
        return self.train.texts + (self.distilled.texts if self.distilled else [])

    @property
    def distilled_rows(self) -> int:
        return len(self.distilled) if self.distilled else 0

    @property
    def training_labels(self) -> np.ndarray:
        """Gold labels, then the teacher's most probable class for distilled rows."""
        if self.distilled is None:
            return self.train.labels
        return np.concatenate([self.train.labels, self.distilled.probabilities.argmax(axis=1)])

    @property
    def training_targets(self) -> np.ndarray | None:
        """Per-row class probabilities (one-hot for gold rows) when rows are distilled, else None."""
        if self.distilled is None:
            return None
        gold = np.eye(self.num_labels, dtype=np.float32)[self.train.labels]
        return np.concatenate([gold, self.distilled.probabilities])


def load_splits(cfg: TrainConfig) -> Splits:
    """Read, validate and split the data exactly as `cfg` says; same config, same rows."""
    columns = Columns(cfg.id_column, cfg.text_column, cfg.label_column)
    table = read_table(cfg.train_file, columns, labelled=True, flag="--train-file")
    if cfg.val_file:
        train = table
        val = read_table(cfg.val_file, columns, labelled=True, flag="--val-file")
    elif cfg.num_folds:
        train, val = stratified_fold(table, cfg.num_folds, cfg.fold, cfg.split_seed)
    else:
        train, val = stratified_split(table, cfg.val_size, cfg.split_seed)
    num_labels = cfg.num_labels or int(max(train.labels.max(), val.labels.max())) + 1
    check_label_range(train, num_labels, cfg.train_file, cfg.label_column)
    check_label_range(val, num_labels, cfg.val_file or cfg.train_file, cfg.label_column)
    _check_every_class_trains(train, num_labels, cfg)
    if len(cfg.label_names) != num_labels:
        raise UserError(f"--label-names: {len(cfg.label_names)} names given for {num_labels} classes "
                        f"in {cfg.train_file}; pass {num_labels} comma-separated names")
    if cfg.max_train_samples:
        train = stratified_sample(train, cfg.max_train_samples, cfg.split_seed, "--max-train-samples")
    if cfg.augmented_train_file:
        augmented = read_table(cfg.augmented_train_file, columns, labelled=True, flag="--augmented-train-file")
        check_label_range(augmented, num_labels, cfg.augmented_train_file, cfg.label_column)
        train = add_derived_rows(train, augmented, cfg.augmented_train_file)
    distilled = None
    if cfg.unlabeled_file:
        labelled_ids = np.concatenate([table.ids, val.ids]) if cfg.val_file else table.ids
        distilled = load_distilled(cfg, labelled_ids, num_labels)
    return Splits(train, val, num_labels, tuple(cfg.label_names), distilled)


def _check_every_class_trains(train: TextTable, num_labels: int, cfg: TrainConfig) -> None:
    """A class without training rows is never learnt and its scores in the report mislead; an explicit
    --num-labels says the user knows, so then a warning is enough."""
    missing = [k for k, count in enumerate(class_distribution(train.labels, num_labels)) if count == 0]
    if not missing:
        return
    classes = ", ".join(map(str, missing))
    if cfg.num_labels is None:
        raise UserError(f"--train-file {cfg.train_file}: the training split has no row of class {classes} of "
                        f"0..{num_labels - 1} (inferred as max(label)+1); give --num-labels {num_labels} to train "
                        "without them")
    log.warning("%s: the training split has no row of class %s of 0..%d (--num-labels %d)", cfg.train_file,
                classes, num_labels - 1, num_labels)
