"""Which attention kernel a model runs while it trains.

On a CPU, BERT-family eager attention trained 1.02x-1.08x faster than PyTorch's SDPA, while SDPA
predicted 1-5% faster (bench/levers.py: scratch tiny and mini, fp32 and bf16); masked-LM steps on
128-token sequences were level in fp32 and faster in bf16 (`--levers mlm-attention`). So on a CPU
the fine-tuning and pretraining steps of a model that runs SDPA switch it to eager for their
duration; evaluation, prediction and the saved config keep SDPA. Both compute the same attention;
only the attention dropout draws its masks in another way. A switch costs microseconds (a config
field).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import PreTrainedModel


def training_attention(model: PreTrainedModel, device: torch.device) -> str | None:
    """The attention implementation training steps should use, or None to leave the model's own."""
    return "eager" if device.type == "cpu" and model.config._attn_implementation == "sdpa" else None


@contextmanager
def attention_implementation(model: PreTrainedModel, implementation: str | None) -> Iterator[None]:
    """Run the block with `implementation` (None: the model's own), then restore the model's own."""
    own = model.config._attn_implementation
    if implementation is None or implementation == own:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(own)
