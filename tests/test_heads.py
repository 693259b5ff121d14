"""Pooling heads: padding never reaches the logits, a saved head loads back as itself, multi-sample
dropout, checkpoint averaging, gradient checkpointing, and other encoder families."""

import json
import warnings

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, DebertaV2Config, DebertaV2Model,
                          ElectraConfig, ElectraModel, RobertaConfig, RobertaModel)

from lib.core.errors import UserError
from lib.finetune.trainer import train_new
from lib.loop.swa import average_checkpoints
from lib.model.backbone import load_classifier
from lib.model.heads import (DROPOUT_SAMPLES_KEY, POOLING_KEY, POOLINGS, ModelOwnHead, PooledClassifier, PooledHead,
                             head_for)
from tests.conftest import tiny_config

LABELS = ["neg", "mid", "pos"]
VOCAB = 50


def _bert_config(layers: int = 2, **extra) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, **extra)


def _save_backbone(folder, model_class, config, seed=0):
    """A "pretrained" encoder folder, saved as the hub keeps one (BertModel keeps its pooler)."""
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Encoder folders by layer count: 2 for every head, 4 for concat-last-4."""
    root = tmp_path_factory.mktemp("backbones")
    return {layers: _save_backbone(root / f"bert{layers}", BertModel, _bert_config(layers)) for layers in (2, 4)}


def _backbone_for(backbones, pooling):
    return backbones[4 if pooling == "concat-last-4" else 2]


def _load(folder, head=ModelOwnHead(), seed=0, dropout=None):
    torch.manual_seed(seed)
    return load_classifier(folder, len(LABELS), LABELS, dropout, head)


def _batch(seed=0, length=9, short=5):
    """Two rows: a full one, and one of `short` tokens padded with random (not pad) ids."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, short:] = 0
    return ids, mask


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_never_changes_the_output(backbones, pooling):
    model = _load(_backbone_for(backbones, pooling), head_for(pooling, 1)).eval()
    ids, mask = _batch()
    with torch.no_grad():
        padded = _logits(model, ids, mask)[1]
        alone = _logits(model, ids[1:, :5], mask[1:, :5])[0]
        other_pads = _logits(model, ids[1:].where(mask[1:].bool(), (ids[1:] + 1) % VOCAB), mask[1:])[0]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(other_pads, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_saved_head_loads_back_as_itself(backbones, tmp_path, pooling):
    model = _load(_backbone_for(backbones, pooling), head_for(pooling, 3), seed=1).eval()
    model.save_pretrained(tmp_path / "best")
    saved = json.loads((tmp_path / "best" / "config.json").read_text())
    assert (saved[POOLING_KEY], saved[DROPOUT_SAMPLES_KEY]) == (pooling, 3)
    other = "max" if pooling != "max" else "mean"
    ids, mask = _batch(seed=3)
    for head in (ModelOwnHead(), head_for(other, 1)):  # what prediction/resume pass, and a different head
        loaded = _load(tmp_path / "best", head, seed=99).eval()
        assert isinstance(loaded, PooledClassifier)
        assert (loaded.head.pooling, loaded.head.dropout_samples) == (pooling, 3)
        with torch.no_grad():
            assert torch.equal(_logits(loaded, ids, mask), _logits(model, ids, mask))


def test_new_head_keeps_the_encoder_weights_and_starts_from_the_seed(backbones, tmp_path):
    encoder = BertModel.from_pretrained(backbones[2]).state_dict()
    first, again, other = (_load(backbones[2], head_for("attention", 1), seed=s) for s in (5, 5, 6))
    for name, value in first.backbone.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    assert first.backbone.pooler is None  # unused by a pooling head (DDP would flag its parameters)
    heads = [dict(m.head.state_dict()) for m in (first, again, other)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not torch.equal(heads[0]["classifier.weight"], heads[2]["classifier.weight"])
    assert torch.count_nonzero(heads[0]["classifier.bias"]) == 0  # the model's initialiser: zero bias
    assert heads[0]["classifier.weight"].std() == pytest.approx(first.config.initializer_range, rel=0.5)
    # A scratch run's folder is a whole BertForSequenceClassification (weights under "bert."): same encoder.
    torch.manual_seed(0)
    whole = BertForSequenceClassification(_bert_config(num_labels=3))
    whole.save_pretrained(tmp_path / "scratch")
    on_scratch = _load(tmp_path / "scratch", head_for("mean", 1))
    for name, value in on_scratch.backbone.state_dict().items():
        assert torch.equal(value, whole.bert.state_dict()[name]), name


def test_grown_vocabulary_is_saved_and_loads_back(backbones, tmp_path):
    model = _load(backbones[2], head_for("mean", 1)).eval()
    model.resize_token_embeddings(VOCAB + 7)
    model.save_pretrained(tmp_path / "last")
    loaded = _load(tmp_path / "last").eval()
    assert loaded.get_input_embeddings().num_embeddings == loaded.config.vocab_size == VOCAB + 7
    ids = torch.tensor([[2, VOCAB + 3, VOCAB + 6, 3]])
    with torch.no_grad():
        assert torch.equal(_logits(loaded, ids, torch.ones_like(ids)), _logits(model, ids, torch.ones_like(ids)))


def _dropout_pair(tmp_path, samples):
    """The same weights with 1 and `samples` dropout masks; only the head drops (p=0.5) so that the
    encoder's output is the same in train and eval mode."""
    folder = _save_backbone(tmp_path / "enc", BertModel, _bert_config(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.5))
    single, multi = (_load(folder, head_for("mean", n), seed=2) for n in (1, samples))
    assert all(torch.equal(a, b) for a, b in zip(single.state_dict().values(), multi.state_dict().values()))
    return single, multi


def test_multi_sample_dropout_averages_the_masks_in_training_only(tmp_path):
    single, multi = _dropout_pair(tmp_path, samples=256)
    ids, mask = _batch(seed=4)
    with torch.no_grad():
        exact = _logits(single.eval(), ids, mask)
        assert torch.equal(_logits(multi.eval(), ids, mask), exact)  # eval: one pass, the same as N=1
        assert torch.equal(_logits(multi, ids, mask), exact)  # and deterministic
        single.train(), multi.train()
        one_mask, many_masks = [], []
        for seed in range(8):
            torch.manual_seed(seed)
            one_mask.append(_logits(single, ids, mask))
            torch.manual_seed(seed)
            many_masks.append(_logits(multi, ids, mask))
    assert not torch.allclose(one_mask[0], many_masks[0])
    # The mean over N masks is N times less noisy around the dropout-free logits than one mask.
    error = lambda draws: torch.stack([(d - exact).pow(2).mean() for d in draws]).mean()
    assert error(many_masks) < error(one_mask) / 20


def test_multi_sample_dropout_head_averages_its_own_masks(tmp_path):
    """The head's logits are the mean of its classifier over N independent masks."""
    _, multi = _dropout_pair(tmp_path, samples=3)
    head = multi.head.train()
    pooled = torch.randn(4, 16)
    torch.manual_seed(0)
    averaged = head(pooled)
    torch.manual_seed(0)
    masks = head.dropout(pooled.unsqueeze(0).expand(3, 4, 16))
    assert not torch.equal(masks[0], masks[1])  # the N masks differ
    torch.testing.assert_close(averaged, torch.stack([head.classifier(m) for m in masks]).mean(0))


def test_averaging_saved_pooled_checkpoints(backbones, tmp_path):
    folders = []
    for i, seed in enumerate((1, 2)):
        model = _load(backbones[2], head_for("weighted-layers", 2), seed=seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)  # the encoders differ too, as two epochs' would
        model.save_pretrained(tmp_path / f"epoch{i}")
        folders.append(tmp_path / f"epoch{i}")
    states = [dict(_load(f).named_parameters()) for f in folders]
    load = lambda folder: load_classifier(folder, len(LABELS), LABELS, None)
    averaged = average_checkpoints(folders, load)
    assert isinstance(averaged, PooledClassifier)
    for name, value in averaged.named_parameters():
        torch.testing.assert_close(value.detach(), (states[0][name] + states[1][name]).detach() / 2,
                                   rtol=0, atol=1e-6)
    averaged.save_pretrained(tmp_path / "swa")
    reloaded = load(tmp_path / "swa").eval()
    assert (reloaded.head.pooling, reloaded.head.dropout_samples) == ("weighted-layers", 2)
    ids, mask = _batch(seed=5)
    with torch.no_grad():
        assert torch.equal(_logits(reloaded, ids, mask), _logits(averaged.eval(), ids, mask))


def _gradients(model, ids, mask, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    torch.nn.functional.cross_entropy(_logits(model, ids, mask), torch.tensor([0, 2])).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", [head_for("weighted-layers", 2), ModelOwnHead()], ids=["weighted-layers", "model"])
def test_gradient_checkpointing_gives_the_same_gradients(backbones, head):
    model = _load(backbones[2], head, dropout=0.2).train()
    ids, mask = _batch(seed=6)
    plain = _gradients(model, ids, mask, seed=7)
    layer_calls = []
    model.base_model.encoder.layer[0].intermediate.register_forward_hook(lambda *_: layer_calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.24: an alias of activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    checkpointed = _gradients(model, ids, mask, seed=7)
    assert len(layer_calls) == 2  # recomputed in the backward pass: checkpointing is on
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-6)


FAMILIES = {
    "roberta": (RobertaModel, RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
                                            pad_token_id=1)),
    "electra": (ElectraModel, ElectraConfig(vocab_size=VOCAB, embedding_size=8, hidden_size=16, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)),
    "deberta-v2": (DebertaV2Model, DebertaV2Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   max_position_embeddings=32, relative_attention=True,
                                                   position_buckets=8, pos_att_type=["p2c", "c2p"])),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_other_encoder_families_with_mean_pooling(tmp_path, family):
    model_class, config = FAMILIES[family]
    folder = _save_backbone(tmp_path / family, model_class, config)
    model = _load(folder, head_for("mean", 2)).eval()
    assert type(model.backbone) is model_class
    # the encoder's own attention choice (BERT-likes: sdpa; DeBERTa-v2 has no sdpa), not the wrapper's
    assert model.config._attn_implementation == model_class.from_pretrained(folder).config._attn_implementation
    ids, mask = _batch(seed=8)
    with torch.no_grad():
        padded = _logits(model, ids, mask)
        alone = _logits(model, ids[1:, :5], mask[1:, :5])[0]
    torch.testing.assert_close(padded[1], alone, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path / "best")
    loaded = _load(tmp_path / "best").eval()
    with torch.no_grad():
        assert torch.equal(_logits(loaded, ids, mask), padded)


def test_attention_pooling_weights_sum_to_one_and_skip_padding(backbones):
    model = _load(backbones[2], head_for("attention", 1))
    hidden, (_, mask) = torch.randn(2, 9, 16), _batch()
    weights = model.head.attention.weights(hidden, mask.bool())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert torch.all(weights[1, 5:] == 0) and torch.all(weights[1, :5] > 0)


def test_weighted_layers_with_one_hot_weights_is_that_layers_cls(backbones):
    mixed, cls = (_load(backbones[2], head_for(p, 1)).eval() for p in ("weighted-layers", "cls"))
    with torch.no_grad():
        mixed.head.layer_mix.weight.copy_(torch.tensor([-float("inf"), -float("inf"), 0.0]))
        mixed.head.classifier.load_state_dict(cls.head.classifier.state_dict())
        ids, mask = _batch(seed=9)
        torch.testing.assert_close(_logits(mixed, ids, mask), _logits(cls, ids, mask), rtol=0, atol=1e-6)


def test_head_for_and_its_refusals(backbones):
    assert isinstance(head_for("model", 1), ModelOwnHead)
    assert head_for("max", 4) == PooledHead("max", 4)
    with pytest.raises(UserError, match="--multi-sample-dropout 2"):
        head_for("model", 2)
    with pytest.raises(UserError, match="--pooling sum"):
        head_for("sum", 1)
    with pytest.raises(UserError, match="--multi-sample-dropout 0"):
        head_for("mean", 0)
    with pytest.raises(UserError, match="at least 4"):
        _load(backbones[2], head_for("concat-last-4", 1))


def test_a_run_trains_and_saves_its_pooling_head(toy_data, tmp_path):
    run = train_new(tiny_config(toy_data, tmp_path, pooling="mean", multi_sample_dropout=2))
    assert json.loads(run.result.read_text())["best"]["accuracy"] > 0.8  # chance is 0.25
    saved = json.loads((run.best / "config.json").read_text())
    assert (saved[POOLING_KEY], saved[DROPOUT_SAMPLES_KEY]) == ("mean", 2)
    best = load_classifier(run.best, len(saved["id2label"]), list(saved["id2label"].values()), None)
    assert isinstance(best, PooledClassifier)
