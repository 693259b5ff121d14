"""Which attention kernel a model runs while it trains, and on CUDA while it predicts eagerly.

On a CPU, BERT-family eager attention trained 1.02x-1.08x faster than PyTorch's SDPA, while SDPA
predicted 1-5% faster (bench/levers.py: scratch tiny and mini, fp32 and bf16); masked-LM steps on
128-token sequences were level in fp32 and faster in bf16 (`--levers mlm-attention`). So on a CPU
the fine-tuning and pretraining steps switch a model to eager attention for their duration, and
where the model dispatches through transformers' attention interface, to our own eager kernel,
`INTEGER_DROPOUT_ATTENTION`: the same arithmetic, with the attention probabilities' dropout drawn
by `lib.model.dropout` (bench/levers.py `--levers dropout`). Evaluation, prediction and the saved
config keep SDPA. Where every sub-model reads the top config (a classifier, a masked LM), the
switch sets that config's field: 20 µs there and back on scratch:tiny, against 97 µs through
transformers' `set_attn_implementation`, which walks every module and which the others go through.

On CUDA the training steps and eager predictions of an SDPA model keep SDPA but always build its mask,
`SDPA_WITHOUT_MASK_CHECK`: transformers first asks whether the padding mask is all ones, to leave it
out, and that `bool()` makes the host wait for the GPU's whole queue at every forward (it is the one
host read of a BERT training step). Batch widths on CUDA are multiples of 8, so a batch without any
padding, where leaving the mask out would let SDPA pick its flash kernel, is rare. Pretraining's
packed sequences are the opposite, and keep transformers' check.

Importing this module registers those two kernels, and the masks they read, under their names in
transformers' attention and mask registries; nothing else in them changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from lib.model.dropout import integer_dropout, integer_dropout_applies

INTEGER_DROPOUT_ATTENTION = "eager_integer_dropout"
SDPA_WITHOUT_MASK_CHECK = "sdpa_without_mask_check"


def _eager_integer_dropout(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over (rows, heads, positions, head size), with the additive mask; the output
    as (rows, positions, heads, head size), as transformers' eager kernels return it."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = integer_dropout(scores.softmax(dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(INTEGER_DROPOUT_ATTENTION, _eager_integer_dropout)
AttentionMaskInterface.register(INTEGER_DROPOUT_ATTENTION, eager_mask)


def _sdpa_mask_always_built(*args, **kwargs) -> torch.Tensor | None:
    """transformers' SDPA mask without its check whether the padding mask could be left out."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_bidirectional_skip": False})


AttentionInterface.register(SDPA_WITHOUT_MASK_CHECK, sdpa_attention_forward)
AttentionMaskInterface.register(SDPA_WITHOUT_MASK_CHECK, _sdpa_mask_always_built)


def training_attention(model: PreTrainedModel, device: torch.device, compiled: bool = False,
                       packed: bool = False) -> str | None:
    """The attention implementation training steps should use, or None to leave the model's own.

    Under torch.compile the integer-mask dropout is not used (`lib.model.dropout.integer_dropout_applies`),
    nor on CUDA the unchecked SDPA mask. Nor is it for `packed` batches (pretraining's full-length
    sequences): most have no padding, and there transformers' check leaves the mask out, which lets
    SDPA choose its flash kernel.
    """
    own = model.config._attn_implementation
    if own not in ("sdpa", "eager") or not model._can_set_attn_implementation():
        return None
    if device.type != "cpu":  # compiled, transformers skips the check itself: a traced mask is not read
        return None if compiled or packed else unchecked_attention(model, device)
    if integer_dropout_applies(device, compiled) and getattr(model, "_supports_attention_backend", False):
        return INTEGER_DROPOUT_ATTENTION
    return "eager" if own == "sdpa" else None


def unchecked_attention(model: PreTrainedModel, device: torch.device) -> str | None:
    """`SDPA_WITHOUT_MASK_CHECK` for an SDPA model on CUDA that dispatches through transformers'
    attention interface (eager forwards, training or not), else None: the model's own."""
    unchecked = (device.type == "cuda" and model.config._attn_implementation == "sdpa"
                 and getattr(model, "_supports_attention_backend", False) and model._can_set_attn_implementation())
    return SDPA_WITHOUT_MASK_CHECK if unchecked else None


def shares_one_config(model: PreTrainedModel) -> bool:
    """Whether every sub-model of `model` reads `model.config` and it has no sub-configs: then its
    attention implementation is that one config field (`attention_implementation(one_config=True)`)."""
    return not model.config.sub_configs and all(
        module.config is model.config for module in model.modules() if isinstance(module, PreTrainedModel))


@contextmanager
def attention_implementation(model: PreTrainedModel, implementation: str | None,
                             one_config: bool = False) -> Iterator[None]:
    """Run the block with `implementation` (None: the model's own), then restore the model's own.
    `one_config`: `shares_one_config(model)` holds, so setting the config's field switches the model."""
    own = model.config._attn_implementation
    if implementation is None or implementation == own:
        yield
        return
    switch = partial(setattr, model.config, "_attn_implementation") if one_config else model.set_attn_implementation
    switch(implementation)
    try:
        yield
    finally:
        switch(own)
