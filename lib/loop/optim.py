"""Parameter groups and AdamW: the extension point that decides each tensor's learning rate and decay.

A `ParameterGroups` builder turns a model into optimizer groups, each with its own peak learning
rate (`initial_lr`, which the schedule multiplies) and weight decay. The default decays by tensor
shape: matrices (and embeddings) decay, 1-D tensors (biases, LayerNorm weights) do not. On BERT
this is exactly the split the HF Trainer makes by name, without a list of names to keep in sync.
Techniques that give layers their own rates (layer-wise decay) are other builders.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

log = logging.getLogger(__name__)


class ParameterGroups(Protocol):
    def __call__(self, model: torch.nn.Module) -> list[dict]:
        """Optimizer groups: `params`, `weight_decay`, `initial_lr` and a `name` for the log."""


class DecayByShape:
    """One learning rate; weight decay for tensors of two or more dimensions only."""

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        self.learning_rate, self.weight_decay = learning_rate, weight_decay

    def __call__(self, model: torch.nn.Module) -> list[dict]:
        decay, no_decay = [], []
        for parameter in model.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        return [
            {"name": "decay", "params": decay, "weight_decay": self.weight_decay, "initial_lr": self.learning_rate},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "initial_lr": self.learning_rate},
        ]


def build_adamw(model: torch.nn.Module, groups: ParameterGroups, betas: tuple[float, float], eps: float,
                fused: bool) -> torch.optim.AdamW:
    """AdamW over the builder's groups, with one log line per group."""
    param_groups = [group for group in groups(model) if group["params"]]
    for group in param_groups:
        log.info("AdamW group %s: %d tensors (%d values), lr %g, weight decay %g", group["name"],
                 len(group["params"]), sum(p.numel() for p in group["params"]), group["initial_lr"],
                 group["weight_decay"])
    first = param_groups[0]["initial_lr"]
    return torch.optim.AdamW(param_groups, lr=first, betas=betas, eps=eps, fused=fused)
