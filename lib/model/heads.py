"""Classification heads: the extension point that builds the sequence classifier on a backbone.

Whatever builds a classifier (a new run, a resume, prediction, averaging, ensembles) goes through
`lib.model.backbone.load_classifier`, which asks a head for the model. The model's own head
(`AutoModelForSequenceClassification`: [CLS] pooling on BERT) keeps a run folder loadable by
`from_pretrained` alone; other pooling heads implement the same two-line interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel


class ClassifierHead(Protocol):
    def from_pretrained(self, name_or_path: str | Path, config: PretrainedConfig) -> PreTrainedModel:
        """The classifier with this head on the backbone at `name_or_path` (a new head starts from the seed)."""


class ModelOwnHead:
    """The head the model's architecture defines for sequence classification."""

    def from_pretrained(self, name_or_path: str | Path, config: PretrainedConfig) -> PreTrainedModel:
        # A checkpoint fine-tuned on another label set has a head of another size: re-initialise it.
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config,
                                                                  ignore_mismatched_sizes=True)
