"""Focal loss with per-class alpha and label smoothing; cross entropy is its gamma=0, alpha=1 case.

Soft-target form (Lin et al. 2017 with the smoothed target of Mueller et al. 2019):
    L_i = - sum_c alpha_c * q_ic * (1 - p_ic)^gamma * log p_ic,   q_i = (1 - eps) onehot(y_i) + eps / K
At gamma=0 this is exactly `F.cross_entropy(weight=alpha, label_smoothing=eps, reduction="sum")`.
`labels` may also be class probabilities (rows x classes: a teacher's soft targets), which take
the place of onehot(y_i).
The loss returns per-sample values; the caller divides their sum by the number of samples in the
accumulation window, which keeps a short last window exact.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.errors import UserError


class FocalLoss(nn.Module):
    def __init__(self, num_classes: int, gamma: float = 0.0, alpha: Sequence[float] | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if alpha is not None and len(alpha) != num_classes:
            raise UserError(f"--alpha: {len(alpha)} weights given, expected one per class ({num_classes})")
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        weights = torch.ones(num_classes) if alpha is None else torch.tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", weights, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample losses in fp32 (fp64 for fp64 input), whatever the dtype of `logits`."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        log_p = F.log_softmax(logits.to(dtype), dim=-1)
        target = labels.to(dtype) if labels.dim() == 2 else F.one_hot(labels, self.num_classes).to(dtype)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        weight = target * self.alpha.to(dtype)
        if self.gamma:
            # 1 - p via expm1 is exact near p = 1; the clamp keeps d/dp of (1-p)^gamma finite for gamma < 1.
            weight = weight * (-torch.expm1(log_p)).clamp_min(1e-12).pow(self.gamma)
        return -(weight * log_p).sum(dim=-1)


def auto_alpha(class_counts: Sequence[int]) -> list[float]:
    """Inverse class frequency, scaled to average 1 so the loss stays on the cross-entropy scale."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if (counts == 0).any():
        raise UserError("--alpha auto: a class has no training rows; give explicit weights")
    inverse = 1.0 / counts
    return (inverse * len(counts) / inverse.sum()).tolist()
