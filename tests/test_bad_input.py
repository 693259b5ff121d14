"""Each bad input: one line on stderr naming the file/column/flag, exit status 2, no run folder left."""

import csv
import shutil
import time
from pathlib import Path

import pytest
import torch

import train
from lib.core.cli import run_cli
from lib.loop.state import STATE_FORMAT, STATE_VERSION
from tests.conftest import tiny_config, write_reviews

FAST = ["--model", "scratch:tiny", "--scratch-vocab-size", "200", "--epochs", "1", "--quiet", "--no-cache"]


def _run(argv, capsys):
    code = run_cli(train.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _write(path: Path, rows, header=("ID", "review", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _assert_refused(tmp_path, argv, capsys, *needles):
    out = tmp_path / "runs"
    code, err = _run(argv + ["--output-dir", str(out)], capsys)
    assert code == 2
    last = err[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), err
    assert not out.exists() or not any(out.iterdir()), "a bad input left a run folder behind"


def test_missing_train_file(tmp_path, capsys):
    _assert_refused(tmp_path, FAST + ["--train-file", str(tmp_path / "nope.csv")], capsys,
                    "--train-file", "nope.csv")


def test_misnamed_column(tmp_path, capsys):
    path = write_reviews(tmp_path / "t.csv", 40, seed=0)
    _assert_refused(tmp_path, FAST + ["--train-file", str(path), "--text-column", "text"], capsys,
                    "'text'", "--text-column", "'review'")


@pytest.mark.parametrize("bad_label, needle", [("x", "line"), ("1.5", "integer"), ("", "integer"), ("-1", "negative")])
def test_labels_must_be_integers_from_zero(tmp_path, capsys, bad_label, needle):
    rows = [(f"R{i}", f"text {i}", i % 2) for i in range(20)] + [("R99", "odd", bad_label)]
    path = _write(tmp_path / "t.csv", rows)
    _assert_refused(tmp_path, FAST + ["--train-file", str(path), "--label-names", "a,b"], capsys,
                    str(path), "'label'", needle)


def test_label_outside_the_declared_classes(tmp_path, capsys):
    path = _write(tmp_path / "t.csv", [(f"R{i}", f"text {i}", i % 3) for i in range(30)])
    _assert_refused(tmp_path, FAST + ["--train-file", str(path), "--num-labels", "2", "--label-names", "a,b"],
                    capsys, "label 2", "0..1")


def test_wrong_number_of_label_names(tmp_path, capsys):
    path = _write(tmp_path / "t.csv", [(f"R{i}", f"text {i}", i % 2) for i in range(20)])
    _assert_refused(tmp_path, FAST + ["--train-file", str(path)], capsys, "--label-names", "2 classes")


@pytest.mark.parametrize("flags, needle", [
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--lr-scheduler-type", "exotic"], "--lr-scheduler-type"),
    (["--alpha", "0.5,0.5"], "--alpha"),
    (["--alpha", "a,b"], "--alpha"),
    (["--epochs", "0"], "--num-train-epochs"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--batch-size", "many"], "--per-device-train-batch-size"),
    (["--loss", "ce", "--gamma", "2"], "--loss ce"),
    (["--warmup-steps", "3", "--warmup-ratio", "0.1"], "--warmup-steps"),
    (["--max-length", "100000"], "--max-length"),
    (["--max-tokens-per-batch", "8"], "--max-tokens-per-batch 8"),
    (["--augment", "typo=0.1"], "--augment"),
    (["--max-train-samples", "2"], "--max-train-samples 2: cannot sample stratified"),
    (["--teacher-logits", "teacher.npz"], "--unlabeled-file and --teacher-logits: give both"),
])
def test_bad_option_values(tmp_path, capsys, toy_data, flags, needle):
    _assert_refused(tmp_path, FAST + ["--train-file", str(toy_data["train"])] + flags, capsys, needle)


def test_unreachable_hub_model_fails_at_once(tmp_path, capsys, toy_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    _assert_refused(tmp_path, ["--model", "klue/bert-base", "--gamma", "2.96", "--train-file",
                               str(toy_data["train"])], capsys, "--model klue/bert-base", "scratch:")
    assert time.perf_counter() - started < 60  # no minute of retries (a generous bound, not a benchmark)


def test_empty_reviews_are_reported_and_kept(tmp_path, capsys, toy_data):
    rows = [(f"R{i}", "" if i % 10 == 0 else f"좋다 {i % 4} 영화", i % 4) for i in range(80)]
    path = _write(tmp_path / "t.csv", rows)
    code, err = _run(FAST + ["--train-file", str(path), "--output-dir", str(tmp_path / "runs")], capsys)
    assert code == 0
    assert any("8 empty review(s)" in line for line in err)


def test_existing_run_folder_is_refused_without_overwrite(tmp_path, capsys, toy_data):
    argv = FAST + ["--train-file", str(toy_data["train"]), "--run-name", "same",
                   "--output-dir", str(tmp_path / "runs")]
    assert _run(argv, capsys)[0] == 0
    stamp = (tmp_path / "runs" / "same" / "result.json").stat().st_mtime_ns
    code, err = _run(argv, capsys)
    assert code == 2 and "already exists" in err[-1] and "--overwrite" in err[-1]
    assert (tmp_path / "runs" / "same" / "result.json").stat().st_mtime_ns == stamp
    assert _run(argv + ["--overwrite"], capsys)[0] == 0


def test_resume_refuses_corrupt_and_foreign_checkpoints(tmp_path, capsys, toy_data):
    folder = tmp_path / "runs" / "x.incomplete"
    (folder / "last").mkdir(parents=True)
    code, err = _run(["--resume", str(folder)], capsys)
    assert code == 2 and "config.json" in err[-1]
    tiny_config(toy_data, tmp_path).save(folder / "config.json")
    (folder / "plan.json").write_text("{}")
    (folder / "last" / "training_state.pt").write_bytes(b"not a checkpoint")
    code, err = _run(["--resume", str(folder)], capsys)
    assert code == 2 and "training_state.pt" in err[-1] and "not a readable" in err[-1]
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION - 1}, folder / "last" / "training_state.pt")
    code, err = _run(["--resume", str(folder)], capsys)
    assert code == 2 and f"state version {STATE_VERSION - 1}, expected {STATE_VERSION}" in err[-1]
    shutil.rmtree(folder)
    code, err = _run(["--resume", str(tmp_path / "runs" / "missing")], capsys)
    assert code == 2 and "no run folder" in err[-1]


def test_predict_refuses_bad_runs_and_test_files(tmp_path, capsys):
    import predict

    code = run_cli(predict.main, [str(tmp_path / "nope"), "--test", "x.csv"])
    assert code == 2 and "no such run folder" in capsys.readouterr().err
    (tmp_path / "half.incomplete").mkdir()
    code = run_cli(predict.main, [str(tmp_path / "half.incomplete")])
    assert code == 2 and "unfinished run" in capsys.readouterr().err


@pytest.mark.parametrize("flags, needles", [
    (["--pooling", "sum"], ("--pooling", "'sum'", "mean")),
    (["--layer-lr-decay", "1.5"], ("--layer-lr-decay", "1.5")),
    (["--layer-lr-decay", "0"], ("--layer-lr-decay", "0")),
    (["--reinit-top-layers", "3"], ("--reinit-top-layers 3", "2 encoder layers")),
    (["--ema-decay", "1"], ("--ema-decay", "1")),
    (["--adv-epsilon", "0.5"], ("--adv-epsilon", "--adversarial fgm")),
    (["--awp-lr", "1e-3", "--adversarial", "fgm"], ("--awp-lr", "--adversarial awp")),
    (["--adv-start-epoch", "1"], ("--adv-start-epoch", "--adversarial")),
    (["--multi-sample-dropout", "4"], ("--multi-sample-dropout", "--pooling")),
    (["--head-tokens", "16"], ("--head-tokens", "head+tail")),
])
def test_bad_technique_options_are_refused(tmp_path, capsys, toy_data, flags, needles):
    _assert_refused(tmp_path, FAST + ["--train-file", str(toy_data["train"])] + flags, capsys, *needles)


def test_tfidf_refuses_options_of_neural_models(tmp_path, capsys, toy_data):
    argv = ["--model", "tfidf", "--train-file", str(toy_data["train"]), "--quiet", "--ema-decay", "0.9",
            "--pooling", "mean"]
    _assert_refused(tmp_path, argv, capsys, "--model tfidf", "--ema-decay", "--pooling")
