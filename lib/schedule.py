"""Learning-rate schedules as pure functions of the optimizer step.

Each returns a multiplier applied to every parameter group's initial learning rate, with the same
values as `transformers.get_scheduler` of the same name (tested step by step): warmup rises
linearly from 0, so the first optimizer step uses lr 0 whenever warmup > 0, and `constant`
ignores warmup exactly as transformers does.
"""

from __future__ import annotations

import math

import torch


def lr_multiplier(kind: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier for the learning rate used by optimizer step `step` (0-based)."""
    if kind == "constant":
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if kind == "constant_with_warmup":
        return 1.0
    if kind == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {kind!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Apply `multiplier` to each group's `initial_lr`; returns the first group's new lr for logging."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]
