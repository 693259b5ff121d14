"""Prediction that computes the last layer at [CLS] only gives the logits of the full forward."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lib.core.device import autocast
from lib.model.heads import POOLING_KEY, PooledClassifier
from lib.model.inference import classifier_logits
from tests.tiny_encoders import ARCHITECTURES, tiny_classifier


def _bert(layers: int, attention: str = "sdpa") -> BertForSequenceClassification:
    torch.manual_seed(layers)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, num_labels=4, max_position_embeddings=40, attn_implementation=attention)
    return BertForSequenceClassification(config).eval()


def _batch(rows: int = 6, width: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 60, (rows, width), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in enumerate([13, 9, 2, 13, 5, 1][:rows]):
        mask[row, length:] = 0
    return ids * mask, mask


def _last_layer_calls(model) -> list:
    calls = []
    model.base_model.encoder.layer[-1].register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_logits_equal_the_full_forward_and_the_last_layer_runs_only_at_cls(layers, attention):
    model = _bert(layers, attention)
    ids, mask = _batch()
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask).logits
        calls = _last_layer_calls(model)
        fast = classifier_logits(model, ids, mask)
    assert calls == []  # the model's own last layer (every position) never ran
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert len(model.bert.encoder.layer) == layers and model.bert.pooler is not None  # the model is whole again


def test_padding_never_changes_a_rows_logits():
    model = _bert(2)
    ids, mask = _batch()
    wider_ids, wider_mask = (torch.nn.functional.pad(t, (0, 7)) for t in (ids, mask))
    with torch.inference_mode():
        torch.testing.assert_close(classifier_logits(model, wider_ids, wider_mask), classifier_logits(model, ids, mask),
                                   rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_the_logits_stay_close_to_the_full_forward():
    model = _bert(2)
    ids, mask = _batch()
    with torch.inference_mode(), autocast("bf16", torch.device("cpu")):
        full = model(input_ids=ids, attention_mask=mask).logits.float()
        fast = classifier_logits(model, ids, mask).float()
    torch.testing.assert_close(fast, full, rtol=0, atol=3e-2)


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a != "bert"])
def test_other_architectures_run_their_whole_forward(architecture):
    model = tiny_classifier(architecture).eval()
    ids, mask = _batch()
    ids = ids % model.config.vocab_size
    with torch.inference_mode():
        calls = _last_layer_calls(model)
        torch.testing.assert_close(classifier_logits(model, ids, mask), model(input_ids=ids, attention_mask=mask).logits)
    assert len(calls) == 2


def test_a_model_in_training_mode_or_with_a_pooling_head_runs_its_whole_forward():
    ids, mask = _batch()
    model = _bert(2).train()
    calls = _last_layer_calls(model)
    classifier_logits(model, ids, mask)
    assert calls == [1]
    config = _bert(2).config
    setattr(config, POOLING_KEY, "cls")  # reads [CLS] too, but through our own head: not this fast path
    pooled = PooledClassifier(config).eval()
    calls = _last_layer_calls(pooled)
    with torch.inference_mode():
        torch.testing.assert_close(classifier_logits(pooled, ids, mask), pooled(input_ids=ids, attention_mask=mask).logits)
    assert calls == [1, 1]
