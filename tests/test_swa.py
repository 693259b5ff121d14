"""Weight averaging: the AveragedModel mean, SWALR as a pure function, and SWA inside real runs."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import SWALR
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from lib.core.errors import UserError
from lib.finetune.trainer import resume, train_new
from lib.loop import swa
from lib.loop.schedule import swa_lr_multiplier
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config


def _save_tiny(folder, seed):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    return model.state_dict()


def test_averaging_identical_checkpoints_gives_the_checkpoint(tmp_path):
    state = _save_tiny(tmp_path / "a", seed=0)
    averaged = swa.average_checkpoints([tmp_path / "a"] * 3, AutoModelForSequenceClassification.from_pretrained)
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=1e-7)


def test_averaging_two_checkpoints_gives_their_mean(tmp_path):
    a, b = _save_tiny(tmp_path / "a", seed=1), _save_tiny(tmp_path / "b", seed=2)
    averaged = swa.average_checkpoints([tmp_path / "a", tmp_path / "b"],
                                       AutoModelForSequenceClassification.from_pretrained)
    for name, value in averaged.named_parameters():
        torch.testing.assert_close(value.detach(), (a[name] + b[name]) / 2, rtol=0, atol=1e-6)
    assert not any(k.startswith("module.") or k == "n_averaged" for k in averaged.state_dict())


def test_swa_lr_multiplier_matches_torch_swalr():
    base = 2.0
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    warm = [1.0, 0.9, 0.8]  # a schedule's multipliers before averaging starts at step 3
    seen, ours = [], []
    for step in range(12):
        if step < 3:
            optimizer.param_groups[0]["lr"] = base * warm[step]
        elif step == 3:
            optimizer.param_groups[0]["lr"] = base * 0.7
            scheduler = SWALR(optimizer, swa_lr=0.1, anneal_epochs=5, anneal_strategy="cos")
        seen.append(optimizer.param_groups[0]["lr"])
        ours.append(base * (warm[step] if step < 3 else swa_lr_multiplier(step, 3, 5, 0.1 / base, 0.7)))
        optimizer.step()
        if step >= 3:
            scheduler.step()
    assert ours == pytest.approx(seen, rel=1e-12)


@pytest.mark.parametrize("swa_start, epochs, expected", [(1, 4, 0), (3, 4, 2), (0.75, 4, 2), (0.5, 3, 1)])
def test_swa_start_epoch(swa_start, epochs, expected):
    assert swa.start_epoch(swa_start, epochs) == expected


def test_swa_start_past_the_last_epoch_is_refused():
    with pytest.raises(UserError, match="--swa-start"):
        swa.start_epoch(5, 4)


def test_swa_last_k_run_saves_swa_and_reports_every_k(toy_data, tmp_path):
    run = train_new(tiny_config(toy_data, tmp_path, num_train_epochs=3, swa_last_k=2, keep="swa",
                                test_file=str(toy_data["test"])))
    result = json.loads(run.result.read_text())
    assert result["kept"] == "swa" and set(result["models"]) == {"best", "swa_1", "swa"}
    assert result["models"]["swa"]["averaged_steps"] == [46, 69]  # 23 steps per epoch
    assert result["best"] == result["models"]["swa"]
    assert (run.path / "swa" / "model.safetensors").is_file() and (run.path / "swa" / "tokenizer.json").is_file()
    assert not (run.path / "checkpoints").exists()
    # SWA-1 is the final-epoch model, i.e. last/
    last = load_file(str(run.last / "model.safetensors"))
    assert result["models"]["swa_1"]["averaged_steps"] == [69]
    swa_weights = load_file(str(run.path / "swa" / "model.safetensors"))
    assert any(not torch.equal(swa_weights[k], last[k]) for k in last)


def test_resume_in_the_middle_of_averaging_matches_an_uninterrupted_run(toy_data, tmp_path):
    overrides = dict(num_train_epochs=3, swa_start=2, swa_lr=1e-3, dropout_rate=0.1)
    straight = train_new(tiny_config(toy_data, tmp_path / "a", **overrides))
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(tiny_config(toy_data, tmp_path / "b", **overrides), stop=StopAtStep(55))  # epoch 3 of 3
    torch.manual_seed(999)
    resumed = resume(interrupted.value.run_path)
    a = load_file(str(straight.path / "swa" / "model.safetensors"))
    b = load_file(str(resumed.path / "swa" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    result = json.loads(resumed.result.read_text())
    assert result["models"]["swa"] == json.loads(straight.result.read_text())["models"]["swa"]
