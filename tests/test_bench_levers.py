"""bench/levers.py: each lever's alternative computes what it claims, and the whole script runs."""

import re

import numpy as np
import pytest
import torch

from bench import levers
from lib.core.cli import run_cli
from lib.data.batching import EncodedTexts, collate, training_batches
from tests.tiny_encoders import tiny_bert


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_a_bucket_padded_batch_has_a_bucket_width_and_the_same_logits():
    rng = np.random.default_rng(1)
    data = EncodedTexts([rng.integers(5, 30, size=n).astype(np.int32) for n in (7, 19, 23)], np.array([0, 1, 2]), 0, 1)
    batch = collate(data, np.arange(3))
    padded = levers._bucket_padded(batch, [16, 32, 64], pad_token_id=0)
    assert padded["input_ids"].shape == (3, 32) and padded["attention_mask"][:, 23:].sum() == 0
    model = tiny_bert(layers=2).eval()
    with torch.no_grad():
        exact = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        bucketed = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    torch.testing.assert_close(bucketed, exact, rtol=1e-5, atol=1e-5)


def test_rand_dropout_keeps_the_expectation_zeroes_a_fraction_p_and_is_off_in_eval():
    torch.manual_seed(0)
    dropout = levers.RandDropout(0.25).train()
    x = torch.ones(400, 500)
    y = dropout(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout.eval()(x), x)


def test_grouping_with_no_megabatch_is_the_plain_shuffled_order():
    lengths = np.random.default_rng(2).integers(3, 90, size=300)
    plain = training_batches(lengths, 16, 5, 0, False)
    assert [b.tolist() for b in levers._grouped(lengths, 16, 5, 0)] == [b.tolist() for b in plain]
    whole = levers._grouped(lengths, 16, 5, -(-300 // 16))  # one megabatch: every batch is a run of sorted rows
    widths = sorted(lengths, reverse=True)
    assert sorted(int(lengths[b].max()) for b in whole) == sorted(int(widths[i]) for i in range(0, 300, 16))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_the_script_measures_its_levers_on_a_small_file(toy_data, capsys):
    argv = ["--quick", "--train-file", str(toy_data["train"]), "--val-size", "0.2", "--rows", "300",
            "--batch-size", "4", "--token-budgets", "512",
            "--levers", "order,dropout,mlm-attention,predict-precision,predict-batching,native-layer,cls,ema,fixed"]
    assert run_cli(levers.main, argv) == 0
    printed = capsys.readouterr().out
    for line in ("shuffled batch order (ours)", "masks from rand_like >= p", "bf16 weights", "or 512 tokens",
                 "nn.TransformerEncoderLayer, nested tensors", "training, last layer at [CLS] only (ours)",
                 "pretraining, eager", "EMA, a lerp per tensor"):
        assert line in printed
    assert "argmax agrees with fp32 on 1.0000" in printed  # fp32 against itself
    assert re.search(r"whole steps, real batches \(ours\) +[\d.]+ ms/step +100\.0% of a real step", printed)
    assert "forward and backward, 1 row x 4 tokens" in printed


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("nested", [False, True])
def test_pytorchs_own_encoder_layers_with_the_models_weights_compute_its_hidden_states(nested):
    model = tiny_bert(layers=2).eval()
    ids = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:], mask[2, 2:] = 0, 0
    encoder = levers._native_encoder(model, nested)
    with torch.inference_mode():
        expected = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = encoder(model.bert.embeddings(input_ids=ids), src_key_padding_mask=~mask.bool())
        if hidden.is_nested:
            hidden = hidden.to_padded_tensor(0.0, expected.shape)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], expected[real], rtol=1e-5, atol=1e-5)


def test_the_per_tensor_ema_of_the_ema_lever_is_the_products_average():
    model, other = tiny_bert(layers=2), tiny_bert(layers=2)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    ours, per_tensor = levers.EMA(0.9), levers.PerTensorEMA(0.9)
    for weights in (model, other, model):
        ours.after_step(weights, 0)
        per_tensor.after_step(weights, 0)
    for a, b in zip(ours.averaged().state_dict().values(), per_tensor.averaged().state_dict().values()):
        assert torch.equal(a, b)
