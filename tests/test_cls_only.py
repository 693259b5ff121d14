"""Computing the last layer at [CLS] only gives the logits and the gradients of the full forward."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lib.core.device import autocast
from lib.finetune import trainer
from lib.finetune.trainer import train_new
from lib.loop.step import accumulate_window
from lib.model.cls_only import classifier_logits, cls_only_forward
from lib.model.heads import POOLING_KEY, PooledClassifier
from tests.conftest import tiny_config
from tests.tiny_encoders import ARCHITECTURES, tiny_classifier


def _bert(layers: int, attention: str = "sdpa", **dropouts: float) -> BertForSequenceClassification:
    torch.manual_seed(layers)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, num_labels=4, max_position_embeddings=40, attn_implementation=attention,
                        **dropouts)
    return BertForSequenceClassification(config).eval()


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _batch(rows: int = 6, width: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 60, (rows, width), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, length in enumerate([13, 9, 2, 13, 5, 1][:rows]):
        mask[row, length:] = 0
    return ids * mask, mask


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


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


@pytest.mark.parametrize("architecture", ["bert", "roberta", "electra"])
def test_each_family_whose_head_reads_cls_gets_the_logits_and_gradients_of_its_whole_forward(architecture):
    model = tiny_classifier(architecture).eval()  # dropout off: the two passes must see the same network
    ids, mask = _batch()
    ids = torch.where(mask.bool(), ids % model.config.vocab_size, model.config.pad_token_id)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    full = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(full, labels).backward()
    full_gradients = _gradients(model)
    calls = _last_layer_calls(model)
    fast = classifier_logits(model, ids, mask)
    torch.nn.functional.cross_entropy(fast, labels).backward()
    assert calls == []
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    fast_gradients = _gradients(model)
    assert fast_gradients.keys() == full_gradients.keys()
    for name in full_gradients:
        torch.testing.assert_close(fast_gradients[name], full_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a not in ("bert", "roberta", "electra")])
def test_other_architectures_run_their_whole_forward(architecture):
    model = tiny_classifier(architecture).eval()
    ids, mask = _batch()
    ids = ids % model.config.vocab_size
    with torch.inference_mode():
        calls = _last_layer_calls(model)
        torch.testing.assert_close(classifier_logits(model, ids, mask), model(input_ids=ids, attention_mask=mask).logits)
    assert len(calls) == 2


def test_a_pooling_head_runs_its_whole_forward():
    ids, mask = _batch()
    config = _bert(2).config
    setattr(config, POOLING_KEY, "cls")  # reads [CLS] too, but through our own head: not this fast path
    pooled = PooledClassifier(config).eval()
    calls = _last_layer_calls(pooled)
    with torch.inference_mode():
        torch.testing.assert_close(classifier_logits(pooled, ids, mask), pooled(input_ids=ids, attention_mask=mask).logits)
        with cls_only_forward(pooled):
            pooled(input_ids=ids, attention_mask=mask)
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_in_training_every_gradient_equals_the_full_forwards(layers, attention):
    model = _bert(layers, attention, **NO_DROPOUT).train()
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
    full = _gradients(model)
    calls = _last_layer_calls(model)
    with cls_only_forward(model):
        torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
    fast = _gradients(model)
    assert calls == [] and fast.keys() == full.keys() == {n for n, p in model.named_parameters()}
    for name in full:
        torch.testing.assert_close(fast[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_in_training_the_cls_rows_attention_dropout_is_drawn():
    model = _bert(1, **{**NO_DROPOUT, "attention_probs_dropout_prob": 0.5})  # the last layer is the only one
    ids, mask = _batch()
    with torch.no_grad():
        evaluated = [classifier_logits(model, ids, mask) for _ in range(2)]
        model.train()
        trained = [classifier_logits(model, ids, mask) for _ in range(2)]
    torch.testing.assert_close(evaluated[0], evaluated[1], rtol=0, atol=0)
    assert not torch.allclose(trained[0], trained[1])


def test_the_forward_takes_the_path_only_inside_the_block_and_falls_back_for_other_arguments():
    model = _bert(2, **NO_DROPOUT).train()
    ids, mask = _batch()
    calls = _last_layer_calls(model)
    with torch.no_grad():
        with cls_only_forward(model):
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                       classifier_logits(model, ids, mask), rtol=0, atol=0)
            assert calls == []
            model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
            assert calls == [1]
        model(input_ids=ids, attention_mask=mask)
        assert calls == [1, 1]
        with pytest.raises(RuntimeError), cls_only_forward(model):
            raise RuntimeError("a failing step")
    assert "forward" not in vars(model)  # the class's own forward again


def test_a_runs_training_steps_never_run_the_last_layer_whole(toy_data, tmp_path, monkeypatch):
    whole_layer_calls, steps = [], []

    def recorded(model, *args, **kwargs):
        plain = getattr(model, "module", model)
        if not steps:
            plain.bert.encoder.layer[-1].register_forward_hook(lambda *a: whole_layer_calls.append(1))
        steps.append("forward" in vars(plain))
        return accumulate_window(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "accumulate_window", recorded)
    train_new(tiny_config(toy_data, tmp_path, num_train_epochs=1.0))
    assert steps and all(steps) and whole_layer_calls == []  # evaluation and prediction take the path too
