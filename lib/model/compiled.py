"""A classifier's prediction forward compiled by torch.compile with its weights frozen, for large files.

Freezing tells inductor that the weights are constants: it folds them into the graph and lays out
the matrix products' weights ahead of time, and compiling fuses the elementwise work between them.
On 2 CPU cores, batches were scored 1.18x (scratch:mini, fp32) to 1.78x (scratch:tiny, bf16) faster
than eagerly, after 19-34 s of compiling with a cold cache (bench/levers.py --levers predict-compile).
That pays for files of several hundred thousand rows, such as the unlabelled reviews a teacher scores
for distillation (453k: 1.10x end to end, 1.26x with a warm cache), not for a test file of 20,000.
The weights must not change once compiled, so training's evaluations never come here.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor import config as inductor_config
from transformers import PreTrainedModel

from lib.core.errors import UserError
from lib.model.cls_only import classifier_logits

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def frozen_classifier(model: PreTrainedModel) -> Forward:
    """`classifier_logits(model, input_ids, attention_mask)`, compiled on first use for any batch shape."""
    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return classifier_logits(model, input_ids, attention_mask)

    compiled = torch.compile(_own_code(logits), dynamic=True)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = len(input_ids)
        if rows == 1:  # dynamo specialises a size of 1: a last batch of one row would compile a second graph
            input_ids, attention_mask = input_ids.repeat(2, 1), attention_mask.repeat(2, 1)
        try:
            with inductor_config.patch(freezing=True):
                return compiled(input_ids, attention_mask)[:rows]
        except BackendCompilerFailed as error:  # e.g. no working C++ compiler for inductor's CPU kernels
            cause = error.inner_exception
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            raise UserError(f"--compile: torch.compile could not build the prediction kernels here ({reason})") \
                from None

    return forward


def _own_code(function: Callable) -> Callable:
    """`function` with a code object of its own. Dynamo keeps compiled graphs on the code object and
    compiles one at most 8 times (its recompile limit): closures of one code over the members of an
    ensemble would leave every member after the 8th uncompiled."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
