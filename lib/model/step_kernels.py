"""The kernels a model's training steps switch to: on a CPU, our eager attention and integer dropout;
on CUDA, SDPA with a mask that needs no host read.

Fine-tuning, pretraining and bench/levers.py choose once per run (`TrainingKernels.choose`) and run
every step's forwards and backwards inside `step()`; evaluation, prediction and saving see the
model as it is. The rules and their measurements are in `lib.model.attention` and
`lib.model.dropout`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from lib.model.attention import (SDPA_WITHOUT_MASK_CHECK, attention_implementation, shares_one_config,
                                 training_attention)
from lib.model.dropout import integer_dropout_applies, integer_dropout_forwards, plain_dropouts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingKernels:
    model: PreTrainedModel = field(repr=False)  # the model whose steps switch
    attention: str | None = None  # the attention implementation of the steps; None: the model's own
    dropouts: tuple[nn.Dropout, ...] = field(default=(), repr=False)  # masks from 16-bit integers (`lib.model.dropout`)
    one_config: bool = False  # the model's attention switches by one config field (`shares_one_config`)

    @classmethod
    def choose(cls, model: PreTrainedModel, device: torch.device, compiled: bool = False,
               packed: bool = False) -> TrainingKernels:
        """What the steps of `model` on `device` (under torch.compile if `compiled`; on `packed` batches,
        most without padding) switch to."""
        return cls.of(model, training_attention(model, device, compiled, packed),
                      integer_dropout_applies(device, compiled))

    @classmethod
    def of(cls, model: PreTrainedModel, attention: str | None, integer_dropout: bool) -> TrainingKernels:
        """`attention` and (if `integer_dropout`) our dropout for `model`'s steps; its modules are
        looked up here, once, not at every step."""
        return cls(model, attention, plain_dropouts(model) if integer_dropout else (), shares_one_config(model))

    def log_choice(self) -> None:
        """Say in the run's log what the steps switch to (nothing when they keep the model's own)."""
        if self.attention == SDPA_WITHOUT_MASK_CHECK:
            log.info("attention: sdpa in training steps with its mask always built (transformers' check "
                     "whether to leave it out would make the host wait for the GPU at every forward)")
        elif self.attention:
            log.info("attention: %s in training steps on the CPU (measured faster), %s for evaluation",
                     self.attention, self.model.config._attn_implementation)
        if self.dropouts:
            log.info("dropout: masks from 16-bit random integers in training steps on the CPU (measured faster)")

    @contextmanager
    def step(self) -> Iterator[None]:
        """Run the block with these kernels, then give the model its own back (also after an exception)."""
        with attention_implementation(self.model, self.attention, self.one_config), \
                integer_dropout_forwards(self.dropouts):
            yield
