"""Real tiny members: `ensemble.py train` (with a member that cannot load, and with folds), `vote`
with a test file, and the saved ensemble folder used by predict.py. Four tiny runs in all."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

import ensemble
import predict
from lib.core.cli import run_cli
from lib.finetune.trainer import train_new
from tests.conftest import tiny_config, write_reviews

# tests.conftest.tiny_config as flags, with a shorter schedule that still learns the toy task
TINY = ["--scratch-vocab-size", "200", "--val-size", "0.25", "--epochs", "4", "--batch-size", "8",
        "--lr", "2e-3", "--warmup-ratio", "0.1", "--logging-steps", "5", "--seed", "7", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ens_data")
    return {"train": write_reviews(folder / "train.csv", 240, seed=1),
            "test": write_reviews(folder / "test.csv", 30, seed=2, labelled=False, prefix="T"),
            "runs": folder / "runs", "cache": folder / "cache"}


def _run(main, argv, capsys):
    code = run_cli(main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(data):
    """A member trained by `ensemble.py train`, which skips an uncached hub id, and a second tiny run
    with another batch size on the same split (a second scratch preset would double the test time)."""
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("HF_HUB_OFFLINE", "1")
        code = run_cli(ensemble.main, ["train", "--models", "scratch:tiny", "no-such-org/no-such-model",
                                       "--name", "e2e", "--train-file", str(data["train"]),
                                       "--output-dir", str(data["runs"]), "--cache-dir", str(data["cache"]), *TINY])
    assert code == 0
    other = train_new(tiny_config(data, data["runs"], run_name="other"))
    return [data["runs"] / "e2e-scratch-tiny", other.path], out.getvalue()


@pytest.fixture(scope="module")
def members(trained):
    return trained[0]


def test_train_makes_one_run_per_member_and_skips_the_one_that_cannot_load(trained, data):
    (path, _), out = trained
    assert "skipped no-such-org/no-such-model: --model no-such-org/no-such-model: not a local folder" in out
    assert f"python ensemble.py vote {path} " in out
    assert {p.name for p in data["runs"].iterdir()} - {"cache"} == {"e2e-scratch-tiny", "other"}
    assert (path / "result.json").is_file() and (path / "tokenizer").is_dir()
    config = json.loads((path / "config.json").read_text())
    assert config["num_train_epochs"] == 4 and config["seed"] == 7  # the shared flags reached the member
    assert json.loads((path / "result.json").read_text())["best"]["accuracy"] > 0.5  # chance is 0.25
    ids = [np.load(member / "val_logits.npz")["ids"].tolist() for member in trained[0]]
    assert ids[0] == ids[1] and len(ids[0]) == 60


def test_vote_predicts_the_test_file_and_predict_reuses_the_ensemble_folder(members, data, tmp_path, capsys):
    submission, saved = tmp_path / "submission.csv", tmp_path / "ens"
    code, out, err = _run(ensemble.main, ["vote", *members, "--test", data["test"], "--out", submission,
                                          "--weights", "fit", "--calibrate", "temperature",
                                          "--prior-correction", "em", "--save", saved, "--quiet"], capsys)
    assert code == 0, err
    for needle in ("validation: 60 rows shared by 2 member(s)", "e2e-scratch-tiny (scratch:tiny)",
                   "vote (logits, fit weights)", "gain over the best member", "T = ",
                   "the prior correction applied to the validation rows", "after --prior-correction em",
                   "predicted test distribution (30 rows)", "after (em)", "training", "wrote 30 predictions"):
        assert needle in out
    written = pd.read_csv(submission)
    assert list(written.columns) == ["ID", "pred"]
    assert list(written["ID"]) == list(pd.read_csv(data["test"])["ID"]) and written["pred"].between(0, 3).all()

    again = tmp_path / "again.csv"
    code, out, err = _run(predict.main, [saved, "--test", data["test"], "--out", again, "--quiet"], capsys)
    assert code == 0, err
    assert "after (em)" in out
    pd.testing.assert_frame_equal(pd.read_csv(again), written)


def test_the_saved_ensemble_pools_the_members_predictions(members, data, tmp_path, capsys):
    member_logits = []
    for k, path in enumerate(members):
        assert _run(predict.main, [path, "--test", data["test"], "--out", tmp_path / f"m{k}.csv",
                                   "--logits-out", tmp_path / f"m{k}.npz", "--quiet"], capsys)[0] == 0
        member_logits.append(np.load(tmp_path / f"m{k}.npz")["logits"])
    saved = tmp_path / "ens"
    assert _run(ensemble.main, ["vote", *members, "--average", "probs", "--weights", "1,3", "--save", saved,
                                "--quiet"], capsys)[0] == 0
    assert _run(predict.main, [saved, "--test", data["test"], "--out", tmp_path / "e.csv",
                               "--logits-out", tmp_path / "e.npz", "--quiet"], capsys)[0] == 0
    expected = 0.25 * softmax(member_logits[0], axis=1) + 0.75 * softmax(member_logits[1], axis=1)
    np.testing.assert_allclose(softmax(np.load(tmp_path / "e.npz")["logits"], axis=1), expected, atol=1e-5)


def test_an_ensemble_predicts_in_the_precision_asked_for(members, data, tmp_path, capsys):
    saved = tmp_path / "ens"
    assert _run(ensemble.main, ["vote", *members, "--save", saved, "--quiet"], capsys)[0] == 0
    logits = {}
    for precision in ("run", "bf16"):
        out = tmp_path / f"{precision}.npz"
        assert _run(predict.main, [saved, "--test", data["test"], "--out", tmp_path / f"{precision}.csv",
                                   "--logits-out", out, "--precision", precision, "--quiet"], capsys)[0] == 0
        logits[precision] = np.load(out)["logits"]
    assert not np.array_equal(logits["bf16"], logits["run"])  # every member scored in bf16 ...
    np.testing.assert_allclose(logits["bf16"], logits["run"], atol=0.1)  # ... within bf16's precision
    refused = tmp_path / "refused.csv"
    code, _, err = _run(ensemble.main, ["vote", *members, "--test", data["test"], "--out", refused,
                                        "--precision", "fp16", "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "--precision fp16: needs a CUDA device" in err and not refused.exists()


def test_folds_write_out_of_fold_logits_covering_every_training_row_once(data, tmp_path, capsys):
    code, out, err = _run(ensemble.main, ["train", "--models", "scratch:tiny", "--folds", "2", "--name", "cv",
                                          "--train-file", data["train"], "--output-dir", tmp_path,
                                          "--cache-dir", data["cache"], *TINY], capsys)
    assert code == 0, err
    folder = tmp_path / "cv-scratch-tiny"
    spec = json.loads((folder / "folds.json").read_text())
    assert spec["folds"] == ["fold0", "fold1"] and spec["num_folds"] == 2
    oof = np.load(folder / "val_logits.npz")
    train = pd.read_csv(data["train"])
    assert list(oof["ids"]) == list(train["ID"])  # every row once, in file order
    assert list(oof["labels"]) == list(train["label"]) and oof["logits"].shape == (240, 4)
    by_id = {}
    for k in range(2):
        fold = np.load(folder / f"fold{k}" / "val_logits.npz")
        assert not set(by_id) & set(fold["ids"])
        by_id.update(zip(fold["ids"], fold["logits"]))
    np.testing.assert_array_equal(oof["logits"], np.stack([by_id[i] for i in oof["ids"]]))
    assert "cv-scratch-tiny" in out and "240" in out

    # the fold runs were validated on different rows: voting them is refused
    code, _, err = _run(ensemble.main, ["vote", folder / "fold0", folder / "fold1"], capsys)
    assert code == 2 and "validation rows differ" in err
    # the cross-validation folder is a member: stacking fits on all 240 out-of-fold rows
    code, out, err = _run(ensemble.main, ["vote", folder, "--stack", "--test", data["test"], "--out",
                                          tmp_path / "cv.csv", "--quiet"], capsys)
    assert code == 0, err
    assert "validation: 240 rows" in out and "stacking (cross-validated)" in out
    assert len(pd.read_csv(tmp_path / "cv.csv")) == 30
