"""Layer-wise learning-rate decay on tiny BERT, RoBERTa, ELECTRA and DeBERTa-v2 classifiers.

The expected rates come from parameter names (the rule of the research notes on LLRD), independently
of the structural layer finder under test.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from lib.core.errors import UserError
from lib.loop.layerwise import LayerwiseDecay
from lib.loop.optim import DecayByShape, build_adamw
from lib.loop.schedule import lr_multiplier, set_learning_rate
from tests.tiny_encoders import ARCHITECTURES, tiny_classifier

BASE_LR, HEAD_LR, DECAY, WEIGHT_DECAY = 1e-3, 5e-2, 0.8, 0.01
WARMUP, TOTAL = 4, 12

_LAYER = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
# The embedding level: the embeddings, ELECTRA's projection after them, DeBERTa's shared relative-position
# table with its LayerNorm, and DeBERTa's conv branch.
_EMBEDDING = re.compile(r"(^|\.)(embeddings|embeddings_project|encoder\.rel_embeddings|encoder\.LayerNorm|"
                        r"encoder\.conv)\.")
_HEAD = re.compile(r"(^|\.)(pooler|classifier)\.")


def expected_lr(name: str, depth: int, head_lr: float = BASE_LR, decay: float = DECAY) -> float:
    """lr = base * decay ** (depth - 1 - i) for encoder layer i, base * decay ** depth for the embedding level."""
    if match := _LAYER.search(name):
        return BASE_LR * decay ** (depth - 1 - int(match.group(2)))
    if _EMBEDDING.search(name):
        return BASE_LR * decay ** depth
    assert _HEAD.search(name), f"{name}: neither a layer, the embedding level nor the head"
    return head_lr


def _optimizer(model: torch.nn.Module, builder) -> torch.optim.AdamW:
    return build_adamw(model, builder, betas=(0.9, 0.999), eps=1e-8, fused=False)


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_trainable_parameter_is_in_exactly_one_group(architecture):
    model = tiny_classifier(architecture)
    frozen = model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    groups = LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY)(model)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # none twice, none left out
    assert id(frozen) not in grouped
    assert all(group["params"] for group in groups)


@pytest.mark.parametrize("architecture,layers", [(a, 3) for a in ARCHITECTURES] + [("bert", 12)])
def test_each_parameter_follows_the_formula_through_warmup_and_decay(architecture, layers):
    model = tiny_classifier(architecture, layers=layers)
    optimizer = _optimizer(model, LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY))
    group_of = _group_of(optimizer)
    for step in (0, WARMUP, TOTAL - 3):  # lr 0 in the first warmup step, the peak after it, then decaying
        multiplier = lr_multiplier("linear", step, WARMUP, TOTAL)
        set_learning_rate(optimizer, multiplier)
        for name, parameter in model.named_parameters():
            assert group_of[id(parameter)]["lr"] == pytest.approx(multiplier * expected_lr(name, layers),
                                                                  rel=1e-12, abs=0.0), (step, name)
    assert lr_multiplier("linear", 0, WARMUP, TOTAL) == 0.0
    if layers == 12:  # an unanchored "layer.1" would also catch layers 10 and 11
        rates = {int(_LAYER.search(n).group(2)): group_of[id(p)]["initial_lr"]
                 for n, p in model.named_parameters() if _LAYER.search(n)}
        assert rates[1] / rates[11] == pytest.approx(DECAY ** 10)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_head_learning_rate_overrides_the_head_only(architecture):
    model = tiny_classifier(architecture)
    group_of = _group_of(_optimizer(model, LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY, head_learning_rate=HEAD_LR)))
    heads = 0
    for name, parameter in model.named_parameters():
        assert group_of[id(parameter)]["initial_lr"] == pytest.approx(expected_lr(name, 3, head_lr=HEAD_LR)), name
        heads += bool(_HEAD.search(name))
    assert heads >= 2
    has_pooler = architecture in ("bert", "deberta-v2")
    pooler_rates = {group_of[id(p)]["initial_lr"] for n, p in model.named_parameters() if ".pooler." in f".{n}"}
    assert pooler_rates == ({HEAD_LR} if has_pooler else set())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_weight_decay_is_split_by_shape_as_decay_by_shape_splits_it(architecture):
    model = tiny_classifier(architecture)
    ours = _group_of(_optimizer(model, LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY)))
    reference = _group_of(_optimizer(model, DecayByShape(BASE_LR, WEIGHT_DECAY)))
    for name, parameter in model.named_parameters():
        assert ours[id(parameter)]["weight_decay"] == reference[id(parameter)]["weight_decay"], name
        assert ours[id(parameter)]["name"].endswith(" no_decay") == (parameter.ndim < 2), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decay_one_gives_every_group_the_base_rate(architecture):
    optimizer = _optimizer(tiny_classifier(architecture), LayerwiseDecay(BASE_LR, WEIGHT_DECAY, decay=1.0))
    assert {group["initial_lr"] for group in optimizer.param_groups} == {BASE_LR}


def test_groups_are_named_by_level_bottom_first_and_empty_ones_dropped():
    model = tiny_classifier("bert", layers=2)
    model.classifier.bias.requires_grad_(False)  # the head keeps one 1-D tensor: the pooler's bias
    model.bert.pooler.dense.bias.requires_grad_(False)  # now its no_decay group is empty
    names = [group["name"] for group in LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY)(model)]
    assert names == ["embeddings decay", "embeddings no_decay", "layer 0 decay", "layer 0 no_decay",
                     "layer 1 decay", "layer 1 no_decay", "head decay"]


@pytest.mark.parametrize("build", [
    lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32)),
    lambda: torch.nn.Linear(4, 2),
], ids=["distilbert", "linear"])
def test_a_model_without_the_layout_is_refused_in_one_line(build):
    model = build()
    with pytest.raises(UserError) as error:
        LayerwiseDecay(BASE_LR, WEIGHT_DECAY, DECAY)(model)
    message = str(error.value)
    assert "--layer-lr-decay" in message and type(model).__name__ in message and "\n" not in message
