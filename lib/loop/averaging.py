"""Weights averaged alongside training: the extension point the loop calls after each optimizer step
and at each epoch end (SWA today; an exponential moving average fits the same interface).

An averager keeps its average in fp32 on the CPU (a running mean in half precision drifts), saves
its weights beside the loop's checkpoint and its counters in the loop state, so a resumed run
continues the same average.
"""

from __future__ import annotations

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
