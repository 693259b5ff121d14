"""The competition techniques inside real training runs: EMA resumes exactly, and every technique at once
still learns the toy task and leaves a run folder that predict.py reads."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lib.finetune.trainer import resume, train_new
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config


def test_an_interrupted_ema_run_resumes_to_the_same_average(toy_data, tmp_path):
    overrides = dict(num_train_epochs=2, ema_decay=0.95, eval_steps=10, keep="ema")
    straight = train_new(tiny_config(toy_data, tmp_path / "a", **overrides))
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(tiny_config(toy_data, tmp_path / "b", **overrides), stop=StopAtStep(17))
    torch.manual_seed(999)  # a new process would start from another state
    resumed = resume(interrupted.value.run_path)
    a, b = (load_file(str(run.path / "ema" / "model.safetensors")) for run in (straight, resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    one, two = (json.loads(run.result.read_text()) for run in (straight, resumed))
    assert one["kept"] == two["kept"] == "ema"
    assert one["models"]["ema"]["updates"] == one["global_step"]
    assert two["models"]["ema"] == pytest.approx(one["models"]["ema"])
    records = [json.loads(line) for line in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    steps = {split: [r["step"] for r in records if r["split"] == split] for split in ("val", "val_ema")}
    assert steps["val_ema"] == steps["val"] and 10 in steps["val"]  # evaluated beside the raw weights


@pytest.mark.parametrize("adversarial", [dict(adversarial="fgm", adv_epsilon=0.5, adv_start_epoch=1),
                                         dict(adversarial="awp", awp_lr=1e-4, awp_eps=1e-2)])
def test_every_technique_at_once_still_learns_and_predicts(toy_data, tmp_path, capsys, adversarial):
    import predict
    from lib.core.cli import run_cli

    cfg = tiny_config(toy_data, tmp_path, num_train_epochs=3, layer_lr_decay=0.9, head_learning_rate=3e-3,
                      reinit_top_layers=1, ema_decay=0.9, rdrop_alpha=0.5, pooling="mean", multi_sample_dropout=2,
                      gradient_checkpointing=True, truncation="head+tail", max_length=8, swa_last_k=2,
                      test_file=str(toy_data["test"]), **adversarial)
    run = train_new(cfg)
    result = json.loads(run.result.read_text())
    assert {"best", "swa", "ema"} <= set(result["models"])
    assert result["best"]["accuracy"] > 0.9  # chance is 0.25
    out = tmp_path / "again.csv"
    assert run_cli(predict.main, [str(run.path), "--test", str(toy_data["test"]), "--out", str(out), "--quiet"]) == 0
    assert out.read_text() == run.submission.read_text()  # the kept model, its head and truncation, reloaded
