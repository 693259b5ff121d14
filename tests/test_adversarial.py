"""FGM and AWP around the plain objective: the second pass adds the gradient at the perturbed point,
the perturbation is the documented one, and every weight comes back bit-exactly."""

import copy

import numpy as np
import pytest
import torch

from lib.data.batching import EncodedTexts, collate
from lib.finetune.losses import FocalLoss
from lib.loop import adversarial
from lib.loop.adversarial import AWP, FGM
from lib.loop.step import ClassifierObjective, WindowShare, accumulate_window, optimizer_step
from tests.host_reads import fail_on_host_reads
from tests.tiny_encoders import random_encoded, tiny_bert

CPU = torch.device("cpu")




def _split(data, sizes):
    bounds = np.cumsum([0] + list(sizes))
    return [collate(data, np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _plain(precision="fp32"):
    return ClassifierObjective(FocalLoss(3, gamma=1.0, label_smoothing=0.1), precision, CPU)


def _share(denominator, scale=None):
    scaler = torch.amp.GradScaler("cpu", enabled=scale is not None, init_scale=scale or 1.0)
    return WindowShare(denominator, scaler)


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _backward(model, objective, batches, denominator, scale=None):
    """Gradients and loss of one window, starting from no gradients."""
    model.zero_grad(set_to_none=True)
    loss = accumulate_window(model, batches, objective, _share(denominator, scale))
    return _grads(model), loss


def _assert_all_close(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **tolerance)


def _fgm_delta(grads, epsilon):
    g = grads["bert.embeddings.word_embeddings.weight"]
    return {"bert.embeddings.word_embeddings.weight": epsilon * g / g.norm()}


def _awp_delta(weights, grads, lr, eps):
    """Wu et al.'s step clamped to eps * |w| around w, written out independently of lib.loop.adversarial."""
    deltas = {}
    for name, w in weights.items():
        if w.ndim >= 2 and name in grads:
            g = grads[name]
            moved = torch.clamp(w + lr * w.norm() * g / g.norm(), w - eps * w.abs(), w + eps * w.abs())
            deltas[name] = moved - w
    return deltas


def _at(model, deltas):
    """A copy of `model` with each named weight moved by its delta."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if name in deltas:
                p.add_(deltas[name])
    return moved


def _snapshots_per_forward(model):
    """Every weight as the model's forward sees it, once per forward."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(_weights(module)))
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_gradient_is_clean_plus_the_gradient_at_the_perturbed_weights(kind, precision):
    """The reference perturbs a copy by hand; the window's gradient must be the sum of both points'."""
    model = tiny_bert(layers=2)
    batch = collate(random_encoded(), np.arange(11))
    plain = _plain(precision)
    clean, clean_loss = _backward(model, plain, [batch], 11)
    if kind == "fgm":
        deltas, objective = _fgm_delta(clean, 0.5), FGM(plain, epsilon=0.5)
    else:
        deltas, objective = _awp_delta(_weights(model), clean, lr=0.1, eps=0.02), AWP(plain, lr=0.1, eps=0.02)
    adversarial, _ = _backward(_at(model, deltas), plain, [batch], 11)

    got, loss = _backward(model, objective, [batch], 11)

    torch.testing.assert_close(loss, clean_loss, rtol=0, atol=0)  # the clean loss is what is returned
    expected = {name: clean[name] + adversarial[name] for name in clean}
    _assert_all_close(got, expected, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(got[name], 2 * clean[name], rtol=1e-3, atol=1e-5) for name in got)


@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_every_weight_is_restored_bit_exactly(kind):
    model = tiny_bert(layers=2)
    before = _weights(model)
    objective = FGM(_plain(), epsilon=1.0) if kind == "fgm" else AWP(_plain(), lr=1.0, eps=0.05)
    seen = _snapshots_per_forward(model)
    share = _share(11)
    accumulate_window(model, _split(random_encoded(), [4, 4, 3]), objective, share)

    assert len(seen) == 6  # clean + adversarial per micro-batch
    assert not torch.equal(seen[1]["bert.embeddings.word_embeddings.weight"],
                           before["bert.embeddings.word_embeddings.weight"])  # it was perturbed...
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name  # ...and is back, bit for bit
    parameters = list(model.parameters())
    optimizer_step(parameters, torch.optim.SGD(parameters, lr=0.0), share.scaler, max_grad_norm=1.0)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_fgm_moves_only_the_word_embeddings_by_epsilon_along_their_batch_gradient():
    model = tiny_bert(layers=2)
    data = random_encoded()
    first, second = _split(data, [5, 6])
    plain = _plain()
    second_alone, _ = _backward(model, plain, [second], 11)
    seen = _snapshots_per_forward(model)
    model.zero_grad(set_to_none=True)
    accumulate_window(model, [first, second], FGM(plain, epsilon=0.3), _share(11))

    name = "bert.embeddings.word_embeddings.weight"
    r = seen[3][name] - seen[2][name]  # the second micro-batch's adversarial forward minus its clean one
    assert float(r.norm()) == pytest.approx(0.3, rel=1e-4)
    # the direction is that micro-batch's own gradient, not the window's running sum
    torch.testing.assert_close(r, _fgm_delta(second_alone, 0.3)[name], rtol=1e-4, atol=1e-7)
    for other in seen[3]:
        if other != name:
            assert torch.equal(seen[3][other], seen[2][other]), other


def test_fgm_window_is_the_sum_of_its_micro_batches_each_perturbed_alone():
    model = tiny_bert(layers=2)
    batches = _split(random_encoded(), [4, 7])
    objective = FGM(_plain(), epsilon=0.5)
    window, _ = _backward(model, objective, batches, 11)
    alone = [_backward(model, objective, [batch], 11)[0] for batch in batches]
    _assert_all_close(window, {name: alone[0][name] + alone[1][name] for name in window}, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("split", [[4, 4, 3], [1, 10]])
def test_fgm_accumulated_window_equals_one_large_batch(split):
    """Identical rows make every micro-batch's gradient point the same way as the whole batch's, so the
    perturbation is the same and only the remainder-aware division decides each pass's share."""
    same = EncodedTexts([np.array([7, 12, 30, 41, 9], dtype=np.int32)] * 11, np.full(11, 2), pad_token_id=0)
    model = tiny_bert(layers=2)
    objective = FGM(_plain(), epsilon=0.5)
    whole, whole_loss = _backward(model, objective, [collate(same, np.arange(11))], 11)
    micro, micro_loss = _backward(model, objective, _split(same, split), 11)
    torch.testing.assert_close(micro_loss, whole_loss, rtol=1e-5, atol=1e-6)
    _assert_all_close(micro, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_a_negligible_perturbation_doubles_the_clean_gradient(kind):
    """The second pass is a full share of the window, through the same scaler, for every weight."""
    model = tiny_bert(layers=2)
    batches = _split(random_encoded(), [6, 5])
    clean, _ = _backward(model, _plain(), batches, 11)
    objective = FGM(_plain(), epsilon=1e-12) if kind == "fgm" else AWP(_plain(), lr=1e-12, eps=1e-12)
    got, _ = _backward(model, objective, batches, 11)
    _assert_all_close(got, {name: 2 * g for name, g in clean.items()}, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_gradients_do_not_depend_on_the_loss_scale(kind):
    """A GradScaler at 2^16 scales both passes alike (a second backward that skipped it would not)."""
    model = tiny_bert(layers=2)
    batches = _split(random_encoded(), [6, 5])
    objective = FGM(_plain(), epsilon=0.5) if kind == "fgm" else AWP(_plain(), lr=0.5, eps=0.02)
    unscaled, _ = _backward(model, objective, batches, 11)
    scaled, _ = _backward(model, objective, batches, 11, scale=2.0 ** 16)
    _assert_all_close({name: g / 2.0 ** 16 for name, g in scaled.items()}, unscaled, rtol=1e-5, atol=1e-8)


def test_awp_stays_within_eps_of_each_matrix_and_leaves_vectors_alone():
    model = tiny_bert(layers=2)
    before = _weights(model)
    seen = _snapshots_per_forward(model)
    accumulate_window(model, [collate(random_encoded(), np.arange(11))], AWP(_plain(), lr=1.0, eps=0.01), _share(11))

    for name, w in before.items():
        delta = seen[1][name] - w
        if w.ndim == 1:
            assert torch.equal(delta, torch.zeros_like(w)), name  # biases and LayerNorm weights
        else:
            assert bool((delta.abs() <= 0.01 * w.abs() * (1 + 1e-5) + 1e-12).all()), name
            assert float(delta.abs().max()) > 0, name
    assert any(w.ndim == 1 for w in before.values())


def test_awp_under_an_enclosing_autocast_still_sees_its_perturbation():
    """Autocast caches its bf16 copies of the weights until the outermost context exits."""
    model = tiny_bert(layers=2)
    batch = collate(random_encoded(), np.arange(11))
    objective = AWP(_plain("bf16"), lr=0.5, eps=0.05)
    alone, _ = _backward(model, objective, [batch], 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enclosed, _ = _backward(model, objective, [batch], 11)
        after, _ = _backward(model, _plain("bf16"), [batch], 11)
    _assert_all_close(enclosed, alone, rtol=1e-5, atol=1e-7)
    _assert_all_close(after, _backward(model, _plain("bf16"), [batch], 11)[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weight", [0.0, float("inf")])
@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_a_zero_or_not_finite_gradient_adds_nothing_and_moves_nothing(kind, weight):
    """The second pass still runs (deciding on the host would be a sync), unperturbed and at weight 0:
    the window's gradient is the clean one, inf and NaN where that has them."""
    model = tiny_bert(layers=2)
    before = _weights(model)
    batch = dict(collate(random_encoded(), np.arange(11)), weight=weight)
    clean, _ = _backward(model, _plain(), [batch], 11)
    objective = FGM(_plain(), epsilon=1.0) if kind == "fgm" else AWP(_plain(), lr=1.0, eps=0.05)
    seen = _snapshots_per_forward(model)
    got, _ = _backward(model, objective, [batch], 11)
    assert len(seen) == 2
    for name, p in model.named_parameters():
        assert torch.equal(seen[1][name], before[name]) and torch.equal(p.detach(), before[name]), name
    _assert_all_close(got, clean, rtol=0, atol=0, equal_nan=True)
    assert weight == 0.0 or any(not g.isfinite().all() for g in got.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_an_adversarial_window_reads_nothing_back_from_the_device(kind, precision, monkeypatch):
    """On a GPU every read of a tensor's value on the host waits for the queue; a window of two
    micro-batches, each perturbed and restored, must make none outside the model."""
    model = tiny_bert(layers=2)
    objective = FGM(_plain(precision), epsilon=0.5) if kind == "fgm" else AWP(_plain(precision), lr=0.1, eps=0.02)
    batches = _split(random_encoded(), [6, 5])
    expected, _ = _backward(model, objective, batches, 11)
    with monkeypatch.context() as reads:
        fail_on_host_reads(reads, asked_by=adversarial.__file__)
        got, _ = _backward(model, objective, batches, 11)
    _assert_all_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("placeholder", [False, True])
def test_under_ddp_only_the_last_adversarial_pass_synchronises(tmp_path, placeholder):
    """One all-reduce per window, started by the last micro-batch's second pass. A rank whose last batch
    is a weight-0 placeholder (nothing to perturb) must still run that synced pass, or the other
    ranks' all-reduce would wait for it forever; world size 1 shows which passes sync."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_bert(layers=2)
        reference = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        syncing = []
        # the hook holds the DDP wrapper, which holds the hooked model: a reference cycle that would
        # keep the gloo group alive past its destruction, for a later forked test's GC to free
        hook = model.register_forward_pre_hook(
            lambda module, args, ddp=ddp: syncing.append(ddp.require_backward_grad_sync))
        first, last = _split(random_encoded(), [5, 6])
        if placeholder:
            last = dict(last, weight=0.0)
        objective = FGM(_plain(), epsilon=0.5)
        try:
            got, _ = _backward(ddp, objective, [first, last], 11)
        finally:
            hook.remove()
        del ddp
        expected, _ = _backward(reference, objective, [first, last], 11)
    finally:
        dist.destroy_process_group()
    assert syncing == [False, False, False, True]  # clean + adversarial per micro-batch
    _assert_all_close({name.removeprefix("module."): g for name, g in got.items()}, expected, rtol=0, atol=0)
