"""bench/baseline.py's blend: a folder's validation log-probabilities are matched by id, never by position."""

import numpy as np

from bench import baseline
from lib.core.cli import run_cli
from lib.finetune.config import TrainConfig
from lib.finetune.splits import load_splits


def _val_logits_folder(path, ids, labels, logits):
    path.mkdir()
    np.savez(path / "val_logits.npz", ids=np.asarray(ids, dtype=str), labels=labels, logits=logits)
    return path


def test_a_folder_scored_on_the_same_rows_is_averaged_in_by_id(toy_data, tmp_path, capsys):
    val = load_splits(TrainConfig(train_file=str(toy_data["train"]))).val
    wrong = (val.labels + 1) % 4  # a confidently wrong model, saved in another row order
    order = np.random.default_rng(0).permutation(len(val))
    folder = _val_logits_folder(tmp_path / "wrong", val.ids[order], val.labels[order],
                                50.0 * np.eye(4)[wrong[order]])
    assert run_cli(baseline.main, ["--train-file", str(toy_data["train"]), "--blend-with", str(folder)]) == 0
    blended = [line for line in capsys.readouterr().out.splitlines() if "averaged with" in line]
    assert len(blended) == 1 and "accuracy 0.0000" in blended[0]  # by position it would hit ~1/4 of the rows


def test_a_folder_scored_on_other_rows_is_refused_before_fitting(toy_data, tmp_path, capsys):
    folder = _val_logits_folder(tmp_path / "other", ["X1", "X2"], np.array([0, 1]), np.zeros((2, 4)))
    assert run_cli(baseline.main, ["--train-file", str(toy_data["train"]), "--blend-with", str(folder)]) == 2
    assert "--blend-with" in capsys.readouterr().err
