"""The one gradient step: scale -> backward -> unscale -> clip -> step, with remainder-aware accumulation.

When the fp16 scaler skips a step because of inf/NaN gradients, the step did not happen, so the
caller must not advance the learning-rate schedule (the HF Trainer's behaviour). Whether it skipped is
a flag on the device; `AppliedSteps` reads it without making the host wait for the GPU's queue.
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
    skipped: torch.Tensor | None  # 0-d on the device, 1 where the fp16 scaler skipped the step; None: no scaler


class AppliedSteps:
    """Counts the optimizer steps that were applied, for the learning-rate schedule, without a host sync.

    Reading a flag from the GPU with `.item()` makes the host wait until every kernel queued so far has
    run, so the host could never queue a step ahead of the GPU (the fp16 scaler's `get_scale()` read
    twice per step did exactly that). Each flag is copied instead, without blocking, into page-locked
    host memory behind an event; `settle` waits only for that event. Called before the next step's
    learning rate is set, that is the end of the previous optimizer step, while the GPU already runs
    the next forward and backward.
    """

    def __init__(self) -> None:
        self._taken = 0
        self._flags: list[torch.Tensor] = []  # on the host once `_copied` has completed
        self._copied: torch.cuda.Event | None = None

    def add(self, outcome: StepOutcome) -> None:
        self._taken += 1
        if outcome.skipped is None:
            return
        flag = outcome.skipped
        if flag.device.type == "cuda":
            host = torch.empty(flag.shape, dtype=flag.dtype, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
            flag = host
        self._flags.append(flag)

    def settle(self) -> int:
        """The applied steps among those added since the last call (waits for their flags' copies only)."""
        if self._copied is not None:
            self._copied.synchronize()
        applied = self._taken - sum(int(flag) for flag in self._flags)
        self._taken, self._flags, self._copied = 0, [], None
        return applied


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
    """Unscale, clip to `max_grad_norm` (0 = no clipping, norm still measured), step, zero the grads.

    Nothing here reads a value from the device: with fused AdamW the scaler's skip happens inside the
    optimizer's kernel, and the skip flag is the one the scaler's unscale found (`skipped_by_scaler`).
    """
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm > 0 else math.inf)
    skipped = skipped_by_scaler(scaler, optimizer) if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(grad_norm.detach(), skipped)


def skipped_by_scaler(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """1 on the device where `unscale_` found inf/NaN gradients, which makes `step` skip and `update`
    shrink the scale. torch keeps this flag behind a private accessor; taking it from there is the only
    way to learn the scaler's own decision without reading the scale back (a host sync)."""
    return sum(scaler._found_inf_per_device(optimizer).values())
