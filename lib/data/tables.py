"""Reading labelled and unlabelled tables, validating them, and the seeded stratified split.

Every script reads its input files through `read_frame`: CSV, tab-separated, JSON Lines (each also
gzipped) and Parquet, picked by the extension. Every problem with an input file becomes a one-line
`UserError` naming the file and column, so a user never sees a pandas traceback for a misnamed
column or a stray label.
"""

from __future__ import annotations

import gzip
import logging
import zlib
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


# extension (before any .gz) -> format; a .csv or .txt is sniffed for tabs
_FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
_SUPPORTED = ".csv, .tsv, .txt, .jsonl (each also .gz) and .parquet"
_DESCRIPTIONS = {"csv": "CSV", "tsv": "tab-separated", "jsonl": "JSON Lines", "parquet": "Parquet"}


def _table_format(path: Path, flag: str) -> tuple[str, bool]:
    """(format, gzipped) as the name of `path` says; refuses a name no reader knows."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    fmt = _FORMATS.get(Path(name.removesuffix(".gz")).suffix)
    if fmt is None or (gzipped and fmt == "parquet"):
        raise UserError(f"{flag} {path}: unsupported file type; expected {_SUPPORTED}")
    return fmt, gzipped


def read_frame(path: str | Path, flag: str) -> tuple[pd.DataFrame, str]:
    """Every column of the table at `path` as text, empty cells as NaN, whatever the format, and how it
    was read ('CSV', 'JSON Lines, gzip', ...): the caller logs it once the file passed its checks, so
    a bad file gives one line, the error."""
    return _load(Path(path), flag)


def table_columns(path: str | Path, flag: str) -> list[str]:
    """The column names, for a check made before any model loads."""
    return list(_load(Path(path), flag, nrows=1)[0].columns)


def _load(path: Path, flag: str, nrows: int | None = None) -> tuple[pd.DataFrame, str]:
    """(the table, how it was read); `nrows` bounds the rows read where the format allows."""
    if not path.is_file():
        raise UserError(f"{flag}: file not found: {path}")
    fmt, gzipped = _table_format(path, flag)
    try:
        sniffed = fmt == "csv" and _has_tab_header(path, gzipped)
        frame = _read(path, "tsv" if sniffed else fmt, flag, nrows)
    except (ValueError, OSError, EOFError, zlib.error) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path}: not a readable {_DESCRIPTIONS[fmt]} file ({reason})") from None
    described = "tab-separated (a tab in the header)" if sniffed else _DESCRIPTIONS[fmt]
    return frame, described + (", gzip" if gzipped else "")


def _has_tab_header(path: Path, gzipped: bool) -> bool:
    """A header with more tabs than commas: spreadsheets save TSV under .csv and .txt names too."""
    with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return header.count("\t") > header.count(",")


def _read(path: Path, fmt: str, flag: str, nrows: int | None) -> pd.DataFrame:
    if fmt == "parquet":
        try:
            return _as_text(pd.read_parquet(path))
        except ImportError:
            raise UserError(f"{flag} {path}: reading Parquet needs pyarrow, which is not installed "
                            "(pip install pyarrow)") from None
    if fmt == "jsonl":  # dtype=False: no guessing of dates and numbers from the values
        return _as_text(pd.read_json(path, lines=True, dtype=False, nrows=nrows))
    return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False, na_values=[""],
                       nrows=nrows)


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """JSON and Parquet keep numbers as numbers; as text, as a CSV's cells, the same checks apply."""
    return frame.apply(lambda column: column.map(str, na_action="ignore")).replace("", np.nan)


def read_table(path: str | Path, columns: Columns, *, labelled: bool, flag: str) -> TextTable:
    """Read a table (see `read_frame`); `flag` names the option that pointed to it, for error messages."""
    path = Path(path)
    frame, described = read_frame(path, flag)
    if len(frame) == 0:
        raise UserError(f"{path}: no rows")
    wanted = [columns.id, columns.text] + ([columns.label] if labelled else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        option = {columns.id: "--id-column", columns.text: "--text-column", columns.label: "--label-column"}
        hints = ", ".join(f"{c!r} (set {option[c]})" for c in missing)
        raise UserError(f"{path}: missing column {hints}; the file has {', '.join(map(repr, frame.columns))}")
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
    log.info("%s: %s, %d rows", path, described, len(frame))
    return TextTable(ids.to_numpy(dtype=str), texts.fillna("").tolist(), labels)


def _parse_labels(column: pd.Series, path: Path, name: str) -> np.ndarray:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() | (numbers != numbers.round())]
    if len(bad):
        index, fmt = int(bad.index[0]), _table_format(path, "")[0]
        # line 1 of a CSV or TSV is its header; Parquet has no lines
        where = f"row {index + 1}" if fmt == "parquet" else f"line {index + (1 if fmt == 'jsonl' else 2)}"
        raise UserError(f"{path}: column {name!r} must hold integer labels; {where} has "
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
