"""The one gradient step: scale -> backward -> unscale -> clip -> step, with remainder-aware accumulation.

When the fp16 scaler skips a step because of inf/NaN gradients, the step did not happen, so the
caller must not advance the learning-rate schedule (the HF Trainer's behaviour).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from lib.core.device import autocast, to_device


@dataclass(frozen=True)
class StepOutcome:
    grad_norm: torch.Tensor  # kept on the device: reading it is a host sync, done only when logging
    applied: bool  # False when the fp16 scaler skipped the step because of inf/NaN gradients


@dataclass(frozen=True)
class WindowShare:
    """How one micro-batch's summed loss becomes its share of the accumulation window's gradient.

    Each micro-batch's summed loss is divided by the count (samples, or masked tokens) of the
    whole window, so k micro-batches give the same gradient as one batch of all their rows,
    including a short last window (the HF Trainer divides by the number of micro-batches instead).
    Under DistributedDataParallel `denominator` counts the rows of every process and the loss is
    multiplied by `world_size` to undo DDP's gradient averaging.
    """

    denominator: float
    scaler: torch.amp.GradScaler
    world_size: int = 1

    def backward(self, loss_sum: torch.Tensor) -> None:
        self.scaler.scale(loss_sum / self.denominator * self.world_size).backward()


class BatchObjective(Protocol):
    """Forward, loss and backward of one micro-batch: the extension point for techniques that need
    a second forward pass or an adversarial step around the plain one."""

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        """Backpropagate this batch's share of the window loss; return its summed loss, detached."""


class ClassifierObjective:
    """The summed per-sample loss of a sequence classifier's logits, under the run's autocast.

    A batch may carry a `weight` of 0 (a placeholder row for a process whose share of the last
    batch is empty: DDP needs a forward on every rank).
    """

    def __init__(self, loss_fn: torch.nn.Module, precision: str, device: torch.device) -> None:
        self.loss_fn, self.precision, self.device = loss_fn, precision, device

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits = model(input_ids=to_device(batch["input_ids"], self.device),
                           attention_mask=to_device(batch["attention_mask"], self.device)).logits
        labels = to_device(batch["labels"], self.device)
        loss = self.loss_fn(logits, labels).sum() * batch.get("weight", 1.0)
        share.backward(loss)
        return loss.detach()


def accumulate_window(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], objective: BatchObjective,
                      share: WindowShare) -> torch.Tensor:
    """Forward and backward over one accumulation window; returns this process's share of the
    window's mean loss. Under DDP, gradients are all-reduced only on the last micro-batch."""
    total = None
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = objective.backward(model, batch, share) / share.denominator
        total = loss if total is None else total + loss
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
