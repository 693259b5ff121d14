"""Re-initialising the top encoder layers before fine-tuning (Zhang et al. 2021, "Revisiting Few-sample
BERT Fine-tuning"): the top layers' pretrained weights are specialised to the pretraining task, and
starting them afresh helps small data sets.

The top `k` layers and the pooler (which sits above them) get the model's own initialiser, the one
transformers applies to weights missing from a checkpoint; everything else keeps its values.
"""

from __future__ import annotations

import logging

import torch

from lib.core.errors import UserError
from lib.model.layers import encoder_layers, pooler

log = logging.getLogger(__name__)

OPTION = "--reinit-top-layers"
# transformers 5 marks every tensor `from_pretrained` loaded with this attribute, and the init functions
# `_init_weights` calls (transformers.initialization.normal_, zeros_, ...) skip marked tensors: applying
# `_init_weights` to a loaded model alone is a silent no-op.
_LOADED_FLAG = "_is_hf_initialized"


def reinit_top_layers(model: torch.nn.Module, k: int) -> None:
    """Re-initialise the top `k` encoder layers and, when `k` > 0, the pooler, in place."""
    if k == 0:
        return
    layers = encoder_layers(model, OPTION)
    if not 0 < k <= len(layers):
        raise UserError(f"{OPTION} {k}: {type(model).__name__} has {len(layers)} encoder layers; "
                        f"expected 0 to {len(layers)}")
    top = pooler(model)
    modules = list(layers[len(layers) - k:]) + ([top] if top is not None else [])
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    flags = [t.__dict__.pop(_LOADED_FLAG, None) for t in tensors]
    try:
        with torch.no_grad():
            for module in modules:
                for submodule in module.modules():
                    model._init_weights(submodule)
    finally:
        for tensor, flag in zip(tensors, flags):
            if flag is not None:
                setattr(tensor, _LOADED_FLAG, flag)
    log.info("re-initialised the top %d of %d encoder layers%s", k, len(layers),
             " and the pooler" if top is not None else "")
