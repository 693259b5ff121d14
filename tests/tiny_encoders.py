"""Tiny random models and token ids for tests: classifiers of the four encoder families, and a small BERT."""

from __future__ import annotations

import numpy as np
import torch
from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          PreTrainedModel, RobertaConfig, RobertaForSequenceClassification)

from lib.data.batching import EncodedTexts

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


def tiny_bert(seed: int = 0, layers: int = 1, dropout: float = 0.0) -> BertForSequenceClassification:
    """A 16-wide, 3-class BERT; seeds the global generator first, as the tests that use it expect."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, max_position_embeddings=32)
    return BertForSequenceClassification(config)


def random_encoded(n: int = 11, seed: int = 0, soft: bool = False) -> EncodedTexts:
    """`n` rows of 3 to 11 random token ids with labels (and class-probability targets if `soft`)."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 50, size=rng.integers(3, 12)).astype(np.int32) for _ in range(n)]
    targets = rng.dirichlet(np.ones(3), size=n).astype(np.float32) if soft else None
    return EncodedTexts(ids, rng.integers(0, 3, size=n), pad_token_id=0, targets=targets)
