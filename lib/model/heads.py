"""Classification heads: the extension point that builds the sequence classifier on a backbone.

Whatever builds a classifier (a new run, a resume, prediction, averaging, ensembles) goes through
`lib.model.backbone.load_classifier`, which asks a head for the model. The model's own head
(`AutoModelForSequenceClassification`: [CLS] pooling on BERT) keeps a run folder loadable by
`from_pretrained` alone; other pooling heads implement the same two-line interface.

The pooling heads (`--pooling cls|mean|max|attention|weighted-layers|concat-last-4`, with
`--multi-sample-dropout N`) are one model class, `PooledClassifier`: the architecture's bare encoder
(`AutoModel`) under `backbone`, and a small `head` module. The pooling name and the number of
dropout samples live in the model config (`POOLING_KEY`, `DROPOUT_SAMPLES_KEY`), so
`save_pretrained` writes them and `saved_head` reads them back: a folder saved from a
`PooledClassifier` loads back through `load_classifier` with the same head, whatever head the caller
asked for. `AutoModelForSequenceClassification.from_pretrained` cannot load such a folder (it would
build the model's own head and miss every weight under `backbone.`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (MODEL_MAPPING, AutoModel, AutoModelForSequenceClassification, PretrainedConfig,
                          PreTrainedModel)
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput

from lib.core.errors import UserError

# Config keys of a PooledClassifier; their presence is what marks a folder as one.
POOLING_KEY = "textclf_pooling"
DROPOUT_SAMPLES_KEY = "textclf_dropout_samples"
MODEL_POOLING = "model"  # the architecture's own head
POOLINGS = ("cls", "mean", "max", "attention", "weighted-layers", "concat-last-4")
CONCAT_LAYERS = 4
# Where the families keep the dropout before their classifier, in order of precedence.
_HEAD_DROPOUT_KEYS = ("classifier_dropout", "hidden_dropout_prob", "hidden_dropout", "dropout")


class ClassifierHead(Protocol):
    def from_pretrained(self, name_or_path: str | Path, config: PretrainedConfig) -> PreTrainedModel:
        """The classifier with this head on the backbone at `name_or_path` (a new head starts from the seed)."""


class ModelOwnHead:
    """The head the model's architecture defines for sequence classification."""

    def from_pretrained(self, name_or_path: str | Path, config: PretrainedConfig) -> PreTrainedModel:
        # A checkpoint fine-tuned on another label set has a head of another size: re-initialise it.
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config,
                                                                  ignore_mismatched_sizes=True)


@dataclass(frozen=True)
class PooledHead:
    """A `PooledClassifier` with `pooling` over the backbone and `dropout_samples` dropout masks.

    On a plain backbone (a hub id, a scratch folder, an MLM-pretrained folder) the encoder weights
    are loaded and the head starts from the global generator, through the model's own initialiser.
    On a folder saved from a PooledClassifier the whole model is loaded; head weights whose shape
    no longer fits (another label set, another pooling) start afresh, like `ModelOwnHead`'s.
    """

    pooling: str
    dropout_samples: int = 1

    def __post_init__(self) -> None:
        check_pooling(self.pooling, self.dropout_samples)

    def from_pretrained(self, name_or_path: str | Path, config: PretrainedConfig) -> PreTrainedModel:
        saved_pooled = getattr(config, POOLING_KEY, None) is not None
        config = copy.deepcopy(config)  # the caller's config stays as it was
        setattr(config, POOLING_KEY, self.pooling)
        setattr(config, DROPOUT_SAMPLES_KEY, self.dropout_samples)
        # fp32 whatever the checkpoint's dtype: the new head is built in fp32 and both must match.
        if saved_pooled:
            return PooledClassifier.from_pretrained(name_or_path, config=config, dtype=torch.float32,
                                                    ignore_mismatched_sizes=True)
        backbone = AutoModel.from_pretrained(name_or_path, config=config, dtype=torch.float32,
                                             **_backbone_kwargs(config))
        # `from_pretrained` copied the config; the classifier shares the backbone's copy.
        return PooledClassifier(backbone.config, backbone=backbone)


def check_pooling(pooling: str, dropout_samples: int) -> None:
    """Refuse an unknown pooling name or a sample count below 1, naming the flag."""
    if pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling}: expected {MODEL_POOLING} or one of {', '.join(POOLINGS)}")
    if dropout_samples < 1:
        raise UserError(f"--multi-sample-dropout {dropout_samples}: expected at least 1")


def head_for(pooling: str, dropout_samples: int) -> ClassifierHead:
    """The head that `--pooling` and `--multi-sample-dropout` ask for.

    The model's own heads keep their dropout inside the architecture's classifier module (BERT:
    dropout then Linear; RoBERTa/ELECTRA: dropout, dense, tanh, dropout, Linear), so several masks
    cannot be drawn there without rewriting each family's head: multi-sample dropout is refused with
    `--pooling model`; `--pooling cls` is the pooler-free [CLS] head that supports it.
    """
    if pooling == MODEL_POOLING:
        if dropout_samples != 1:
            raise UserError(f"--multi-sample-dropout {dropout_samples}: needs a pooling head "
                            f"(--pooling {' | '.join(POOLINGS)}); the model's own head draws one dropout mask")
        return ModelOwnHead()
    return PooledHead(pooling, dropout_samples)


def saved_head(config: PretrainedConfig) -> PooledHead | None:
    """The head a folder was saved with, read from its config; None for a model's own head."""
    pooling = getattr(config, POOLING_KEY, None)
    if pooling is None:
        return None
    return PooledHead(pooling, int(getattr(config, DROPOUT_SAMPLES_KEY, 1)))


def _backbone_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"no bare encoder (AutoModel) for model type {config.model_type!r}") from None


def _backbone_kwargs(config: PretrainedConfig) -> dict:
    # BERT's and RoBERTa's pooler would sit unused (and DDP would report its unused parameters).
    parameters = inspect.signature(_backbone_class(config).__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in parameters else {}


def head_dropout(config: PretrainedConfig) -> float:
    """The dropout before the classifier: `classifier_dropout` where set, else the hidden dropout."""
    for key in _HEAD_DROPOUT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise ValueError(f"model type {config.model_type!r} has none of the dropout settings "
                     f"{', '.join(_HEAD_DROPOUT_KEYS)}")


class LayerMix(nn.Module):
    """Softmax-weighted sum over layers; zero logits (the initial state) give the plain mean."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_layers))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:  # (layers, batch, hidden)
        weights = torch.softmax(self.weight.float(), dim=0).to(stacked.dtype)
        return torch.einsum("l,lbh->bh", weights, stacked)


class AttentionPooling(nn.Module):
    """softmax_t(v·tanh(W·h_t)) over the real tokens, then the weighted sum of h_t."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def weights(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) weights that sum to 1 per row and are exactly 0 on padding."""
        scores = self.score(torch.tanh(self.dense(hidden))).squeeze(-1)
        # finfo.min rather than -inf: a row is never all padding ([CLS]), but -inf - -inf would be NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores.float(), dim=-1).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bt,bth->bh", self.weights(hidden, mask), hidden)


class PoolingHead(nn.Module):
    """Pool the encoder's states into one vector per text, then dropout and a linear classifier.

    With `dropout_samples` N > 1 in training, N dropout masks are drawn on the pooled vector and the
    classifier's logits averaged over them (Inoue 2019, with the logits averaged as common Kaggle
    code does rather than the losses); in eval dropout is off, so the head is one ordinary pass.
    """

    def __init__(self, config: PretrainedConfig, pooling: str, dropout_samples: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.pooling = pooling
        self.dropout_samples = dropout_samples
        features = hidden
        if pooling == "attention":
            self.attention = AttentionPooling(hidden)
        elif pooling == "weighted-layers":
            self.layer_mix = LayerMix(config.num_hidden_layers + 1)  # the embeddings' output and every layer
        elif pooling == "concat-last-4":
            if config.num_hidden_layers < CONCAT_LAYERS:
                raise UserError(f"--pooling concat-last-4: the model has {config.num_hidden_layers} layers; "
                                f"it needs at least {CONCAT_LAYERS}")
            features = CONCAT_LAYERS * hidden
        self.dropout = nn.Dropout(head_dropout(config))
        self.classifier = nn.Linear(features, config.num_labels)

    @property
    def needs_all_layers(self) -> bool:
        return self.pooling in ("weighted-layers", "concat-last-4")

    def pool(self, last: torch.Tensor, layers: tuple[torch.Tensor, ...] | None, mask: torch.Tensor) -> torch.Tensor:
        """One vector per row from the last hidden states (batch, tokens, hidden), every layer's
        states (`layers`, for the layer poolings) and the boolean attention mask (batch, tokens)."""
        if self.pooling == "cls":
            return last[:, 0]
        if self.pooling == "mean":
            weights = mask.to(last.dtype).unsqueeze(-1)
            return (last * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.pooling == "max":
            # Out of place, and the dtype's own minimum (a literal -1e9 overflows fp16).
            return last.masked_fill(~mask.unsqueeze(-1), torch.finfo(last.dtype).min).max(1).values
        if self.pooling == "attention":
            return self.attention(last, mask)
        if self.pooling == "weighted-layers":
            return self.layer_mix(torch.stack([states[:, 0] for states in layers]))
        return torch.cat([states[:, 0] for states in layers[-CONCAT_LAYERS:]], dim=-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_samples > 1:
            # One draw of N masks; the classifier is shared, its logits averaged over the masks.
            samples = pooled.unsqueeze(0).expand(self.dropout_samples, *pooled.shape)
            return self.classifier(self.dropout(samples)).mean(0)
        return self.classifier(self.dropout(pooled))


class PooledClassifier(PreTrainedModel):
    """A sequence classifier: the architecture's bare encoder (`backbone`) under a `PoolingHead`.

    The pooling and the dropout samples are read from the config (`POOLING_KEY`,
    `DROPOUT_SAMPLES_KEY`); the backbone shares the config object, so a dropout override, a grown
    vocabulary or the label maps are saved once. Build a new one on loaded encoder weights with
    `PooledHead`; load a saved one with `PooledClassifier.from_pretrained(folder, config=...)` (or
    `load_classifier`, which does that when the folder's config says so).
    """

    base_model_prefix = "backbone"
    # The backbone resolves the attention implementation first (see __init__); the outer class accepts
    # whatever it chose rather than falling back to eager for its own sake.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: PretrainedConfig, backbone: PreTrainedModel | None = None) -> None:
        pooling = getattr(config, POOLING_KEY, None)
        samples = int(getattr(config, DROPOUT_SAMPLES_KEY, 1))
        if pooling is None:
            raise ValueError(f"a PooledClassifier's config needs {POOLING_KEY}; build one with PooledHead")
        check_pooling(pooling, samples)
        if backbone is None:
            # Built before the outer model's own init so that the backbone's class, which knows which
            # attention implementations it supports, sets the choice on the shared config.
            backbone = _backbone_class(config)(config, **_backbone_kwargs(config))
        elif backbone.config is not config:
            raise ValueError("the backbone must share the classifier's config (pass backbone.config)")
        super().__init__(config)
        self.backbone = backbone
        self.head = PoolingHead(config, pooling, samples)
        self.post_init()

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return self.backbone.supports_gradient_checkpointing

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint,
                                    every_n_layers: int = 1) -> None:
        # Only the encoder's layers checkpoint; the head is a few small matrices.
        self.backbone._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone's own initialiser (BERT: normal(0, initializer_range), zero bias) for the head's
        # layers. Through `transformers.initialization`, which skips tensors loaded from a checkpoint.
        if isinstance(module, LayerMix):
            init.zeros_(module.weight)
        elif module is not self:
            self.backbone._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        """Logits (batch, num_labels); padding (attention_mask 0) never reaches them."""
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        optional = {"token_type_ids": token_type_ids, "position_ids": position_ids}
        inputs = {key: value for key, value in optional.items() if value is not None}
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                output_hidden_states=self.head.needs_all_layers, return_dict=True, **inputs, **kwargs)
        layers = outputs.hidden_states if self.head.needs_all_layers else None
        pooled = self.head.pool(outputs.last_hidden_state, layers, attention_mask.bool())
        return SequenceClassifierOutput(logits=self.head(pooled),
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
