"""An encoder classifier's forward that computes only what its head reads, in training and prediction.

The heads of BERT, RoBERTa, XLM-R and ELECTRA for sequence classification read the last layer at
the first ([CLS] / <s>) position only (BERT's pooler and the others' classification heads take
`hidden[:, 0]`). So in that layer only the first query needs attention, and only its row needs
the output projection and the feed-forward block: keys and values still come from every position.
This is the same arithmetic for the logits and for every gradient (equal to float rounding,
tested) and skips about five sixths of the last layer's work: forward and backward in training
(bench/levers.py), the forward in prediction. In training the dropouts of that layer draw masks
for the first row only, the only row whose output is read. Every other model (DeBERTa's relative
attention, our pooling heads) runs its ordinary forward.

Prediction calls `classifier_logits`. Training steps call the model through its DDP or compile
wrapper, so `cls_only_forward` makes the model's own forward take this path while they run.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import (BertForSequenceClassification, ElectraForSequenceClassification, PreTrainedModel,
                          RobertaForSequenceClassification, XLMRobertaForSequenceClassification)
from transformers.modeling_outputs import SequenceClassifierOutput


def _bert_head(model: PreTrainedModel, pooler: torch.nn.Module, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(pooler(first)))


def _classification_head(model: PreTrainedModel, pooler: None, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(first)  # the head takes features[:, 0] itself


# The classifiers whose head reads the last layer at position 0 only, and how it turns that row into logits.
_HEADS = {BertForSequenceClassification: _bert_head, RobertaForSequenceClassification: _classification_head,
          XLMRobertaForSequenceClassification: _classification_head,
          ElectraForSequenceClassification: _classification_head}


def reads_only_cls(model: PreTrainedModel) -> bool:
    """Whether `model`'s own head reads nothing but the last layer at its first position."""
    config = model.config
    if type(model) not in _HEADS or config.is_decoder or config.num_hidden_layers < 1:
        return False
    has_pooler = getattr(model.base_model, "pooler", None) is not None
    return (getattr(config, "position_embedding_type", "absolute") == "absolute"
            and has_pooler == (type(model) is BertForSequenceClassification))


def classifier_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`model(input_ids, attention_mask).logits`, with the last layer at [CLS] only where that is exact."""
    if not reads_only_cls(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    base = model.base_model
    layers, pooler = base.encoder.layer, getattr(base, "pooler", None)
    base.encoder.layer = layers[:-1]  # every layer but the last, as the model runs them
    if pooler is not None:
        base.pooler = None
    try:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        base.encoder.layer = layers
        if pooler is not None:
            base.pooler = pooler
    return _HEADS[type(model)](model, pooler, _last_layer_at_cls(layers[-1], hidden, attention_mask))


@contextmanager
def cls_only_forward(model: PreTrainedModel) -> Iterator[None]:
    """While the block runs, `model(input_ids=..., attention_mask=...)` computes `classifier_logits`.

    For a call through a wrapper that calls the model itself (DistributedDataParallel must see the
    forward to sync the gradients). Any other argument falls back to the model's whole forward.
    """
    if not reads_only_cls(model):
        yield
        return
    model.forward = types.MethodType(_cls_only_forward, model)
    try:
        yield
    finally:
        del model.forward


def _cls_only_forward(model: PreTrainedModel, input_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
    if kwargs or input_ids is None or attention_mask is None:
        return type(model).forward(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return SequenceClassifierOutput(logits=classifier_logits(model, input_ids, attention_mask))


def _last_layer_at_cls(layer: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A BERT-style layer's output at position 0 only (rows x 1 x hidden), from the states of every position."""
    attention = layer.attention.self
    rows, width, heads = hidden.shape[0], hidden.shape[1], attention.num_attention_heads
    split = lambda x, length: x.view(rows, length, heads, attention.attention_head_size).transpose(1, 2)
    cls = hidden[:, :1]
    query = split(attention.query(cls), 1)
    key, value = split(attention.key(hidden), width), split(attention.value(hidden), width)
    mask = attention_mask[:, None, None, :].to(torch.bool)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attention.scaling,
                                             dropout_p=attention.dropout.p if attention.training else 0.0)
    context = context.transpose(1, 2).reshape(rows, 1, -1).to(cls.dtype)
    attended = layer.attention.output(context, cls)
    return layer.output(layer.intermediate(attended), attended)
