"""Reading labelled and unlabelled CSVs, validating them, and the seeded stratified split.

Every problem with an input file becomes a one-line `UserError` naming the file and column, so a
user never sees a pandas traceback for a misnamed column or a stray label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from lib.core.errors import UserError

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
