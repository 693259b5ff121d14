"""Dropout with masks from 16-bit random integers: the rate, the scale, the gradient, the model switch."""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lib.model.attention import INTEGER_DROPOUT_ATTENTION, attention_implementation
from lib.model.dropout import LEVELS, integer_dropout, integer_dropout_forwards, plain_dropouts
from tests.tiny_encoders import tiny_bert


def _dropped_and_scale(p: float) -> tuple[float, float]:
    dropped = round(p * LEVELS)
    return dropped / LEVELS, LEVELS / (LEVELS - dropped)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_masks_drop_at_the_rate_in_every_lane_and_scale_the_kept_values(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_003) + 0.5  # an odd length: the last 64-bit word is cut
    out = integer_dropout(x, p)
    rate, scale = _dropped_and_scale(p)
    kept = out != 0
    tolerance = 5 * (rate * (1 - rate) / x.numel() * 4) ** 0.5  # 5 sigma of a quarter of the elements
    for lane in range(4):  # the four 16-bit levels of one 64-bit word are independent draws
        assert abs(1 - kept[lane::4].float().mean().item() - rate) < tolerance
    pairs = kept[:-1].float(), kept[1:].float()  # neighbours are uncorrelated
    assert abs(torch.corrcoef(torch.stack(pairs))[0, 1].item()) < 0.01
    torch.testing.assert_close(out[kept], x[kept] * scale)


@pytest.mark.parametrize("p", [0.1, 0.25, 1e-4])
def test_of_all_65536_levels_exactly_the_lowest_round_p_times_65536_are_dropped(p, monkeypatch):
    every_level = torch.arange(-LEVELS // 2, LEVELS // 2, dtype=torch.int16)
    monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: every_level.view(torch.int64).clone())
    out = integer_dropout(torch.ones(LEVELS), p)
    dropped = round(p * LEVELS)
    assert torch.equal(out == 0, torch.arange(LEVELS) < dropped)


def test_the_scale_keeps_the_expectation_and_the_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.full((2_000_000,), 2.0, requires_grad=True)
    out = integer_dropout(x, 0.1)
    assert out.mean().item() == pytest.approx(2.0, abs=5 * 2 * (0.1 / 0.9 / x.numel()) ** 0.5)
    upstream = torch.randn_like(x)
    out.backward(upstream)
    torch.testing.assert_close(x.grad, upstream * (out.detach() / 2.0))


def test_bf16_values_are_scaled_in_float_then_rounded_once():
    torch.manual_seed(2)
    x = torch.randn(4096).to(torch.bfloat16).requires_grad_()
    out = integer_dropout(x, 0.1)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    _, scale = _dropped_and_scale(0.1)
    assert torch.equal(out[kept], (x[kept].float() * scale).to(torch.bfloat16))
    out.sum().backward()
    assert torch.equal(x.grad, torch.where(kept, torch.tensor(scale).to(torch.bfloat16), 0.0).to(torch.bfloat16))


def test_masks_follow_the_default_generator():
    x = torch.ones(3, 50, 16)
    torch.manual_seed(3)
    first, second = integer_dropout(x, 0.2), integer_dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(integer_dropout(x, 0.2), first)
    assert not torch.equal(first, second)


def test_off_in_eval_at_zero_and_torch_at_the_edges():
    x = torch.randn(10, 10)
    assert integer_dropout(x, 0.5, training=False) is x
    assert integer_dropout(x, 0.0) is x
    assert torch.equal(integer_dropout(x, 1.0), torch.zeros_like(x))


def _operators(model, ids, mask):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    return {event.key for event in prof.key_averages()}


def test_a_training_forward_under_the_switch_draws_no_bernoulli_sample_and_gets_torch_back_after():
    model = tiny_bert(layers=2, dropout=0.2).train()
    ids = torch.randint(1, 50, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    assert "aten::bernoulli_" in _operators(model, ids, mask)
    with attention_implementation(model, INTEGER_DROPOUT_ATTENTION), integer_dropout_forwards(plain_dropouts(model)):
        operators = _operators(model, ids, mask)
    assert "aten::bernoulli_" not in operators and "aten::random_" in operators
    assert "aten::bernoulli_" in _operators(model, ids, mask)
    with pytest.raises(RuntimeError), integer_dropout_forwards(plain_dropouts(model)):
        raise RuntimeError("a failed step")
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, nn.Dropout))


def test_the_switch_draws_masks_in_training_and_none_in_eval():
    model = tiny_bert(layers=2, dropout=0.3)
    ids = torch.randint(1, 50, (4, 9))
    mask = torch.ones_like(ids)
    with integer_dropout_forwards(plain_dropouts(model)), torch.no_grad():
        reference = model.eval()(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
        model.train()
        first = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.equal(first, model(input_ids=ids, attention_mask=mask).logits)
    assert not torch.allclose(first, reference)


def test_the_switch_leaves_disabled_in_place_and_subclassed_dropouts_alone():
    class Custom(nn.Dropout):
        pass

    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5, inplace=True), Custom(0.5))
    assert plain_dropouts(model) == (model[0],)
    with integer_dropout_forwards(plain_dropouts(model)):
        assert ["forward" in vars(m) for m in model] == [True, False, False]
    assert not any("forward" in vars(m) for m in model)
