"""The masked-language model: loading it whole (pooler kept), building a scratch one, and its forward
pass restricted to the masked positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModel, AutoModelForMaskedLM, BertForMaskedLM, BertModel, PreTrainedModel,
                          PreTrainedTokenizerBase)

from lib.core.device import to_device
from lib.core.errors import UserError
from lib.data.mlm import IGNORE_INDEX
from lib.model.backbone import ScratchPreset, scratch_config


def load_mlm_model(name_or_path: str | Path) -> PreTrainedModel:
    """A masked-LM model, in fp32 whatever the checkpoint's dtype, with the pooler kept (see `_keep_pooler`)."""
    try:
        model = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32)
        encoder = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--init {name_or_path}: cannot load it as a masked-language model ({first_line})") from None
    _keep_pooler(model, encoder)
    return model


def scratch_mlm_model(preset: ScratchPreset, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A BERT of `preset`, shaped as the scratch classifiers are, with an MLM head (weights from the global seed)."""
    config = scratch_config(preset, tokenizer)
    model = BertForMaskedLM(config)
    _keep_pooler(model, BertModel(config))
    return model


def _keep_pooler(model: PreTrainedModel, encoder: PreTrainedModel) -> None:
    """Give the MLM model the pooling layer its class drops (BERT's), frozen, so the folder is a whole encoder.

    Sequence classification reads the pooler: without it in the folder, `from_pretrained` would
    initialise it along with the classifier. MLM gives it no gradient, so it keeps the values of its
    source: the --init checkpoint's (trained by next-sentence prediction in BERT) or its initial ones.
    """
    pooler = getattr(encoder, "pooler", None)
    if getattr(model.base_model, "pooler", False) is None and pooler is not None:
        model.base_model.pooler = pooler.requires_grad_(False)


def _prediction_head(model: PreTrainedModel) -> torch.nn.Module | None:
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def masked_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary logits and labels at the masked positions only.

    The vocabulary projection is most of a small model's cost (hidden 128 x 12000 words against two
    layers of 128 x 512), and only ~15% of positions have a label, so the encoder's hidden states are
    gathered first and the prediction head runs on those rows: 3.8x the tokens/s of the full
    forward on the tiny preset (one CPU thread, batch 32 x 128). Models whose head is not a `cls` or
    `lm_head` module (BERT, RoBERTa families) take the full forward. Positions are found on the CPU
    labels, so a GPU never waits for a host sync here.
    """
    flat = to_device(torch.nonzero(batch["labels"].flatten() != IGNORE_INDEX).squeeze(1), device)
    labels = to_device(batch["labels"].flatten(), device).index_select(0, flat)
    inputs = {"input_ids": to_device(batch["input_ids"], device),
              "attention_mask": to_device(batch["attention_mask"], device)}
    head = _prediction_head(model)
    if head is None:
        return model(**inputs).logits.flatten(0, 1).index_select(0, flat), labels
    hidden = model.base_model(**inputs).last_hidden_state
    return head(hidden.flatten(0, 1).index_select(0, flat)), labels


class MaskedPositions(torch.nn.Module):
    """`masked_logits` as a module's forward, so DistributedDataParallel sees (and syncs) the whole pass."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_logits(self.model, batch, device)
