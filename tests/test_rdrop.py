"""R-Drop: two dropout passes, their mean task loss plus alpha times their symmetric KL."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.data.batching import collate
from lib.finetune.losses import FocalLoss
from lib.finetune.objectives import RDropObjective
from lib.loop.step import ClassifierObjective, WindowShare, accumulate_window
from tests.tiny_encoders import random_encoded, tiny_bert

CPU = torch.device("cpu")




def _share(denominator):
    return WindowShare(denominator, torch.amp.GradScaler("cpu", enabled=False))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _window(model, objective, batches, denominator, seed=None):
    """Loss and gradients of one window, from no gradients, with the dropout masks of `seed`."""
    model.zero_grad(set_to_none=True)
    if seed is not None:
        torch.manual_seed(seed)
    loss = accumulate_window(model, batches, objective, _share(denominator))
    return loss, _grads(model)


def _loss_fn():
    return FocalLoss(3, gamma=1.5, label_smoothing=0.1)


@pytest.mark.parametrize("alpha", [0.0, 4.0])
def test_without_dropout_it_is_exactly_the_plain_objective(alpha):
    model = tiny_bert(dropout=0.0)
    batches = [collate(random_encoded(), np.arange(0, 6)), collate(random_encoded(), np.arange(6, 11))]
    plain_loss, plain = _window(model, ClassifierObjective(_loss_fn(), "fp32", CPU), batches, 11)
    loss, grads = _window(model, RDropObjective(_loss_fn(), alpha, "fp32", CPU), batches, 11)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain.keys()
    for name in grads:
        assert torch.equal(grads[name], plain[name]), name


def _reference(model, batch, alpha, seed, precision="fp32", detach_second_in_kl=False):
    """Two seeded forwards and the paper's per-example formula, written with F.kl_div."""
    torch.manual_seed(seed)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        z1, z2 = model(**inputs).logits, model(**inputs).logits
    z1, z2 = z1.float(), z2.float()
    log_p1 = F.log_softmax(z1, dim=-1)
    log_p2 = F.log_softmax(z2.detach() if detach_second_in_kl else z2, dim=-1)
    kl_12 = F.kl_div(log_p2, log_p1, log_target=True, reduction="none").sum(-1)  # KL(p1 || p2)
    kl_21 = F.kl_div(log_p1, log_p2, log_target=True, reduction="none").sum(-1)  # KL(p2 || p1)
    task = 0.5 * (_loss_fn()(z1, batch["labels"]) + _loss_fn()(z2, batch["labels"]))
    per_sample = task + alpha * 0.5 * (kl_12 + kl_21)
    return per_sample.mean(), z1, z2


def _reference_grads(model, batch, alpha, seed, **options):
    model.zero_grad(set_to_none=True)
    loss, z1, z2 = _reference(model, batch, alpha, seed, **options)
    loss.backward()
    return loss.detach(), _grads(model), (z1, z2)


@pytest.mark.parametrize("soft", [False, True])
def test_with_dropout_loss_and_gradients_match_a_hand_computation(soft):
    """Gradients flow through both passes, the KL included: with the second pass's distribution
    detached in the KL, the reference's gradients would differ."""
    model = tiny_bert(dropout=0.3)
    batch = collate(random_encoded(soft=soft), np.arange(11))
    expected, expected_grads, (z1, z2) = _reference_grads(model, batch, 2.0, seed=5)
    assert not torch.allclose(z1, z2, atol=1e-3)  # the passes really saw different dropout masks

    loss, grads = _window(model, RDropObjective(_loss_fn(), 2.0, "fp32", CPU), [batch], 11, seed=5)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)

    _, one_sided, _ = _reference_grads(model, batch, 2.0, seed=5, detach_second_in_kl=True)
    assert any(not torch.allclose(one_sided[name], grads[name], rtol=1e-3, atol=1e-6) for name in grads)


def test_under_bf16_autocast_the_loss_matches_the_hand_computation():
    model = tiny_bert(dropout=0.1)
    batch = collate(random_encoded(), np.arange(11))
    loss, grads = _window(model, RDropObjective(_loss_fn(), 1.0, "bf16", CPU), [batch], 11, seed=2)
    expected, expected_grads, _ = _reference_grads(model, batch, 1.0, seed=2, precision="bf16")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    # the backward runs in bf16, where the two formulas round differently (~1%); a key bias has no
    # gradient at all (softmax ignores it), only rounding noise
    for name in grads:
        scale = float(expected_grads[name].abs().max())
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=0.02 * scale + 1e-8, msg=name)


def test_alpha_zero_is_the_mean_of_the_two_passes_plain_losses():
    model = tiny_bert(dropout=0.3)
    batch = collate(random_encoded(), np.arange(11))
    loss, _ = _window(model, RDropObjective(_loss_fn(), 0.0, "fp32", CPU), [batch], 11, seed=3)
    torch.manual_seed(3)
    plain = ClassifierObjective(_loss_fn(), "fp32", CPU)
    first = plain.backward(model, batch, _share(11))
    second = plain.backward(model, batch, _share(11))
    torch.testing.assert_close(loss, (first + second) / 2 / 11, rtol=0, atol=1e-6)


def test_a_weight_zero_placeholder_batch_contributes_nothing():
    model = tiny_bert(dropout=0.3)
    batch = dict(collate(random_encoded(), np.arange(3)), weight=0.0)
    loss, grads = _window(model, RDropObjective(_loss_fn(), 1.0, "fp32", CPU), [batch], 1, seed=1)
    assert float(loss) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())
