"""The gradient step: accumulation equals one big batch, clipping, and fp16 skip handling."""

import math

import numpy as np
import pytest
import torch

from lib.core.device import make_grad_scaler, resolve_precision, to_device
from lib.data.batching import collate
from lib.finetune.losses import FocalLoss
from lib.loop.step import ClassifierObjective, WindowShare, accumulate_window, optimizer_step
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
    assert outcome.applied and float(outcome.grad_norm) == pytest.approx(5.0)
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
    """GradScaler with inf gradients: weights unchanged, scale halved, step marked not applied."""
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    scaler.scale(w.sum()).backward()
    w.grad[0] = math.inf
    outcome = optimizer_step([w], optimizer, scaler, max_grad_norm=1.0)
    assert not outcome.applied
    torch.testing.assert_close(w.detach(), torch.ones(2))
    assert scaler.get_scale() == 4.0

    scaler.scale(w.sum()).backward()
    assert optimizer_step([w], optimizer, scaler, max_grad_norm=10.0).applied


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
