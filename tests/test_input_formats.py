"""Input tables in every format read as the same rows as the CSV; a training split missing a class is refused."""

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import predict
import train
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.data.mlm import read_texts
from lib.data.tables import Columns, read_table, table_columns
from tests.conftest import write_reviews

COLUMNS = Columns("ID", "review", "label")
FAST = ["--model", "scratch:tiny", "--scratch-vocab-size", "200", "--epochs", "1", "--quiet", "--no-cache",
        "--batch-size", "32", "--max-train-samples", "96"]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def _frame(path: Path) -> pd.DataFrame:
    """The CSV's rows with integer labels, as a user's other tools would hold them."""
    return pd.read_csv(path, dtype={"ID": str, "review": str})


def _jsonl(frame: pd.DataFrame, path: Path) -> Path:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in frame.to_dict(orient="records"))
    with (gzip.open if path.suffix == ".gz" else open)(path, "wt", encoding="utf-8") as f:
        f.write(lines)
    return path


WRITERS = {
    "t.tsv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "t.tsv.gz": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "t.csv.gz": lambda frame, path: frame.to_csv(path, index=False),
    "tabs.csv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),  # a TSV under a .csv name
    "tabs.txt": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "commas.txt": lambda frame, path: frame.to_csv(path, index=False),
    "t.jsonl": _jsonl,
    "t.jsonl.gz": _jsonl,
}
FORMAT_NAMES = {"t.tsv": "tab-separated, ", "t.tsv.gz": "tab-separated, gzip", "t.csv.gz": "CSV, gzip",
                "tabs.csv": "tab-separated (a tab in the header)", "tabs.txt": "tab-separated (a tab in the header)",
                "commas.txt": "CSV, ", "t.jsonl": "JSON Lines, ", "t.jsonl.gz": "JSON Lines, gzip"}


def _same_rows(table, reference) -> None:
    assert table.ids.tolist() == reference.ids.tolist()
    assert table.texts == reference.texts
    assert table.labels.tolist() == reference.labels.tolist()


@pytest.fixture()
def reviews(tmp_path) -> Path:
    """Reviews with a comma, a quote and an empty text, which a careless reader would mangle."""
    path = write_reviews(tmp_path / "t.csv", 24, seed=0)
    frame = _frame(path)
    frame.loc[0, "review"] = '좋다, "정말" 좋다'
    frame.loc[1, "review"] = np.nan
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", WRITERS)
def test_each_format_reads_the_rows_of_the_csv(tmp_path, reviews, name, caplog):
    path = tmp_path / name
    WRITERS[name](_frame(reviews), path)
    reference = read_table(reviews, COLUMNS, labelled=True, flag="--train-file")
    with caplog.at_level(logging.INFO, logger="lib"):
        table = read_table(path, COLUMNS, labelled=True, flag="--train-file")
    _same_rows(table, reference)
    assert reference.texts[1] == "" and "," in reference.texts[0]
    assert f"{path}: {FORMAT_NAMES[name]}" in caplog.text and "24 rows" in caplog.text
    assert table_columns(path, "--test") == ["ID", "review", "label"]


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow to write Parquet")
def test_parquet_reads_the_rows_of_the_csv(tmp_path, reviews):
    path = tmp_path / "t.parquet"
    _frame(reviews).to_parquet(path)
    _same_rows(read_table(path, COLUMNS, labelled=True, flag="--train-file"),
               read_table(reviews, COLUMNS, labelled=True, flag="--train-file"))


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_names_the_package(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UserError) as refused:
        read_table(path, COLUMNS, labelled=True, flag="--train-file")
    message = str(refused.value)
    assert "\n" not in message and "--train-file" in message and "pip install pyarrow" in message


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(UserError, match=r"--test .*t\.xlsx: unsupported file type; expected .csv, .tsv.*\.jsonl"):
        read_table(path, COLUMNS, labelled=False, flag="--test")


def test_bad_rows_are_named_in_the_formats_own_terms(tmp_path):
    lines = tmp_path / "t.jsonl"
    lines.write_text('{"ID": 1, "review": "a", "label": 0}\n{"ID": 2, "review": "b", "label": "x"}\n')
    with pytest.raises(UserError, match="line 2 has 'x'"):
        read_table(lines, COLUMNS, labelled=True, flag="--train-file")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ID": 1, "review"\n')
    with pytest.raises(UserError, match="broken.jsonl: not a readable JSON Lines file"):
        read_table(broken, COLUMNS, labelled=True, flag="--train-file")
    fake = tmp_path / "fake.csv.gz"
    fake.write_text("ID,review\n1,a\n")
    with pytest.raises(UserError, match="fake.csv.gz: not a readable CSV file"):
        read_table(fake, COLUMNS, labelled=False, flag="--test")


def test_pretraining_texts_read_every_format(tmp_path, reviews):
    frame = _frame(reviews)
    tsv, lines = tmp_path / "t.tsv", _jsonl(frame, tmp_path / "t.jsonl")
    frame.to_csv(tsv, sep="\t", index=False)
    assert read_texts([tsv]) == read_texts([lines]) == read_texts([reviews])
    assert len(read_texts([reviews])) == 23  # the empty review is skipped


def _cli(main, argv, capsys) -> tuple[int, list[str]]:
    code = run_cli(main, argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_train_on_tsv_and_predict_json_lines(tmp_path, toy_data, capsys):
    """The format a user has, end to end: train.py on a TSV with a JSON Lines test file, then predict.py."""
    train_tsv, test_lines = tmp_path / "train.tsv", _jsonl(_frame(toy_data["test"]), tmp_path / "test.jsonl.gz")
    _frame(toy_data["train"]).to_csv(train_tsv, sep="\t", index=False)
    runs = tmp_path / "runs"
    code, err = _cli(train.main, FAST + ["--train-file", str(train_tsv), "--test-file", str(test_lines),
                                         "--output-dir", str(runs), "--run-name", "tsv"], capsys)
    assert code == 0, err
    run = runs / "tsv"
    assert len(pd.read_csv(run / "submission.csv")) == 40
    out = tmp_path / "submission.csv"
    code, err = _cli(predict.main, [str(run), "--test", str(test_lines), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert pd.read_csv(out).equals(pd.read_csv(run / "submission.csv"))


def _without_class(toy_data, tmp_path, dropped: set[int]) -> Path:
    frame = _frame(toy_data["train"])
    path = tmp_path / "train.jsonl"
    return _jsonl(frame[~frame["label"].isin(dropped)], path)


@pytest.mark.parametrize("dropped, named", [({2}, "class 2 of 0..3"), ({0, 1, 2}, "class 0, 1, 2 of 0..3")])
def test_a_class_without_training_rows_is_refused(tmp_path, toy_data, capsys, dropped, named):
    runs = tmp_path / "runs"
    code, err = _cli(train.main, FAST + ["--train-file", str(_without_class(toy_data, tmp_path, dropped)),
                                         "--output-dir", str(runs)], capsys)
    assert code == 2
    assert err[-1].startswith("error: --train-file") and named in err[-1] and "--num-labels 4" in err[-1], err
    assert not runs.exists() or not any(runs.iterdir()), "a refused input left a run folder behind"


def test_declared_num_labels_trains_without_a_class(tmp_path, toy_data, capsys, caplog):
    runs = tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="lib"):
        code, err = _cli(train.main, FAST + ["--train-file", str(_without_class(toy_data, tmp_path, {2})),
                                             "--num-labels", "4", "--output-dir", str(runs), "--run-name", "k4"],
                         capsys)
    assert code == 0, err
    assert "no row of class 2 of 0..3 (--num-labels 4)" in caplog.text
    plan = json.loads((runs / "k4" / "plan.json").read_text())
    assert plan["num_labels"] == 4 and plan["train_class_counts"][2] == 0
