"""Learning-rate schedules as pure functions of the optimizer step.

Each returns a multiplier applied to every parameter group's initial learning rate, with the same
values as `transformers.get_scheduler` of the same name (tested step by step): warmup rises
linearly from 0, so the first optimizer step uses lr 0 whenever warmup > 0, and `constant`
ignores warmup exactly as transformers does.
"""

from __future__ import annotations

import math

import torch

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")  # the kinds lr_multiplier knows


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


def swa_lr_multiplier(step: int, swa_start_step: int, anneal_steps: int, swa_lr_ratio: float,
                      multiplier_at_start: float) -> float:
    """torch's SWALR (cosine annealing) as a pure function of the optimizer step.

    From `swa_start_step` on, the multiplier moves from `multiplier_at_start` (the schedule's value
    there) to `swa_lr_ratio` (= swa_lr / base lr) over `anneal_steps`, then stays there.
    """
    progress = min(1.0, max(0, step - swa_start_step) / max(1, anneal_steps))
    alpha = (1.0 - math.cos(math.pi * progress)) / 2.0
    return swa_lr_ratio * alpha + multiplier_at_start * (1.0 - alpha)
