"""`ensemble.py vote` on hand-made run folders (saved validation logits, no models): the table, the
ensemble folder, and every refusal as one line with exit status 2."""

import json

import numpy as np
import pytest
from scipy.special import softmax

import ensemble
from lib.core.cli import run_cli
from lib.ensemble.pooling import pool
from lib.ensemble.vote import score
from lib.finetune.config import TrainConfig
from tests.conftest import write_reviews

NAMES = ["neg", "pos", "neutral"]


def fake_run(path, ids, labels, logits, names=NAMES, model="scratch:tiny", finished=True):
    """A run folder as train.py leaves it, minus the models: enough for validation-only voting."""
    path.mkdir(parents=True)
    TrainConfig(model=model, label_names=tuple(names)).save(path / "config.json")
    plan = {"num_labels": len(names), "label_names": list(names), "train_class_counts": [50, 30, 20]}
    (path / "plan.json").write_text(json.dumps(plan))
    np.savez(path / "val_logits.npz", ids=np.asarray(ids).astype(str), labels=labels, logits=logits.astype(np.float32))
    if finished:
        (path / "result.json").write_text("{}")
    return path


@pytest.fixture
def members(tmp_path):
    """Three members on the same 60 validation rows, listed in different orders."""
    rng = np.random.default_rng(0)
    ids = np.array([f"R{i:03d}" for i in range(60)])
    labels = np.arange(60) % 3
    logits = [s * np.eye(3)[labels] + rng.normal(size=(60, 3)) for s in (2.0, 1.0, 0.5)]
    paths = []
    for k, member_logits in enumerate(logits):
        order = rng.permutation(60) if k else np.arange(60)
        paths.append(fake_run(tmp_path / f"m{k}", ids[order], labels[order], member_logits[order]))
    return paths, np.stack(logits), labels


def _vote(argv, capsys):
    code = run_cli(ensemble.main, ["vote", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _table_row(out, name):
    line = next(line for line in out.splitlines() if line.startswith(name))
    return [float(v) for v in line[len(name):].split()]


def test_vote_reports_members_and_the_ensemble_on_the_same_rows(members, capsys):
    paths, logits, labels = members
    code, out, _ = _vote([*paths, "--weights", "1,1,2"], capsys)
    assert code == 0
    assert "validation: 60 rows shared by 3 member(s)" in out
    expected = score(pool(logits, np.array([0.25, 0.25, 0.5]), "logits"), labels, 3)
    row = _table_row(out, "vote (logits, given weights)")
    assert row == pytest.approx([expected[m] for m in ("accuracy", "macro_f1", "nll", "ece")], abs=1e-4)
    first = _table_row(out, f"{paths[0]} (scratch:tiny)")
    assert first[0] == pytest.approx(score(logits[0], labels, 3)["accuracy"], abs=1e-4)
    assert "gain over the best member" in out
    assert "weights: 0.250  0.250  0.500" in out


def test_fit_stack_calibrate_and_save(members, tmp_path, capsys):
    paths, logits, labels = members
    save = tmp_path / "ens"
    code, out, _ = _vote([*paths, "--weights", "fit", "--average", "probs", "--stack", "--calibrate",
                          "temperature", "--save", save], capsys)
    assert code == 0, out
    for needle in ("vote (probs, fit weights)", "same, weights cross-fitted", "stacking (cross-validated)",
                   "temperature scaling on 60 validation rows", "before", "after", f"ensemble folder: {save}"):
        assert needle in out
    record = json.loads((save / "ensemble.json").read_text())
    assert record["format"] == 1 and record["average"] == "probs" and record["weights_from"] == "fit"
    assert [m["path"] for m in record["members"]] == ["../m0", "../m1", "../m2"]
    assert sum(record["weights"]) == pytest.approx(1.0)
    assert np.asarray(record["stacking"]["coef"]).shape == (3, 9) and record["temperature"] > 0
    assert record["label_names"] == NAMES and record["prior_correction"] is None
    saved = np.load(save / "val_logits.npz")
    assert list(saved["ids"]) == [f"R{i:03d}" for i in range(60)]
    assert record["validation"]["nll"] == pytest.approx(score(saved["logits"], labels, 3)["nll"], abs=1e-5)
    # saving again needs --overwrite
    code, _, err = _vote([*paths, "--save", save], capsys)
    assert code == 2 and "--overwrite" in err[-1]
    assert _vote([*paths, "--save", save, "--overwrite"], capsys)[0] == 0


def test_a_single_member_can_be_calibrated(members, capsys):
    paths, logits, labels = members
    code, out, _ = _vote([paths[0], "--calibrate", "temperature"], capsys)
    assert code == 0 and "gain over" not in out and "T = " in out


def _assert_refused(argv, capsys, *needles):
    code, _, err = _vote(argv, capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and all(n in err[0] for n in needles), err


def test_members_with_other_validation_rows_are_refused(members, tmp_path, capsys):
    paths, logits, labels = members
    other = fake_run(tmp_path / "other", [f"X{i:03d}" for i in range(60)], labels, logits[0])
    _assert_refused([paths[0], other], capsys, str(other), "validation rows differ", str(paths[0]))
    fewer = fake_run(tmp_path / "fewer", [f"R{i:03d}" for i in range(59)], labels[:59], logits[0][:59])
    _assert_refused([paths[0], fewer], capsys, str(fewer), "validation rows differ")


def test_members_with_other_labels_are_refused(members, tmp_path, capsys):
    paths, logits, labels = members
    ids = [f"R{i:03d}" for i in range(60)]
    renamed = fake_run(tmp_path / "renamed", ids, labels, logits[0], names=["a", "b", "c"])
    _assert_refused([paths[0], renamed], capsys, str(renamed), "label set", "neg")
    two = fake_run(tmp_path / "two", ids, labels % 2, logits[0][:, :2], names=["neg", "pos"])
    _assert_refused([paths[0], two], capsys, str(two), "label set")
    relabelled = fake_run(tmp_path / "relabelled", ids, (labels + 1) % 3, logits[0])
    _assert_refused([paths[0], relabelled], capsys, str(relabelled), "validation labels differ")


@pytest.mark.parametrize("weights, needle", [("1,1", "2 weights given for 3 members"), ("1,-1,1", "non-negative"),
                                             ("one,two,three", "expected 'fit' or comma-separated")])
def test_bad_weights_are_refused(members, capsys, weights, needle):
    _assert_refused([*members[0], "--weights", weights], capsys, "--weights", needle)


def test_missing_unfinished_and_foreign_folders_are_refused(members, tmp_path, capsys):
    paths = members[0]
    _assert_refused([paths[0], tmp_path / "nope"], capsys, "nope", "no such run folder")
    unfinished = fake_run(tmp_path / "x.incomplete", ["R000"], np.array([0]), np.zeros((1, 3)), finished=False)
    _assert_refused([paths[0], unfinished], capsys, "x.incomplete", "unfinished", "--resume")
    (tmp_path / "empty").mkdir()
    _assert_refused([paths[0], tmp_path / "empty"], capsys, "empty", "not a run folder")
    no_logits = fake_run(tmp_path / "no_logits", ["R000"], np.array([0]), np.zeros((1, 3)))
    (no_logits / "val_logits.npz").unlink()
    _assert_refused([paths[0], no_logits], capsys, "no_logits", "val_logits.npz")


def test_test_file_without_the_expected_columns_is_refused(members, tmp_path, capsys):
    bad = tmp_path / "test.csv"
    bad.write_text("id,text\nT1,hello\n", encoding="utf-8")
    _assert_refused([*members[0], "--test", bad], capsys, str(bad), "'ID'", "'review'", "'id', 'text'")
    _assert_refused([*members[0], "--test", tmp_path / "none.csv"], capsys, "none.csv", "not found")


def test_prior_correction_needs_a_test_file(members, capsys):
    _assert_refused([*members[0], "--prior-correction", "em"], capsys, "--prior-correction", "--test")


def test_an_ensemble_folder_is_not_a_member(members, tmp_path, capsys):
    paths = members[0]
    assert _vote([*paths, "--save", tmp_path / "ens"], capsys)[0] == 0
    _assert_refused([paths[0], tmp_path / "ens"], capsys, "ensemble folder")


def test_unknown_vote_flags_are_refused(members, capsys):
    _assert_refused([*members[0], "--epochs", "1"], capsys, "unrecognized arguments: --epochs 1")


def test_predict_refuses_an_ensemble_whose_member_changed(members, tmp_path, capsys):
    import predict

    paths, logits, labels = members
    assert _vote([*paths, "--save", tmp_path / "ens"], capsys)[0] == 0
    saved = np.load(paths[1] / "val_logits.npz")
    np.savez(paths[1] / "val_logits.npz", ids=saved["ids"], labels=saved["labels"], logits=saved["logits"] + 1)
    test = write_reviews(tmp_path / "test.csv", 5, seed=0, labelled=False)
    code = run_cli(predict.main, [str(tmp_path / "ens"), "--test", str(test), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "changed since" in err[-1] and "m1" in err[-1]


def test_probability_pooling_is_what_the_table_scores(members, capsys):
    paths, logits, labels = members
    code, out, _ = _vote([*paths, "--average", "probs"], capsys)
    probs = softmax(logits, axis=2).mean(axis=0)
    expected = float((probs.argmax(1) == labels).mean())
    assert code == 0 and _table_row(out, "vote (probs, equal weights)")[0] == pytest.approx(expected, abs=1e-4)
