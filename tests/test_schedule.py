"""Our schedules against transformers.get_scheduler, step by step, warmup included."""

import math
from dataclasses import replace

import pytest
import torch
from transformers import get_scheduler

from lib.finetune.plan import step_counts
from lib.loop.schedule import lr_multiplier, set_learning_rate
from tests.conftest import tiny_config


def _sgd(lr: float) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("kind", ["constant", "constant_with_warmup", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3, 10])
@pytest.mark.parametrize("total", [1, 5, 37, 100])
def test_multiplier_matches_transformers_at_every_step(kind, warmup, total):
    reference_optimizer = _sgd(2.0)
    reference = get_scheduler(kind, reference_optimizer, num_warmup_steps=warmup, num_training_steps=total)
    ours = _sgd(2.0)
    ours.param_groups[0]["initial_lr"] = 2.0
    for step in range(total + 4):  # past the end too: cosine rises again there, as in transformers
        set_learning_rate(ours, lr_multiplier(kind, step, warmup, total))
        assert ours.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"], (kind, step)
        reference_optimizer.step()
        reference.step()


def test_first_step_runs_at_zero_lr_when_warming_up():
    assert lr_multiplier("linear", 0, warmup_steps=5, total_steps=50) == 0.0
    assert lr_multiplier("constant", 0, warmup_steps=5, total_steps=50) == 1.0


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError):
        lr_multiplier("polynomial", 0, 0, 10)


def test_every_group_scales_from_its_own_initial_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "initial_lr": 1.0},
                                 {"params": [params[1]], "initial_lr": 0.1}], lr=1.0)
    set_learning_rate(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]


def test_step_counts_follow_the_hf_trainer(toy_data, tmp_path):
    # 360 rows / 16 = 22.5 -> 23 micro-batches; / GA 4 -> 6 steps (a partial window still steps)
    cfg = tiny_config(toy_data, tmp_path, gradient_accumulation_steps=4, num_train_epochs=2.5, warmup_ratio=0.1)
    micro, per_epoch, total, warmup = step_counts(cfg, 360)
    assert (micro, per_epoch, total) == (23, 6, 15)
    assert warmup == math.ceil(15 * 0.1) == 2


def test_unset_warmup_and_learning_rate_depend_on_whether_weights_are_random(toy_data, tmp_path):
    from lib.finetune.plan import SCRATCH_WARMUP_RATIO, default_learning_rate
    from lib.model.backbone import PRETRAINED_LEARNING_RATE, SCRATCH_PRESETS

    cfg = tiny_config(toy_data, tmp_path, warmup_ratio=None, learning_rate=None, num_train_epochs=1)
    assert step_counts(cfg, 1600, from_scratch=True)[3] == math.ceil(100 * SCRATCH_WARMUP_RATIO)
    assert step_counts(cfg, 1600, from_scratch=False)[3] == 0  # the HF Trainer's default for pretrained models
    assert step_counts(replace(cfg, warmup_steps=7), 1600, from_scratch=True)[3] == 7
    assert default_learning_rate(cfg, SCRATCH_PRESETS["mini"]) == SCRATCH_PRESETS["mini"].learning_rate
    assert default_learning_rate(cfg, None) == PRETRAINED_LEARNING_RATE
    assert default_learning_rate(replace(cfg, learning_rate=0.1), SCRATCH_PRESETS["tiny"]) == 0.1
