"""Reading labelled and unlabelled CSVs, validating them, and the seeded stratified split.

Every problem with an input file becomes a one-line `UserError` naming the file and column, so a
user never sees a pandas traceback for a misnamed column or a stray label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from lib.config import TrainConfig
from lib.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextTable:
    """Rows of one file: ids and texts, and integer labels when the file has them."""

    ids: np.ndarray
    texts: list[str]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> "TextTable":
        labels = self.labels[index] if self.labels is not None else None
        return TextTable(self.ids[index], [self.texts[i] for i in index], labels)


@dataclass(frozen=True)
class Columns:
    id: str
    text: str
    label: str


def read_table(path: str | Path, columns: Columns, *, labelled: bool, flag: str) -> TextTable:
    """Read a CSV; `flag` names the option that pointed to it, for error messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}: file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
    wanted = [columns.id, columns.text] + ([columns.label] if labelled else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        option = {columns.id: "--id-column", columns.text: "--text-column", columns.label: "--label-column"}
        hints = ", ".join(f"{c!r} (set {option[c]})" for c in missing)
        raise UserError(f"{path}: missing column {hints}; the file has {', '.join(map(repr, frame.columns))}")
    if len(frame) == 0:
        raise UserError(f"{path}: no rows")
    ids = frame[columns.id]
    if ids.isna().any():
        raise UserError(f"{path}: column {columns.id!r} has {int(ids.isna().sum())} empty ids")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise UserError(f"{path}: column {columns.id!r} repeats ids, e.g. {duplicated.iloc[0]!r}")
    texts = frame[columns.text]
    empty = int((texts.fillna("").str.strip() == "").sum())
    if empty:
        log.warning("%s: %d empty review(s) in column %r, kept as empty text", path, empty, columns.text)
    labels = _parse_labels(frame[columns.label], path, columns.label) if labelled else None
    return TextTable(ids.to_numpy(dtype=str), texts.fillna("").tolist(), labels)


def _parse_labels(column: pd.Series, path: Path, name: str) -> np.ndarray:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() | (numbers != numbers.round())]
    if len(bad):
        row = int(bad.index[0]) + 2  # header is line 1
        raise UserError(f"{path}: column {name!r} must hold integer labels; line {row} has "
                        f"{bad.iloc[0]!r} ({len(bad)} such rows)")
    labels = numbers.to_numpy(dtype=np.int64)
    if labels.min() < 0:
        raise UserError(f"{path}: column {name!r} has negative label {labels.min()}; expected 0..K-1")
    return labels


def check_label_range(table: TextTable, num_labels: int, path: str, name: str) -> None:
    if table.labels is not None and table.labels.max() >= num_labels:
        raise UserError(f"{path}: column {name!r} has label {table.labels.max()}, "
                        f"expected 0..{num_labels - 1} (--num-labels {num_labels})")


def stratified_split(table: TextTable, val_size: float, seed: int) -> tuple[TextTable, TextTable]:
    """The seeded, stratified train/validation split every script and benchmark shares."""
    index = np.arange(len(table))
    try:
        train_index, val_index = train_test_split(index, test_size=val_size, random_state=seed,
                                                  stratify=table.labels)
    except ValueError as error:
        raise UserError(f"--val-size {val_size}: cannot split stratified ({error})") from None
    return table.subset(np.sort(train_index)), table.subset(np.sort(val_index))


def stratified_fold(table: TextTable, num_folds: int, fold: int, seed: int) -> tuple[TextTable, TextTable]:
    """Fold `fold` of a seeded stratified K-fold split: the folds' validation rows cover the table once."""
    try:
        splits = list(StratifiedKFold(num_folds, shuffle=True, random_state=seed).split(table.ids, table.labels))
    except ValueError as error:
        raise UserError(f"--num-folds {num_folds}: cannot split stratified ({error})") from None
    train_index, val_index = splits[fold]
    return table.subset(np.sort(train_index)), table.subset(np.sort(val_index))


def stratified_sample(table: TextTable, n: int, seed: int, flag: str) -> TextTable:
    """At most `n` rows with the class proportions of `table`; `flag` names the option that asked."""
    if n >= len(table):
        return table
    try:
        index, _ = train_test_split(np.arange(len(table)), train_size=n, random_state=seed, stratify=table.labels)
    except ValueError as error:
        raise UserError(f"{flag} {n}: cannot sample stratified ({error})") from None
    return table.subset(np.sort(index))


def add_derived_rows(train: TextTable, derived: TextTable, path: str) -> TextTable:
    """Append the rows of `derived` made from a training row: id '<training id>_<suffix>'.

    Matching on the source id is what keeps a paraphrase of a validation review out of training;
    rows that repeat a training id (the originals of an augmented file) are skipped, not doubled.
    """
    train_ids = set(train.ids.tolist())
    keep = np.flatnonzero([i.rsplit("_", 1)[0] in train_ids and i not in train_ids for i in derived.ids.tolist()])
    log.info("%s: %d of %d rows derive from training rows and are added", path, len(keep), len(derived))
    if len(keep) == 0:
        raise UserError(f"--augmented-train-file {path}: no row has an id '<training id>_<suffix>' of a "
                        f"training row; expected a file written by backtranslate.py from the training file")
    extra = derived.subset(keep)
    return TextTable(np.concatenate([train.ids, extra.ids]), train.texts + extra.texts,
                     np.concatenate([train.labels, extra.labels]))


def positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index into `ids` (unique) of each of `wanted`; -1 where an id of `wanted` is not in `ids`."""
    return pd.Index(ids).get_indexer(wanted)


def class_distribution(labels: np.ndarray, num_labels: int) -> list[int]:
    return np.bincount(labels, minlength=num_labels).tolist()


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
