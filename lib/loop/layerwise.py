"""Layer-wise learning-rate decay (Sun et al. 2019): lower encoder layers learn more slowly.

A `ParameterGroups` builder (see lib.loop.optim). With L encoder layers, layer i (0 = bottom) gets
learning_rate * decay ** (L - 1 - i): the top layer the peak rate, the embedding level decay ** L of
it. The head (the classifier, the pooler, anything outside the base model) gets its own rate, the
peak one unless given. As in the original code, the head does not fall to the lowest rate. Inside
every level weight decay goes by shape, exactly as `DecayByShape`, so a level has two groups at most.
The layers are found from the model's structure (lib.model.layers), not from parameter names.
"""

from __future__ import annotations

import torch

from lib.model.layers import embedding_level_parameters, encoder_layers

OPTION = "--layer-lr-decay"


class LayerwiseDecay:
    """Groups per level (embeddings, each encoder layer, head), each split by shape for weight decay."""

    def __init__(self, learning_rate: float, weight_decay: float, decay: float,
                 head_learning_rate: float | None = None) -> None:
        self.learning_rate, self.weight_decay, self.decay = learning_rate, weight_decay, decay
        self.head_learning_rate = learning_rate if head_learning_rate is None else head_learning_rate

    def __call__(self, model: torch.nn.Module) -> list[dict]:
        layers = encoder_layers(model, OPTION)
        depth = len(layers)
        # (name, peak rate, parameters), bottom to top: groups come out in the same order on every call,
        # which resuming an optimizer's state relies on (it pairs groups by position).
        levels = [("embeddings", self.learning_rate * self.decay ** depth, embedding_level_parameters(model, OPTION))]
        levels += [(f"layer {i}", self.learning_rate * self.decay ** (depth - 1 - i), list(layer.parameters()))
                   for i, layer in enumerate(layers)]
        placed = {id(p) for _, _, params in levels for p in params}
        levels.append(("head", self.head_learning_rate, [p for p in model.parameters() if id(p) not in placed]))

        groups = []
        for name, rate, params in levels:
            trainable = [p for p in params if p.requires_grad]
            for suffix, weight_decay, members in (
                    ("decay", self.weight_decay, [p for p in trainable if p.ndim >= 2]),
                    ("no_decay", 0.0, [p for p in trainable if p.ndim < 2])):
                if members:
                    groups.append({"name": f"{name} {suffix}", "params": members, "weight_decay": weight_decay,
                                   "initial_lr": rate})
        return groups
