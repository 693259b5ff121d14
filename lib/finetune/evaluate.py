"""Logits for a whole split: sorted by length, under inference mode and the run's precision."""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers import PreTrainedModel

from lib.core.device import autocast, to_device
from lib.core.distributed import Distributed
from lib.core.progress import progress_bar
from lib.data.batching import EncodedTexts, collate, prediction_token_budget, sorted_batches
from lib.model.attention import attention_implementation, shares_one_config, unchecked_attention
from lib.model.cls_only import classifier_logits
from lib.model.compiled import frozen_classifier
from lib.model.layers import widest_linear


def predict_logits(model: PreTrainedModel, data: EncodedTexts, batch_size: int, precision: str,
                   device: torch.device, desc: str, show_progress: bool, part: tuple[int, int] = (0, 1),
                   compiled: bool = False) -> np.ndarray:
    """fp32 logits in the rows' original order, whatever order the batches ran in. Batches hold at most
    `batch_size` rows, and on a CPU at most `prediction_token_budget` tokens (`prediction_batches`).

    `part=(k, n)` computes only every n-th length-sorted batch starting at k (one process's share
    of a distributed evaluation); the other rows are left as NaN for the caller to gather.
    `compiled`: through `frozen_classifier` (weights that no longer change, a large file). Eager on
    CUDA, the batches run SDPA with its mask always built (`lib.model.attention`): its check would
    make the host wait for the GPU at every batch, and the host copies wait until the end.
    """
    was_training = model.training
    model.eval()
    forward = frozen_classifier(model) if compiled else functools.partial(classifier_logits, model)
    logits = np.full((len(data), model.config.num_labels), np.nan, dtype=np.float32)
    batches = prediction_batches(model, data, batch_size, precision, device)[part[0]::part[1]]
    chunks = []
    total = sum(len(rows) for rows in batches)
    attention = None if compiled else unchecked_attention(model, device)
    with torch.inference_mode(), progress_bar(total, desc, show_progress, unit="rows") as bar, \
            attention_implementation(model, attention, attention is not None and shares_one_config(model)):
        for rows in batches:
            batch = collate(data, rows)
            with autocast(precision, device):
                out = forward(to_device(batch["input_ids"], device), to_device(batch["attention_mask"], device))
            chunks.append((rows, out.float()))
            bar.update(len(rows))
    for rows, out in chunks:  # one host copy per batch, after the loop, keeps the GPU busy
        logits[rows] = out.cpu().numpy()
    model.train(was_training)
    return logits


def prediction_batches(model: PreTrainedModel, data: EncodedTexts, batch_size: int, precision: str,
                       device: torch.device) -> list[np.ndarray]:
    """Length-sorted batches of at most `batch_size` rows and, on a CPU, `prediction_token_budget` tokens
    for this model's widest activation in `precision`."""
    budget = prediction_token_budget(device, widest_linear(model) * (4 if precision == "fp32" else 2))
    return sorted_batches(data.lengths, batch_size, budget, data.pad_to_multiple_of)


def gathered_logits(model: PreTrainedModel, data: EncodedTexts, batch_size: int, precision: str,
                    device: torch.device, show_progress: bool, ctx: Distributed) -> np.ndarray:
    """Logits of every row on every process: each scores its share of the batches, all gather the whole."""
    parts = ctx.all_gather(predict_logits(model, data, batch_size, precision, device, "eval", show_progress,
                                          part=(ctx.rank, ctx.world_size)))
    for part in parts[1:]:  # each row was scored by exactly one process; the others hold NaN there
        parts[0] = np.where(np.isnan(parts[0]), part, parts[0])
    return parts[0]
