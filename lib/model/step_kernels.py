"""The kernels a model's training steps switch to: on a CPU, our eager attention and integer dropout.

Fine-tuning, pretraining and bench/levers.py choose once per run (`TrainingKernels.choose`) and run
every step's forwards and backwards inside `step(model)`; evaluation, prediction and saving see the
model as it is. The rules and their measurements are in `lib.model.attention` and
`lib.model.dropout`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import PreTrainedModel

from lib.model.attention import attention_implementation, training_attention
from lib.model.dropout import dropout_modules, integer_dropout_applies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingKernels:
    attention: str | None  # the attention implementation of the steps; None: the model's own
    integer_dropout: bool  # dropout masks from 16-bit integers (`lib.model.dropout`)

    @classmethod
    def choose(cls, model: PreTrainedModel, device: torch.device, compiled: bool = False) -> TrainingKernels:
        """What the steps of `model` on `device` (under torch.compile if `compiled`) switch to."""
        return cls(training_attention(model, device, compiled), integer_dropout_applies(device, compiled))

    def log_choice(self, model: PreTrainedModel) -> None:
        """Say in the run's log what the steps switch to (nothing when they keep the model's own)."""
        if self.attention:
            log.info("attention: %s in training steps on the CPU (measured faster), %s for evaluation",
                     self.attention, model.config._attn_implementation)
        if self.integer_dropout:
            log.info("dropout: masks from 16-bit random integers in training steps on the CPU (measured faster)")

    @contextmanager
    def step(self, model: PreTrainedModel) -> Iterator[None]:
        """Run the block with these kernels, then give the model its own back (also after an exception)."""
        with attention_implementation(model, self.attention), dropout_modules(model, self.integer_dropout):
            yield
