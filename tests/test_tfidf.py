"""--model tfidf: the baseline's TF-IDF + logistic regression as a run folder without pickles, read by
predict.py and ensemble.py like any run."""

import json

import numpy as np
import pandas as pd
import pytest

import ensemble
import predict
from bench.baseline import build_model
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.ensemble.vote import vote
from lib.finetune.classical import train_classical
from lib.finetune.config import TrainConfig
from lib.finetune.predict import Inference
from lib.finetune.trainer import train_new
from lib.model.tfidf import ABSENT_CLASS_LOG_PROBABILITY, TfidfClassifier
from tests.conftest import tiny_config


def tfidf_config(toy_data, output_dir, **overrides) -> TrainConfig:
    """Data and run options only (tiny_config's learning rate and warmup are neural options); the
    split is tiny_config's, so a tiny neural run validates on the same rows."""
    values = dict(train_file=str(toy_data["train"]), output_dir=str(output_dir), run_name="tfidf", model="tfidf",
                  val_size=0.25, seed=7, cache_dir=None)
    values.update(overrides)
    return TrainConfig(**values)


def toy_test_classes(count: int) -> np.ndarray:
    """The toy test rows are unlabelled, but conftest.write_reviews gives row i the cue words of class i % 4."""
    return np.arange(count) % 4


def toy_rows(toy_data):
    frame = pd.read_csv(toy_data["train"])
    return frame["review"].tolist(), frame["label"].to_numpy()


@pytest.fixture(scope="module")
def tfidf_run(toy_data, tmp_path_factory):
    return train_classical(tfidf_config(toy_data, tmp_path_factory.mktemp("tfidf"), test_file=str(toy_data["test"])))


def test_the_model_is_the_baselines_tfidf_and_regression(toy_data):
    texts, labels = toy_rows(toy_data)
    ours = TfidfClassifier().fit(texts[:300], labels[:300], num_labels=4, seed=0)
    baseline = build_model(1.0, 1000, 0).fit(texts[:300], labels[:300])
    union = baseline.steps[0][1]
    np.testing.assert_allclose(ours.features(texts).toarray(), union.transform(texts).toarray(), atol=1e-12)
    np.testing.assert_allclose(np.exp(ours.logits(texts)), baseline.predict_proba(texts), atol=1e-6)


def test_a_saved_model_loads_without_pickles_and_gives_the_same_logits(toy_data, tmp_path):
    texts, labels = toy_rows(toy_data)
    model = TfidfClassifier().fit(texts[:300], labels[:300], num_labels=4, seed=0)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json", "vocabulary.json", "weights.npz"]
    unseen = texts[300:] + ["완전히 새로운 문장 xyz", ""]
    np.testing.assert_allclose(TfidfClassifier.load(tmp_path).logits(unseen), model.logits(unseen), atol=1e-6, rtol=0)
    (tmp_path / "vocabulary.json").write_text(json.dumps({"char": ["a"], "word": []}))
    with pytest.raises(UserError, match="corrupt"):
        TfidfClassifier.load(tmp_path)


def test_classes_absent_from_training_are_never_predicted(toy_data):
    texts, labels = toy_rows(toy_data)
    two = np.isin(labels, [0, 2])  # two classes: sklearn fits one row of coefficients
    logits = TfidfClassifier().fit([t for t, keep in zip(texts, two) if keep], labels[two], 4, seed=0).logits(texts)
    assert logits.shape == (len(texts), 4) and logits.dtype == np.float32
    assert (logits[:, [1, 3]] == np.float32(ABSENT_CLASS_LOG_PROBABILITY)).all()
    np.testing.assert_allclose(np.exp(logits[:, [0, 2]]).sum(axis=1), 1.0, atol=1e-5)
    assert (logits[two].argmax(axis=1) == labels[two]).mean() > 0.9


def test_the_run_learns_the_toy_task(tfidf_run):
    result = json.loads(tfidf_run.result.read_text())
    assert result["kept"] == "best" and set(result["models"]) == {"best"}
    assert result["best"]["accuracy"] > 0.9  # chance is 0.25
    assert result["best"]["macro_f1"] > 0.9
    assert sum(map(sum, result["report"]["confusion_matrix"])) == 120
    assert result["converged"] and sum(result["test_predicted_counts"]) == 40


def test_the_run_folder_has_a_runs_files_where_they_apply(tfidf_run):
    assert not tfidf_run.path.name.endswith(".incomplete")
    assert {p.name for p in tfidf_run.path.iterdir()} == {
        "config.json", "plan.json", "environment.json", "preprocessor.json", "best", "val_logits.npz", "result.json",
        "submission.csv"}
    plan = json.loads(tfidf_run.plan.read_text())
    assert plan["kind"] == "tfidf" and plan["train_class_counts"] == [90, 90, 90, 90]
    assert plan["label_names"] == ["강한 부정", "약한 부정", "약한 긍정", "강한 긍정"]
    assert json.loads(tfidf_run.config.read_text())["model"] == "tfidf"
    assert "scikit-learn" in json.loads(tfidf_run.environment.read_text())


def test_the_run_folder_holds_no_pickle(tfidf_run):
    files = [p for p in tfidf_run.path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib", ".pt", ".bin")]
    archives = [p for p in files if p.suffix == ".npz"]
    assert {p.name for p in archives} == {"val_logits.npz", "weights.npz"}
    for path in archives:
        with np.load(path, allow_pickle=False) as saved:
            assert all(saved[name].dtype != object for name in saved.files)
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))


def test_predict_writes_the_runs_own_submission(tfidf_run, toy_data, tmp_path):
    out = tmp_path / "sub.csv"
    assert run_cli(predict.main, [str(tfidf_run.path), "--test", str(toy_data["test"]), "--out", str(out),
                                  "--quiet"]) == 0
    submission = pd.read_csv(out)
    pd.testing.assert_frame_equal(submission, pd.read_csv(tfidf_run.submission))
    assert list(submission["ID"]) == list(pd.read_csv(toy_data["test"])["ID"])
    assert (submission["pred"].to_numpy() == toy_test_classes(40)).mean() > 0.9


def test_predict_reproduces_the_saved_validation_logits(tfidf_run, toy_data, tmp_path):
    saved = np.load(tfidf_run.val_logits)
    rows = pd.read_csv(toy_data["train"]).set_index("ID").loc[saved["ids"]].reset_index()
    rows[["ID", "review"]].to_csv(tmp_path / "val.csv", index=False)
    assert run_cli(predict.main, [str(tfidf_run.path), "--test", str(tmp_path / "val.csv"), "--out",
                                  str(tmp_path / "sub.csv"), "--logits-out", str(tmp_path / "logits.npz"),
                                  "--model", "best"]) == 0
    predicted = np.load(tmp_path / "logits.npz")
    assert list(predicted["ids"]) == list(saved["ids"])
    np.testing.assert_allclose(predicted["logits"], saved["logits"], atol=1e-6, rtol=0)


def test_predict_refuses_a_model_the_run_does_not_have(tfidf_run, toy_data, tmp_path, capsys):
    assert run_cli(predict.main, [str(tfidf_run.path), "--test", str(toy_data["test"]), "--out",
                                  str(tmp_path / "s.csv"), "--model", "last"]) == 2
    assert "only best/" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_bad_input_leaves_nothing_behind(toy_data, tmp_path):
    ids_only = tmp_path / "ids.csv"
    pd.DataFrame({"ID": ["T1", "T2"]}).to_csv(ids_only, index=False)
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="review"):
        train_classical(tfidf_config(toy_data, runs, test_file=str(ids_only)))
    assert not runs.exists() or not any(runs.iterdir())


def test_a_tfidf_run_votes_with_a_neural_run(tfidf_run, toy_data, tmp_path, capsys):
    neural = train_new(tiny_config(toy_data, tmp_path / "n"))
    runs, test = [tfidf_run.path, neural.path], toy_data["test"]
    options = dict(average="logits", stack=False, calibrate=None, prior_correction=None, overwrite=False,
                   pred_column="pred", inference=Inference(device="cpu"))
    report = vote(runs, test=test, out=tmp_path / "alone.csv", weights="1,0", save=None, **options)
    assert "(tfidf)" in report and "(scratch:tiny)" in report and "validation: 120 rows" in report
    # all the weight on the tfidf member: the ensemble's test scores are that member's own
    alone = pd.read_csv(tmp_path / "alone.csv")
    pd.testing.assert_frame_equal(alone, pd.read_csv(tfidf_run.submission))
    assert (alone["pred"].to_numpy() == toy_test_classes(40)).mean() > 0.9

    assert run_cli(ensemble.main, ["vote", *map(str, runs), "--test", str(test), "--out", str(tmp_path / "v.csv"),
                                   "--save", str(tmp_path / "ens"), "--quiet"]) == 0
    capsys.readouterr()
    assert run_cli(predict.main, [str(tmp_path / "ens"), "--test", str(test), "--out", str(tmp_path / "again.csv"),
                                  "--quiet"]) == 0
    voted = pd.read_csv(tmp_path / "v.csv")
    assert (voted["pred"].to_numpy() == toy_test_classes(40)).mean() > 0.9
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), voted)
