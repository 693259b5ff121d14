"""Logits for prediction, computing only what the classifier reads.

A BERT classifier with its own head reads the last layer at the first ([CLS]) position only (the
pooler takes `hidden[:, 0]`). So in that layer only the [CLS] query needs attention, and only
its row needs the output projection and the feed-forward block: keys and values still come from
every position. This is the same arithmetic for the logits (equal to float rounding, tested) and
skips about five sixths of the last layer's work. Every other model, and any model in training
mode, runs its ordinary forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, PreTrainedModel


def classifier_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`model(input_ids, attention_mask).logits`, with the last layer at [CLS] only where that is exact."""
    if not _reads_only_cls(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    bert = model.bert
    layers, pooler = bert.encoder.layer, bert.pooler
    bert.encoder.layer, bert.pooler = layers[:-1], None  # every layer but the last, as the model runs them
    try:
        hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        bert.encoder.layer, bert.pooler = layers, pooler
    return model.classifier(model.dropout(pooler(_last_layer_at_cls(layers[-1], hidden, attention_mask))))


def _reads_only_cls(model: PreTrainedModel) -> bool:
    config = model.config
    return (type(model) is BertForSequenceClassification and not model.training and model.bert.pooler is not None
            and getattr(config, "position_embedding_type", "absolute") == "absolute" and not config.is_decoder
            and config.num_hidden_layers >= 1)


def _last_layer_at_cls(layer: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A BertLayer's output at position 0 only (rows x 1 x hidden), from the states of every position."""
    attention = layer.attention.self
    rows, width, heads = hidden.shape[0], hidden.shape[1], attention.num_attention_heads
    split = lambda x, length: x.view(rows, length, heads, attention.attention_head_size).transpose(1, 2)
    cls = hidden[:, :1]
    query = split(attention.query(cls), 1)
    key, value = split(attention.key(hidden), width), split(attention.value(hidden), width)
    mask = attention_mask[:, None, None, :].to(torch.bool)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attention.scaling)
    context = context.transpose(1, 2).reshape(rows, 1, -1).to(cls.dtype)
    attended = layer.attention.output(context, cls)
    return layer.output(layer.intermediate(attended), attended)
