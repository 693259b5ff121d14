"""EMA of the weights: the closed-form average of a toy weight sequence, its warm-up, and an exact resume."""

import pytest
import torch

from lib.loop.averaging import EMA


def _model(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(-value)
    return layer


def _closed_form(values, decays):
    """e_0 = w_0; e_n = d_n e_{n-1} + (1 - d_n) w_n, written as a weighted sum of the w_n."""
    weights = []
    for n in range(len(values)):
        share = 1.0 - decays[n] if n else 1.0
        for later in range(n + 1, len(values)):
            share *= decays[later]
        weights.append(share)
    return sum(w * v for w, v in zip(weights, values))


@pytest.mark.parametrize("warmup", [True, False])
def test_the_average_equals_its_closed_form(warmup):
    values = [0.0, 1.0, 3.0, -2.0, 5.0, 4.0]
    ema = EMA(0.9, warmup=warmup)
    for step, value in enumerate(values, start=1):
        ema.after_step(_model(value), step)
    decays = [ema.decay_at(n) for n in range(len(values))]
    expected = _closed_form(values, decays)
    torch.testing.assert_close(ema.averaged().weight, torch.full((1, 2), expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.averaged().bias, torch.full((1,), -expected), rtol=0, atol=1e-6)
    assert ema.state_dict() == {"updates": len(values)}


def test_the_warmup_starts_at_zero_and_never_exceeds_the_decay():
    ema = EMA(0.999)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(1) == pytest.approx(1 - 2 ** (-2 / 3))
    assert all(ema.decay_at(n) <= 0.999 for n in range(0, 200000, 997))
    assert ema.decay_at(10 ** 6) == 0.999
    assert EMA(0.9, warmup=False).decay_at(5) == 0.9


def test_a_restored_average_continues_exactly(tmp_path):
    values = [0.5, 1.5, -1.0, 2.0, 0.25]
    straight = EMA(0.8)
    for step, value in enumerate(values, 1):
        straight.after_step(_model(value), step)

    first = EMA(0.8)
    for step, value in enumerate(values[:3], 1):
        first.after_step(_model(value), step)
    saved = {name: tensor.clone() for name, tensor in first.averaged().state_dict().items()}
    resumed = EMA(0.8)

    def load(_path):
        model = _model(0.0)
        model.load_state_dict(saved)
        return model

    resumed.restore(first.state_dict(), tmp_path, load)
    for step, value in enumerate(values[3:], 4):
        resumed.after_step(_model(value), step)
    for a, b in zip(straight.averaged().parameters(), resumed.averaged().parameters()):
        assert torch.equal(a, b)


def test_float_buffers_are_averaged_and_integer_buffers_copied():
    """The average covers parameters and float buffers; ids and counters are taken as they are."""
    layer = _model(0.0)
    layer.register_buffer("scale", torch.zeros(1))
    layer.register_buffer("position_ids", torch.zeros(3, dtype=torch.long))
    ema = EMA(0.5, warmup=False)
    for value in (0.0, 4.0):
        layer.weight.data.fill_(value)
        layer.scale.fill_(value)
        layer.position_ids.fill_(int(value))
        ema.after_step(layer, 1)
    torch.testing.assert_close(ema.averaged().weight, torch.full((1, 2), 2.0))  # 0.5 * 0 + 0.5 * 4
    torch.testing.assert_close(ema.averaged().scale, torch.full((1,), 2.0))
    assert ema.averaged().position_ids.tolist() == [4, 4, 4]
