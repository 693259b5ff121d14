"""Tiny random sequence classifiers of the four encoder families, for the layer-wise tests."""

from __future__ import annotations

import torch
from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          PreTrainedModel, RobertaConfig, RobertaForSequenceClassification)

ARCHITECTURES = ("bert", "roberta", "electra", "deberta-v2")


def tiny_classifier(architecture: str, layers: int = 3, seed: int = 0) -> PreTrainedModel:
    """A 16-wide classifier with `layers` encoder layers; each family with the parts that trip layer finders:
    ELECTRA-small's `embeddings_project` (embedding size below the hidden size), DeBERTa-v2's relative
    position table, its LayerNorm and the conv branch (as in deberta-v2-xlarge)."""
    sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=32, num_labels=3)
    if architecture == "bert":
        model_class, config = BertForSequenceClassification, BertConfig(**sizes)
    elif architecture == "roberta":
        model_class, config = RobertaForSequenceClassification, RobertaConfig(**sizes, pad_token_id=1)
    elif architecture == "electra":
        model_class, config = ElectraForSequenceClassification, ElectraConfig(**sizes, embedding_size=8)
    elif architecture == "deberta-v2":
        model_class, config = DebertaV2ForSequenceClassification, DebertaV2Config(
            **sizes, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm",
            pos_att_type=["p2c", "c2p"], conv_kernel_size=3)
    else:
        raise ValueError(architecture)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config)
