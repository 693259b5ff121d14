"""Distillation onto unlabelled rows: the id join of the teacher's scores, bad input, and a real run
whose student learns what the teacher says (the soft-target loss is in test_losses.py)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.core.errors import UserError
from lib.finetune.splits import load_splits
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config, write_teacher_logits


@pytest.fixture
def unlabeled(toy_data):
    """The toy unlabelled rows, their ids, and the true classes a perfect teacher would know."""
    frame = pd.read_csv(toy_data["unlabeled"])
    return toy_data["unlabeled"], frame["ID"].to_numpy(dtype=str), frame["label"].to_numpy()


def test_teacher_scores_are_joined_by_id_and_softened_by_the_temperature(toy_data, tmp_path, unlabeled):
    path, ids, classes = unlabeled
    logits = np.random.default_rng(0).normal(size=(len(ids), 4)) * 3
    order = np.random.default_rng(1).permutation(len(ids))  # the .npz need not follow the file's order
    teacher = write_teacher_logits(tmp_path / "teacher.npz", ids[order], logits[order])
    cfg = tiny_config(toy_data, tmp_path, unlabeled_file=str(path), teacher_logits=str(teacher),
                      distill_temperature=2.0)
    splits = load_splits(cfg)
    expected = torch.softmax(torch.tensor(logits) / 2.0, dim=-1).numpy()
    np.testing.assert_allclose(splits.distilled.probabilities, expected, rtol=1e-5, atol=1e-6)
    targets = splits.training_targets
    gold = len(splits.train)
    assert targets.shape == (gold + len(ids), 4)
    np.testing.assert_array_equal(targets[:gold].argmax(axis=1), splits.train.labels)
    assert set(np.unique(targets[:gold])) == {0.0, 1.0}
    np.testing.assert_array_equal(splits.training_labels[gold:], logits.argmax(axis=1))
    assert splits.training_texts[gold:] == pd.read_csv(path)["review"].tolist()
    assert not set(splits.val.ids) & set(splits.distilled.ids)


def test_bad_distillation_inputs_are_refused_in_one_line(toy_data, tmp_path, unlabeled):
    path, ids, _ = unlabeled

    def refused(**values):
        with pytest.raises(UserError) as error:
            load_splits(tiny_config(toy_data, tmp_path, **values))
        return str(error.value)

    full = write_teacher_logits(tmp_path / "full.npz", ids, np.zeros((len(ids), 4)))
    assert "give both" in refused(unlabeled_file=str(path))
    assert "--distill-temperature" in refused(unlabeled_file=str(path), teacher_logits=str(full),
                                              distill_temperature=0.0)
    partial = write_teacher_logits(tmp_path / "partial.npz", ids[:-3], np.zeros((len(ids) - 3, 4)))
    message = refused(unlabeled_file=str(path), teacher_logits=str(partial))
    assert "--teacher-logits" in message and "no scores for 3 of the 200 rows" in message
    three = write_teacher_logits(tmp_path / "three.npz", ids, np.zeros((len(ids), 3)))
    assert "expected one row per id and 4 classes" in refused(unlabeled_file=str(path), teacher_logits=str(three))
    assert "not found" in refused(unlabeled_file=str(path), teacher_logits=str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "expected an .npz" in refused(unlabeled_file=str(path), teacher_logits=str(tmp_path / "junk.npz"))
    # the labelled file itself as "unlabelled" rows: validation rows would get the teacher's guesses
    labelled_ids = pd.read_csv(toy_data["train"])["ID"].to_numpy(dtype=str)
    over = write_teacher_logits(tmp_path / "over.npz", labelled_ids, np.zeros((len(labelled_ids), 4)))
    message = refused(unlabeled_file=str(toy_data["train"]), teacher_logits=str(over))
    assert "--unlabeled-file" in message and "480 ids are also in the labelled data" in message


@pytest.mark.parametrize("shift, expect_learned", [(0, True), (1, False)])
def test_the_student_learns_what_the_teacher_says(toy_data, tmp_path, unlabeled, shift, expect_learned):
    """16 labelled rows teach little; 200 rows with the teacher's targets decide what the model learns.

    A teacher that names the next class (shift 1) must pull the student away from the truth: this
    fails if the soft targets do not reach the loss.
    """
    path, ids, classes = unlabeled
    teacher = write_teacher_logits(tmp_path / "teacher.npz", ids, 4.0 * np.eye(4)[(classes + shift) % 4])
    cfg = tiny_config(toy_data, tmp_path / "runs", max_train_samples=16, unlabeled_file=str(path),
                      teacher_logits=str(teacher), num_train_epochs=5)
    run = train_new(cfg)
    accuracy = json.loads(run.result.read_text())["best"]["accuracy"]
    plan = json.loads(run.plan.read_text())
    assert plan["distilled_rows"] == 200 and sum(plan["train_class_counts"]) == 16
    assert plan["steps_per_epoch"] == 14  # ceil(216 / 16)
    if expect_learned:
        assert accuracy > 0.9
    else:
        assert accuracy < 0.5



def test_resume_refuses_a_run_whose_unlabelled_rows_changed(toy_data, tmp_path):
    frame = pd.read_csv(toy_data["unlabeled"])
    unlabeled = tmp_path / "unlabeled.csv"
    frame.to_csv(unlabeled, index=False)
    cfg = tiny_config(toy_data, tmp_path / "runs", unlabeled_file=str(unlabeled),
                      teacher_logits=str(toy_data["teacher"]))
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(cfg, stop=StopAtStep(3))
    frame.iloc[:150].to_csv(unlabeled, index=False)
    with pytest.raises(UserError, match=f"data behind .* and {unlabeled} changed"):
        resume(interrupted.value.run_path)
