"""Micro-batch objectives of a fine-tuning run beyond the plain one (lib.loop.step.ClassifierObjective).

R-Drop (Liang et al. 2021): the batch goes through the model twice, so the two passes see different
dropout masks, and the loss adds their disagreement:

    l_i = 1/2 * [L(z1_i, y_i) + L(z2_i, y_i)] + alpha * 1/2 * [KL(p1_i || p2_i) + KL(p2_i || p1_i)]
    p_k = softmax(z_k),   KL(p || q) = sum_c p_c * (log p_c - log q_c)
    batch loss = weight * sum_i l_i, through `share.backward` (so divided by the window's rows)

L is the run's per-sample loss (focal loss, class weights, label smoothing and soft targets as
without R-Drop), so with alpha 0 this is the plain loss averaged over two passes, and with dropout 0
(z1 = z2, the KL term is exactly 0) it is exactly ClassifierObjective. Over a window, the loss is the
mean over rows of l_i: the paper's per-example form; the KL is averaged over rows like the task loss
(F.kl_div's "batchmean"), not summed over the batch as the official README writes it, so alpha
does not grow with the batch size. Both passes are differentiated, as in the official code; the
KL is computed in fp32 (as fairseq's) whatever the autocast dtype of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.core.device import autocast, to_device
from lib.loop.step import WindowShare


class RDropObjective:
    """Two forward passes of each micro-batch plus alpha times their symmetric KL (module docstring).

    The passes are two calls of the model, not one call on the batch stacked twice (the research
    notes' choice): with dropout off their logits are then bit-identical to a single pass (a GEMM over
    twice the rows rounds differently). Under DDP two forwards before one backward still reduce each
    gradient once: the autograd engine sums both uses of a weight before DDP's hook sees it.
    A batch's `weight` (0 for a DDP placeholder row) multiplies the whole loss.
    """

    def __init__(self, loss_fn: torch.nn.Module, alpha: float, precision: str, device: torch.device) -> None:
        self.loss_fn, self.alpha, self.precision, self.device = loss_fn, alpha, precision, device

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        input_ids = to_device(batch["input_ids"], self.device)
        attention_mask = to_device(batch["attention_mask"], self.device)
        with autocast(self.precision, self.device):
            first = model(input_ids=input_ids, attention_mask=attention_mask).logits
            second = model(input_ids=input_ids, attention_mask=attention_mask).logits
        labels = to_device(batch["labels"], self.device)
        per_sample = 0.5 * (self.loss_fn(first, labels) + self.loss_fn(second, labels))
        if self.alpha:
            per_sample = per_sample + self.alpha * symmetric_kl(first, second)
        loss = per_sample.sum() * batch.get("weight", 1.0)
        share.backward(loss)
        return loss.detach()


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per row, 1/2 [KL(p || q) + KL(q || p)] of p = softmax(first), q = softmax(second), in fp32 or wider.

    The two KLs summed are sum_c (p_c - q_c)(log p_c - log q_c): one expression, exactly 0 when the
    logits are equal.
    """
    dtype = torch.promote_types(first.dtype, torch.float32)
    log_p, log_q = F.log_softmax(first.to(dtype), dim=-1), F.log_softmax(second.to(dtype), dim=-1)
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)
