"""The gradient step: accumulation equals one big batch, clipping, and fp16 skip handling without host reads."""

import json
import math

import numpy as np
import pytest
import torch

from lib.core.device import make_grad_scaler, resolve_precision, to_device
from lib.data.batching import collate
import lib.finetune.trainer as trainer_module
from lib.finetune.losses import FocalLoss
from lib.finetune.trainer import resume, train_new
from lib.loop.state import load_state
from lib.loop.step import (AppliedSteps, ClassifierObjective, StepOutcome, WindowShare, accumulate_window,
                           optimizer_step)
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config
from tests.host_reads import fail_on_host_reads
from tests.tiny_encoders import random_encoded, tiny_bert


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("split", [[4, 4, 3], [5, 6], [1, 10]])
def test_accumulated_window_equals_one_large_batch(split):
    """Includes uneven windows: each micro-batch is divided by the window's sample count."""
    data = random_encoded()
    loss_fn = FocalLoss(3, gamma=1.5, label_smoothing=0.1)
    scaler = make_grad_scaler("fp32", torch.device("cpu"))
    cpu = torch.device("cpu")

    whole = tiny_bert()
    objective = ClassifierObjective(loss_fn, "fp32", cpu)
    full_loss = accumulate_window(whole, [collate(data, np.arange(11))], objective, WindowShare(11, scaler))
    micro = tiny_bert()
    bounds = np.cumsum([0] + split)
    batches = [collate(data, np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
    window_loss = accumulate_window(micro, batches, objective, WindowShare(11, scaler))

    torch.testing.assert_close(window_loss, full_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(whole), _grads(micro)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_the_logits():
    model = tiny_bert().eval()
    data = random_encoded()
    alone = model(**{k: v for k, v in collate(data, np.array([0])).items() if k in ("input_ids", "attention_mask")})
    padded = model(**{k: v for k, v in collate(data, np.arange(11)).items() if k in ("input_ids", "attention_mask")})
    torch.testing.assert_close(alone.logits[0], padded.logits[0], rtol=1e-5, atol=1e-5)


def test_step_clips_to_max_norm_and_reports_the_norm_before_clipping():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = make_grad_scaler("fp32", torch.device("cpu"))
    outcome = optimizer_step([w], optimizer, scaler, max_grad_norm=1.0)
    assert outcome.skipped is None and float(outcome.grad_norm) == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8]))
    assert w.grad is None


def test_no_clipping_still_measures_the_norm():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    outcome = optimizer_step([w], torch.optim.SGD([w], lr=1.0), make_grad_scaler("fp32", torch.device("cpu")),
                                 max_grad_norm=0.0)
    assert float(outcome.grad_norm) == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-3.0, -4.0]))


def test_an_overflowing_fp16_step_is_skipped_and_reported():
    """GradScaler with inf gradients: weights unchanged, scale halved, the step's flag set and not
    counted as applied; the next, finite step is."""
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    applied = AppliedSteps()
    scaler.scale(w.sum()).backward()
    w.grad[0] = math.inf
    outcome = optimizer_step([w], optimizer, scaler, max_grad_norm=1.0)
    applied.add(outcome)
    assert float(outcome.skipped) == 1.0
    torch.testing.assert_close(w.detach(), torch.ones(2))
    assert scaler.get_scale() == 4.0
    assert applied.settle() == 0

    scaler.scale(w.sum()).backward()
    outcome = optimizer_step([w], optimizer, scaler, max_grad_norm=10.0)
    applied.add(outcome)
    assert float(outcome.skipped) == 0.0 and scaler.get_scale() == 4.0
    torch.testing.assert_close(w.detach(), torch.zeros(2))
    assert applied.settle() == 1 and applied.settle() == 0  # each step counted once


def test_applied_steps_count_every_step_without_a_scaler_and_skips_with_one():
    applied = AppliedSteps()
    w = torch.nn.Parameter(torch.ones(2))
    optimizer, scaler = torch.optim.SGD([w], lr=0.1), make_grad_scaler("fp32", torch.device("cpu"))
    for _ in range(3):
        w.grad = torch.ones(2)
        applied.add(optimizer_step([w], optimizer, scaler, 1.0))
    assert applied.settle() == 3
    for flag in (0.0, 1.0, 1.0, 0.0, 0.0):
        applied.add(StepOutcome(torch.tensor(1.0), torch.tensor(flag)))
    assert applied.settle() == 3


def test_an_fp16_step_with_fused_adamw_reads_nothing_back_from_the_device(monkeypatch):
    """Every read of a tensor's value on the host (`.item()`, `float()`, `bool()`, `get_scale()`) would be a
    host sync on a GPU. With fused AdamW (what the trainers build) the scaler's skip happens inside the
    optimizer's kernel, so a whole fp16 step, overflowing or not, must read none; the counter reads its
    flags afterwards."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 10)
    applied = AppliedSteps()
    before = model.weight.detach().clone()
    for overflow in (True, False):
        scaler.scale(model(torch.ones(4, 3)).sum()).backward()
        if overflow:
            model.bias.grad[0] = math.nan
        with monkeypatch.context() as reads:
            fail_on_host_reads(reads)
            reads.setattr(torch.amp.GradScaler, "get_scale", lambda self: pytest.fail("host read: get_scale"))
            applied.add(optimizer_step(list(model.parameters()), optimizer, scaler, max_grad_norm=1.0))
        if overflow:
            torch.testing.assert_close(model.weight.detach(), before)  # skipped inside the fused kernel
    assert not torch.equal(model.weight.detach(), before)
    assert scaler.get_scale() == 2.0 ** 9 and applied.settle() == 1


def test_an_explicit_precision_is_kept_or_refused_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu, 128) == ("bf16", "as asked")
    assert resolve_precision("fp32", cpu, 1024) == ("fp32", "as asked")
    from lib.core.errors import UserError
    with pytest.raises(UserError, match="--precision fp16"):
        resolve_precision("fp16", cpu)


def test_a_batch_for_the_cpu_is_used_where_it_lies(monkeypatch):
    """No page-locking (it needs a GPU) and no copy: the collated tensor itself goes into the model."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: pytest.fail("pinned a CPU batch"))
    batch = collate(random_encoded(), np.arange(4))
    assert to_device(batch["input_ids"], torch.device("cpu")) is batch["input_ids"]


def test_steps_the_scaler_skips_leave_the_schedule_behind_and_are_saved_settled(toy_data, tmp_path, monkeypatch):
    """The trainer's wiring of the skip counter, on a CPU: under an enabled scaler, steps 3 and 7 get an inf
    gradient. The scaler skips them, and the schedule trails the optimizer by exactly those two in the
    state a stop after step 12 saves (the counter is settled before saving); the resumed run learns."""
    calls = []

    def overflowing_on_3_and_7(parameters, *args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] in (3, 7):
            parameters[0].grad.fill_(math.inf)
        return optimizer_step(parameters, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_grad_scaler", lambda precision, device: torch.amp.GradScaler("cpu"))
    monkeypatch.setattr(trainer_module, "optimizer_step", overflowing_on_3_and_7)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(tiny_config(toy_data, tmp_path), stop=StopAtStep(12))
    state = load_state(interrupted.value.run_path / "last" / "training_state.pt")
    assert state["scaler"]["scale"] == 2.0 ** 14  # halved twice from its initial 2**16
    assert (state["loop"]["global_step"], state["loop"]["schedule_step"]) == (12, 10)
    resumed = resume(interrupted.value.run_path)
    assert json.loads(resumed.result.read_text())["best"]["accuracy"] > 0.9
