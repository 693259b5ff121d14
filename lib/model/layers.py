"""Where an encoder classifier keeps its parts: the encoder layers, the embedding level and the pooler.

Found from the module structure that BERT, RoBERTa, ELECTRA and DeBERTa-v2 share (`model.base_model`
with `embeddings` and `encoder.layer`, a ModuleList), not from name lists per architecture. Used by
the techniques that treat layers differently (layer-wise learning rates, re-initialising the top) and
by prediction, whose CPU batches are sized by the widest layer output.
"""

from __future__ import annotations

import torch

from lib.core.errors import UserError


def encoder_layers(model: torch.nn.Module, option: str) -> torch.nn.ModuleList:
    """The encoder's layers, bottom first; `option` names the flag that needs them in the error message."""
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(base, torch.nn.Module) or not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UserError(f"{option}: cannot find the encoder layers of {type(model).__name__} (expected "
                        "base_model.encoder.layer, as in BERT, RoBERTa, ELECTRA and DeBERTa-v2)")
    return layers


def embeddings(model: torch.nn.Module, option: str) -> torch.nn.Module:
    """The base model's embedding module (word, position and type embeddings with their LayerNorm)."""
    encoder_layers(model, option)
    found = getattr(model.base_model, "embeddings", None)
    if not isinstance(found, torch.nn.Module):
        raise UserError(f"{option}: cannot find the embeddings of {type(model).__name__} (expected "
                        "base_model.embeddings, as in BERT, RoBERTa, ELECTRA and DeBERTa-v2)")
    return found


def pooler(model: torch.nn.Module) -> torch.nn.Module | None:
    """The pooler over [CLS], if any: BERT's sits in the base model, DeBERTa's beside it; RoBERTa's and
    ELECTRA's classifiers have none (their dense layer is part of `classifier`)."""
    for owner in (getattr(model, "base_model", None), model):
        found = getattr(owner, "pooler", None)
        if isinstance(found, torch.nn.Module):
            return found
    return None


def embedding_level_parameters(model: torch.nn.Module, option: str) -> list[torch.nn.Parameter]:
    """The parameters of the embedding level, the lowest: the embeddings and whatever else of the base
    model is neither an encoder layer nor the pooler.

    Besides `base_model.embeddings` that is DeBERTa-v2's `encoder.rel_embeddings` and `encoder.LayerNorm`
    (and `encoder.conv` where `conv_kernel_size` > 0), and ELECTRA-small's `embeddings_project`. The
    relative-position table and its LayerNorm are an input shared by every layer, like the position
    embeddings of the other families, so they belong to the lowest level; giving them a layer's rate
    (or the head's, where a "neither embeddings nor a layer" rule would put them) would move the table
    that all layers read faster than the bottom layers. `embeddings_project` maps the embeddings to the
    hidden size before layer 0 and so is part of the embedding step. DeBERTa's `conv` branch is added
    to layer 0's output; it is one level below layer 0 here, which keeps a single structural rule.
    """
    embeddings(model, option)  # the layout check: a model without embeddings has no embedding level
    above = {id(p) for layer in encoder_layers(model, option) for p in layer.parameters()}
    top = pooler(model)
    if top is not None:
        above.update(id(p) for p in top.parameters())
    return [p for p in model.base_model.parameters() if id(p) not in above]


def widest_linear(model: torch.nn.Module) -> int:
    """The widest output of the model's linear layers: in an encoder the feed-forward block's inner width,
    the widest activation a token has (BERT-base: 3,072)."""
    return max((m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)), default=1)
