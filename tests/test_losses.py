"""Focal loss against cross entropy and a float64 reference; finite gradients at extreme logits."""

import pytest
import torch
import torch.nn.functional as F

from lib.core.errors import UserError
from lib.finetune.losses import FocalLoss, auto_alpha


def _batch(n=32, k=4, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=generator) * scale, torch.randint(0, k, (n,), generator=generator)


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.1, 0.3])
def test_gamma_zero_without_alpha_is_cross_entropy(smoothing):
    logits, labels = _batch()
    ours = FocalLoss(4, gamma=0.0, label_smoothing=smoothing)(logits, labels).mean()
    reference = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probabilities"])
def test_alpha_weights_each_class_term_like_weighted_cross_entropy(smoothing, soft):
    """Also for soft targets (a teacher's class probabilities), which F.cross_entropy takes as well."""
    logits, labels = _batch()
    if soft:
        labels = torch.softmax(torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)) * 2, dim=-1)
    alpha = [0.11, 0.45, 0.12, 0.32]
    ours = FocalLoss(4, gamma=0.0, alpha=alpha, label_smoothing=smoothing)(logits, labels).sum()
    reference = F.cross_entropy(logits, labels, weight=torch.tensor(alpha), label_smoothing=smoothing,
                                reduction="sum")
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 2.96])
def test_hard_label_focal_matches_float64_formula(gamma):
    logits, labels = _batch(seed=3)
    alpha = torch.tensor([0.2, 0.4, 0.1, 0.3], dtype=torch.float64)
    p = torch.softmax(logits.double(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    reference = -alpha[labels] * (1 - p) ** gamma * torch.log(p)
    ours = FocalLoss(4, gamma=gamma, alpha=alpha.tolist())(logits, labels)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)


def test_focal_down_weights_easy_examples_and_never_exceeds_ce():
    logits, labels = _batch(scale=5.0, seed=4)
    ce = FocalLoss(4)(logits, labels)
    previous = ce
    for gamma in (0.5, 1.0, 2.0, 5.0):
        focal = FocalLoss(4, gamma=gamma)(logits, labels)
        assert torch.all(focal <= previous + 1e-7)
        previous = focal


def test_gradient_flows_through_the_modulating_factor():
    """gradcheck in float64 catches implementations that detach p_t."""
    logits, labels = _batch(n=6, seed=5)
    logits = logits.double().requires_grad_()
    loss = FocalLoss(4, gamma=2.0, label_smoothing=0.1)

    def f(x):
        return loss(x, labels).sum()

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_give_finite_loss_and_gradients(gamma, dtype):
    logits = torch.tensor([[30.0, -30.0, 0.0, 0.0], [1e4, -1e4, 0, 0], [-30.0, 30.0, 0, 0]], dtype=dtype)
    logits.requires_grad_()
    labels = torch.tensor([0, 0, 0])
    loss = FocalLoss(4, gamma=gamma, alpha=[1, 2, 3, 4], label_smoothing=0.1)(logits, labels)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()


def test_alpha_of_the_wrong_length_is_refused():
    with pytest.raises(UserError, match="--alpha"):
        FocalLoss(4, alpha=[0.5, 0.5])


def test_auto_alpha_is_inverse_frequency_with_mean_one():
    alpha = auto_alpha([100, 50, 25, 25])
    assert pytest.approx(sum(alpha) / 4) == 1.0
    assert alpha[2] == pytest.approx(4 * alpha[0]) and alpha[1] == pytest.approx(2 * alpha[0])


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_one_hot_probability_targets_give_the_hard_label_loss(gamma):
    logits, labels = _batch()
    loss = FocalLoss(4, gamma=gamma, alpha=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, F.one_hot(labels, 4).float()), loss(logits, labels))
