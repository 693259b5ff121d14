"""Dropout whose masks come from 16-bit random integers, for training steps on a CPU.

On a CPU, torch's dropout draws one Bernoulli sample per element from the default generator: 870 µs
for one of scratch:tiny's hidden-state tensors (32 x 40 x 128), where a multiply takes 10 µs, and
most of the 15-20% of a tiny fp32 training step that dropout cost. Here each 64-bit random integer
gives four 16-bit levels, and an element is kept when its level is among the top 65536 - k, where
k = round(p * 65536): the rate p is realised to within 1/131072, the kept elements are scaled by
65536 / (65536 - k), so every expectation is exactly that of the input, and the masks are
independent across elements as before. One 64-bit draw per four elements took 220 µs for that
tensor (bench/levers.py `--levers dropout` for whole steps). The generator is torch's default one,
so seeding and resuming are unchanged; only the stream of masks differs from torch's dropout.

Training steps on a CPU run `integer_dropout_forwards` around the step (every plain `nn.Dropout`) and
the attention implementation of `lib.model.attention` (the attention probabilities' dropout). The
last layer's attention at [CLS] (`lib.model.cls_only`) keeps SDPA's own dropout: one row of
probabilities per head, too few values to matter.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # 16-bit levels per element
_WORDS_MIN, _WORDS_MAX = -(1 << 63), (1 << 63) - 1  # torch.randint's int64 range


def integer_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with masks from 16-bit random levels (see the module docstring)."""
    if not training or p == 0.0:
        return x
    dropped = round(p * LEVELS)
    if not 0 < dropped < LEVELS:  # p within 1/131072 of 0 or 1: torch's own dropout is exact there
        return F.dropout(x, p, training)
    count = x.numel()
    words = torch.randint(_WORDS_MIN, _WORDS_MAX, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
    levels = words.view(torch.int16)[:count].view(x.shape).to(torch.float32)  # uniform over -32768..32767
    # keep the levels >= dropped - 32768: after the shift, kept levels are >= 1 and dropped ones <= 0
    keep = levels.sub_(dropped - LEVELS // 2 - 1).clamp_(0, 1)
    scale = LEVELS / (LEVELS - dropped)
    if x.dtype == torch.float32:
        return x * keep.mul_(scale)  # one multiply forward and backward
    return (x * keep.to(x.dtype)).mul_(scale)  # scaled in float, not by the scale rounded to x's dtype


def integer_dropout_applies(device: torch.device, compiled: bool) -> bool:
    """Whether training steps draw their dropout masks here: on a CPU, in eager mode. A compiled model
    would compile its graph again at every step (the forwards swapped in are new objects), and
    inductor generates dropout masks in its own kernels anyway."""
    return device.type == "cpu" and not compiled


def _module_forward(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    return integer_dropout(x, module.p, module.training)


def plain_dropouts(model: nn.Module) -> tuple[nn.Dropout, ...]:
    """The `nn.Dropout` modules of `model` that `integer_dropout_forwards` stands in for. In-place
    dropouts and subclasses (which may mean something else by their forward) keep their own."""
    return tuple(m for m in model.modules() if type(m) is nn.Dropout and not m.inplace)


@contextmanager
def integer_dropout_forwards(modules: tuple[nn.Dropout, ...]) -> Iterator[None]:
    """While the block runs, these dropout modules draw their masks with `integer_dropout` (their
    own forwards are back afterwards, also after an exception). Found once per run with
    `plain_dropouts`: walking the model's modules at every step cost more than the swap."""
    for module in modules:
        module.forward = partial(_module_forward, module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward
