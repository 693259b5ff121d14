"""Real tiny runs: the model learns the toy task, predict.py reproduces it, resume reproduces it."""

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import predict
from lib.core.cli import run_cli
from lib.finetune.run_folder import RunFolder
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import StopRequest, TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config


@pytest.fixture(scope="module")
def trained_run(toy_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(toy_data, output, test_file=str(toy_data["test"]))
    return train_new(cfg)


def test_the_run_learns_the_toy_task(trained_run):
    result = json.loads(trained_run.result.read_text())
    assert result["best"]["accuracy"] > 0.9  # chance is 0.25
    assert result["best"]["macro_f1"] > 0.9
    assert result["report"]["labels"] == ["강한 부정", "약한 부정", "약한 긍정", "강한 긍정"]
    assert sum(map(sum, result["report"]["confusion_matrix"])) == 120


def test_the_run_folder_describes_itself(trained_run):
    names = {p.name for p in trained_run.path.iterdir()}
    assert {"config.json", "plan.json", "environment.json", "preprocessor.json", "tokenizer", "best", "last",
            "metrics.jsonl", "tensorboard", "val_logits.npz", "result.json", "submission.csv", "train.log"} <= names
    assert not trained_run.path.name.endswith(".incomplete")
    env = json.loads(trained_run.environment.read_text())
    assert env["torch"] == torch.__version__ and "git_commit" in env
    splits = {json.loads(line)["split"] for line in trained_run.path.joinpath("metrics.jsonl").read_text().splitlines()}
    assert splits == {"train", "val"}
    config = json.loads(trained_run.best.joinpath("config.json").read_text())
    assert config["id2label"] == {"0": "강한 부정", "1": "약한 부정", "2": "약한 긍정", "3": "강한 긍정"}


def test_tensorboard_has_the_documented_curves(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run.path / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/accuracy", "val/macro_f1",
            "val/f1_강한 부정"} <= tags
    assert "val/report/text_summary" in events.Tags()["tensors"]


def _write_validation_rows(run: RunFolder, path) -> dict:
    """The run's validation rows as a file to predict; returns its saved validation logits."""
    saved = np.load(run.val_logits)
    rows = pd.read_csv(json.loads(run.config.read_text())["train_file"]).set_index("ID").loc[saved["ids"]]
    rows.reset_index()[["ID", "review"]].to_csv(path, index=False)
    return saved


def test_predict_reproduces_the_saved_validation_logits(trained_run, tmp_path, capsys):
    saved = _write_validation_rows(trained_run, tmp_path / "val.csv")
    code = predict.main([str(trained_run.path), "--test", str(tmp_path / "val.csv"), "--out",
                         str(tmp_path / "sub.csv"), "--logits-out", str(tmp_path / "logits.npz"), "--quiet"])
    assert code == 0
    predicted = np.load(tmp_path / "logits.npz")
    assert list(predicted["ids"]) == list(saved["ids"])
    np.testing.assert_allclose(predicted["logits"], saved["logits"], rtol=1e-4, atol=1e-5)
    submission = pd.read_csv(tmp_path / "sub.csv")
    assert list(submission.columns) == ["ID", "pred"]
    assert (submission["pred"].to_numpy() == saved["logits"].argmax(1)).all()
    out = capsys.readouterr().out
    assert "predicted" in out and "training" in out and "%" in out


def test_predict_in_bf16_is_close_to_the_fp32_logits_and_fp16_needs_cuda(trained_run, tmp_path, capsys):
    saved = _write_validation_rows(trained_run, tmp_path / "val.csv")
    argv = [str(trained_run.path), "--test", str(tmp_path / "val.csv"), "--out", str(tmp_path / "sub.csv"), "--quiet"]
    assert run_cli(predict.main, [*argv, "--logits-out", str(tmp_path / "bf16.npz"), "--precision", "bf16"]) == 0
    bf16 = np.load(tmp_path / "bf16.npz")["logits"]
    assert not np.array_equal(bf16, saved["logits"])  # it did compute in bf16 ...
    np.testing.assert_allclose(bf16, saved["logits"], atol=0.1)  # ... within bf16's ~3 significant digits
    assert run_cli(predict.main, [*argv, "--precision", "fp16", "--device", "cpu"]) == 2
    assert "--precision fp16: needs a CUDA device" in capsys.readouterr().err


def test_submission_covers_the_test_file(trained_run, toy_data):
    submission = pd.read_csv(trained_run.submission)
    assert list(submission["ID"]) == list(pd.read_csv(toy_data["test"])["ID"])
    assert submission["pred"].between(0, 3).all()


def _weights(run: RunFolder, which: str) -> dict:
    return load_file(str(run.path / which / "model.safetensors"))


@pytest.mark.parametrize("stop_step, overrides", [
    (7, {}),                                        # mid-epoch, between logging steps
    (23, {"gradient_accumulation_steps": 2, "eval_steps": 10}),  # after an eval, with accumulation
    (45, {"distill": True}),                        # in epoch 2 of labelled + distilled rows (35 steps each)
])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(toy_data, tmp_path, stop_step, overrides):
    overrides = {"num_train_epochs": 2, "dropout_rate": 0.1, **overrides}
    if overrides.pop("distill", False):
        overrides.update(unlabeled_file=str(toy_data["unlabeled"]), teacher_logits=str(toy_data["teacher"]))
    straight = train_new(tiny_config(toy_data, tmp_path / "a", **overrides))

    cfg = tiny_config(toy_data, tmp_path / "b", **overrides)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(cfg, stop=StopAtStep(stop_step))
    assert interrupted.value.run_path.name == "toy.incomplete"
    assert not (tmp_path / "b" / "toy").exists()
    torch.manual_seed(12345)  # a new process would start from another RNG state
    resumed = resume(interrupted.value.run_path)

    for which in ("best", "last"):
        a, b = _weights(straight, which), _weights(resumed, which)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert json.loads(straight.result.read_text())["best"] == json.loads(resumed.result.read_text())["best"]
    lines = [json.loads(l) for l in resumed.path.joinpath("metrics.jsonl").read_text().splitlines()]
    straight_lines = [json.loads(l) for l in straight.path.joinpath("metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in lines] == [(r["split"], r["step"]) for r in straight_lines]
    assert [r.get("loss") for r in lines] == pytest.approx([r.get("loss") for r in straight_lines], rel=1e-5)


def test_early_stopping_ends_the_run_and_keeps_the_best(toy_data, tmp_path):
    cfg = tiny_config(toy_data, tmp_path, num_train_epochs=30, early_stopping_patience=1,
                      early_stopping_threshold=0.5, learning_rate=1e-3)
    run = train_new(cfg)
    result = json.loads(run.result.read_text())
    assert result["stopped_early"] and result["epochs_completed"] < 30
    assert result["best_step"] <= result["global_step"]


def test_augmentation_touches_only_training_rows_and_resumes_identically(toy_data, tmp_path, monkeypatch):
    import lib.finetune.trainer

    seen = []
    original = lib.finetune.trainer.augment_rows

    def recording(texts, rows, spec, seed, epoch):
        seen.append((epoch, list(rows)))
        return original(texts, rows, spec, seed, epoch)

    monkeypatch.setattr(lib.finetune.trainer, "augment_rows", recording)
    overrides = dict(num_train_epochs=2, augment="spacing=0.1,jamo=0.05,delete=0.05", max_tokens_per_batch=256)
    run = train_new(tiny_config(toy_data, tmp_path / "a", **overrides))
    train_rows = sum(json.loads(run.plan.read_text())["train_class_counts"])
    for epoch in (0, 1):  # every training row noised once per epoch, nothing else
        rows = sorted(r for e, batch in seen if e == epoch for r in batch)
        assert rows == list(range(train_rows))

    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(tiny_config(toy_data, tmp_path / "b", **overrides), stop=StopAtStep(9))
    torch.manual_seed(0)
    resumed = resume(interrupted.value.run_path)
    a, b = _weights(run, "last"), _weights(resumed, "last")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_a_pruned_run_stops_after_that_evaluation_and_is_kept_as_pruned(toy_data, tmp_path):
    class PruneAtSecondEpoch(StopRequest):
        def prune_after(self, step, epoch, metrics):
            return epoch >= 2

    run = train_new(tiny_config(toy_data, tmp_path, num_train_epochs=5), stop=PruneAtSecondEpoch())
    result = json.loads(run.result.read_text())
    assert result["pruned"] and result["epochs_completed"] == 2
    assert not run.path.name.endswith(".incomplete")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_asks_for_a_clean_stop_and_a_second_one_aborts(signum):
    """Ctrl-C and SIGTERM (kill, a scheduler's preemption) both save state; handlers are restored after."""
    stop = StopRequest()
    before = signal.getsignal(signum)
    with stop.on_stop_signals():
        os.kill(os.getpid(), signum)
        assert stop.should_stop(0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) is before
