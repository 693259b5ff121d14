"""Device and precision: which device a run uses, which precision it trains in, and the autocast for it.

fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's range and
needs none; fp32 runs without autocast. Master weights stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from lib.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_FORMS = "auto, cpu or cuda[:N]"


def parse_device(text: str) -> str:
    """A --device value as written: auto, cpu, cuda or cuda:N; whether CUDA is there is checked at the start."""
    index = text[len("cuda:"):] if text.startswith("cuda:") else ""
    if text not in ("auto", "cpu", "cuda") and not index.isdigit():
        raise ValueError(text)
    return text


def resolve_device(requested: str) -> torch.device:
    try:
        parse_device(requested)
    except ValueError:
        raise UserError(f"--device: expected {DEVICE_FORMS}, got {requested!r}") from None
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU."""
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16: needs a CUDA device (use bf16 or fp32 on CPU)")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bf16 (use fp16)")
    return requested


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
