"""Logits for a whole split: sorted by length, under inference mode and the run's precision."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel

from lib.amp import autocast
from lib.batching import EncodedTexts, collate, sorted_batches
from lib.progress import progress_bar


def predict_logits(model: PreTrainedModel, data: EncodedTexts, batch_size: int, precision: str,
                   device: torch.device, desc: str, show_progress: bool) -> np.ndarray:
    """fp32 logits in the rows' original order, whatever order the batches ran in."""
    was_training = model.training
    model.eval()
    logits = np.empty((len(data), model.config.num_labels), dtype=np.float32)
    batches = sorted_batches(data.lengths, batch_size)
    chunks = []
    with torch.inference_mode(), progress_bar(len(data), desc, show_progress, unit="rows") as bar:
        for rows in batches:
            batch = collate(data, rows)
            with autocast(precision, device):
                out = model(input_ids=batch["input_ids"].to(device, non_blocking=True),
                            attention_mask=batch["attention_mask"].to(device, non_blocking=True)).logits
            chunks.append((rows, out.float()))
            bar.update(len(rows))
    for rows, out in chunks:  # one host copy per batch, after the loop, keeps the GPU busy
        logits[rows] = out.cpu().numpy()
    model.train(was_training)
    return logits
