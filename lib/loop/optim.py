"""AdamW with weight decay chosen by tensor shape.

Matrices (and embeddings) decay; 1-D tensors (biases, LayerNorm weights) do not. On BERT this is
exactly the split the HF Trainer makes by name, without a list of names to keep in sync.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def build_adamw(model: torch.nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float],
                eps: float, fused: bool) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    log.info("AdamW: %d tensors (%d values) with weight decay %g, %d tensors (%d values) without",
             len(decay), sum(p.numel() for p in decay), weight_decay,
             len(no_decay), sum(p.numel() for p in no_decay))
    groups = [
        {"params": decay, "weight_decay": weight_decay, "initial_lr": learning_rate},
        {"params": no_decay, "weight_decay": 0.0, "initial_lr": learning_rate},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)
