"""The one gradient step: scale -> backward -> unscale -> clip -> step, with remainder-aware accumulation.

When the fp16 scaler skips a step because of inf/NaN gradients, the step did not happen, so the
caller must not advance the learning-rate schedule (the HF Trainer's behaviour).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from lib.core.device import autocast


@dataclass(frozen=True)
class StepOutcome:
    grad_norm: torch.Tensor  # kept on the device: reading it is a host sync, done only when logging
    applied: bool  # False when the fp16 scaler skipped the step because of inf/NaN gradients


def accumulate_window(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], loss_fn: torch.nn.Module,
                      scaler: torch.amp.GradScaler, precision: str, device: torch.device,
                      window_samples: int | None = None, world_size: int = 1) -> torch.Tensor:
    """Forward and backward over one accumulation window; returns this process's share of the
    window's per-sample mean loss.

    Each micro-batch's summed per-sample loss is divided by the number of samples in the whole
    window, so k micro-batches give the same gradient as one batch of all their rows, including
    a short last window (the HF Trainer divides by the number of micro-batches instead). Under
    DistributedDataParallel, `window_samples` counts the rows of all processes and the loss is
    multiplied by `world_size` to undo DDP's gradient averaging; gradients are all-reduced only on
    the last micro-batch. A batch may carry a `weight` of 0 (a placeholder row for a process
    whose share of the last batch is empty).
    """
    if window_samples is None:
        window_samples = sum(len(batch["labels"]) for batch in batches)
    total = torch.zeros((), device=device)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(precision, device):
                logits = model(input_ids=batch["input_ids"].to(device, non_blocking=True),
                               attention_mask=batch["attention_mask"].to(device, non_blocking=True)).logits
            loss = loss_fn(logits, batch["labels"].to(device, non_blocking=True)).sum() * batch.get("weight", 1.0)
            loss = loss / window_samples
            scaler.scale(loss * world_size).backward()
        total += loss.detach()
    return total


def optimizer_step(parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, max_grad_norm: float) -> StepOutcome:
    """Unscale, clip to `max_grad_norm` (0 = no clipping, norm still measured), step, zero the grads."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else math.inf)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    applied = scale_before is None or scaler.get_scale() >= scale_before
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(grad_norm.detach(), applied)
