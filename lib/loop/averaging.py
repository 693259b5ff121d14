"""Weights averaged alongside training: the extension point the loop calls after each optimizer step
and at each epoch end. `EpochSWA` averages epoch ends (--swa-start), `EMA` every step (--ema-decay).

An averager keeps its average in fp32 (a running mean in half precision drifts), saves its weights
beside the loop's checkpoint and its counters in the loop state, so a resumed run continues the
same average.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch.optim.swa_utils import AveragedModel
from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class WeightAverager(Protocol):
    name: str  # its key in the loop state; its weights go to `<checkpoint>/<name>_running`

    def after_step(self, model: PreTrainedModel, step: int) -> None: ...

    def after_epoch(self, model: PreTrainedModel, epoch: int) -> None: ...

    def averaged(self) -> PreTrainedModel | None:
        """The current average, or None before anything was averaged."""

    def state_dict(self) -> dict: ...

    def save(self, folder: Path) -> None:
        """Write the average's weights into `folder` (a checkpoint), if there is one yet."""


class EpochSWA:
    """Stochastic weight averaging: the equal-weight mean of the weights at each epoch end from
    `start_epoch` (0-based) on. `use_buffers=False`: BERT's only buffers are integer ids, and
    `update_bn` is a no-op for LayerNorm models."""

    name = "swa"

    def __init__(self, start_epoch: int) -> None:
        self.start_epoch = start_epoch
        self._average: AveragedModel | None = None

    def after_step(self, model: PreTrainedModel, step: int) -> None:
        pass

    def after_epoch(self, model: PreTrainedModel, epoch: int) -> None:
        if epoch < self.start_epoch:
            return
        if self._average is None:
            self._average = AveragedModel(model, device=torch.device("cpu"))
        self._average.update_parameters(model)
        log.info("SWA: averaged %d epoch end(s)", self.n_averaged)

    @property
    def n_averaged(self) -> int:
        return int(self._average.n_averaged) if self._average is not None else 0

    def averaged(self) -> PreTrainedModel | None:
        return self._average.module if self._average is not None else None

    def state_dict(self) -> dict:
        return {"n_averaged": self.n_averaged}

    def save(self, folder: Path) -> None:
        if self._average is not None:
            self._average.module.save_pretrained(folder / f"{self.name}_running")

    def restore(self, state: dict, folder: Path | None, load: Callable[[Path], PreTrainedModel]) -> None:
        """Continue the average saved by `save` into checkpoint `folder` with counters `state`."""
        n_averaged = state.get("n_averaged", 0)
        if n_averaged and folder is not None:
            self._average = AveragedModel(load(folder / f"{self.name}_running").float().cpu(),
                                          device=torch.device("cpu"))
            self._average.n_averaged.fill_(n_averaged)


class EMA:
    """An exponential moving average of the weights, updated after every optimizer step.

    The decay warms up as in timm's ModelEmaV3: at the n-th update it is min(decay,
    1 - (1 + n) ** -2/3), so the average starts as the weights themselves and does not drag the
    random or pretrained start along for thousands of steps. The average lives on the model's
    device, in fp32.
    """

    name = "ema"
    WARMUP_POWER = 2 / 3

    def __init__(self, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self._average: PreTrainedModel | None = None

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (0-based): 0 for the first, so it copies the weights."""
        if not self.warmup:
            return self.decay if update else 0.0
        return min(self.decay, 1.0 - (1.0 + update) ** -self.WARMUP_POWER)

    @torch.no_grad()
    def after_step(self, model: PreTrainedModel, step: int) -> None:
        if self._average is None:
            self._average = copy.deepcopy(model).float().eval().requires_grad_(False)
        decay = self.decay_at(self.updates)
        # parameters() lists a tied tensor once, so it is updated once
        pairs = zip([*self._average.parameters(), *self._average.buffers()], [*model.parameters(), *model.buffers()])
        averages, values = [], []
        for averaged, value in pairs:
            value = value.detach().to(averaged.device)
            if averaged.is_floating_point():
                averages.append(averaged)
                values.append(value.float())
            else:
                averaged.copy_(value)
        # one multi-tensor kernel for all of them, as torch's optimizers step: a launch per tensor
        # (200 on BERT-base) would be host time on every step
        torch._foreach_lerp_(averages, values, 1.0 - decay)
        self.updates += 1

    def after_epoch(self, model: PreTrainedModel, epoch: int) -> None:
        pass

    def averaged(self) -> PreTrainedModel | None:
        return self._average

    @property
    def n_averaged(self) -> int:
        return self.updates

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def save(self, folder: Path) -> None:
        if self._average is not None:
            self._average.save_pretrained(folder / f"{self.name}_running")

    def restore(self, state: dict, folder: Path | None, load: Callable[[Path], PreTrainedModel],
                device: torch.device | None = None) -> None:
        self.updates = state.get("updates", 0)
        if self.updates and folder is not None:
            average = load(folder / f"{self.name}_running").float().eval().requires_grad_(False)
            self._average = average.to(device) if device is not None else average
