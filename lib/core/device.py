"""Device and precision: which device a run uses, which precision it trains in, and the autocast for it.

fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's range and
needs none; fp32 runs without autocast. Master weights stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ContextManager

import torch

from lib.core.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_FAST_FLAG = "amx_bf16"  # bench/precision.py: without AMX tiles (avx512_bf16 alone) bf16 ran slower than fp32
BF16_MIN_HIDDEN = 256  # bench/precision.py: from this width bf16 autocast trains faster than fp32 on AMX
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


def resolve_precision(requested: str, device: torch.device, hidden_size: int | None = None) -> tuple[str, str]:
    """The precision to train in and why. auto: bf16 on CUDA GPUs that support it, fp16 on older ones;
    on a CPU, `auto_cpu_precision` for a model `hidden_size` wide (None: unknown, fp32)."""
    if requested == "auto":
        if device.type == "cuda":
            return ("bf16", "auto: this GPU supports bf16") if torch.cuda.is_bf16_supported() else \
                ("fp16", "auto: this GPU has no bf16")
        return auto_cpu_precision(hidden_size, cpu_bf16_support())
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16: needs a CUDA device (use bf16 or fp32 on CPU)")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bf16 (use fp16)")
    return requested, "as asked"


def training_precision(requested: str, device: torch.device, model: torch.nn.Module) -> str:
    """`resolve_precision` for this model (its config's hidden_size), with the reason in the log."""
    precision, why = resolve_precision(requested, device, getattr(getattr(model, "config", None), "hidden_size", None))
    log.info("precision %s (%s)", precision, why)
    return precision


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The CPU's bf16 matrix instructions (AMX tiles, AVX-512 bf16), from /proc/cpuinfo (or the text given);
    empty where none or where the file does not exist (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def auto_cpu_precision(hidden_size: int | None, support: tuple[str, ...]) -> tuple[str, str]:
    """bf16 where bench/precision.py measured it faster than fp32 on a CPU: with AMX tiles and a model at
    least BF16_MIN_HIDDEN wide. Narrower models spend their step on casts and small kernels that bf16 does
    not speed up; with avx512_bf16 alone oneDNN's bf16 matrix products ran at about half fp32's speed."""
    if not support:
        return "fp32", "auto: this CPU has no bf16 matrix instructions (amx_bf16, avx512_bf16)"
    if BF16_FAST_FLAG not in support:
        return "fp32", f"auto: this CPU has {'+'.join(support)} but no {BF16_FAST_FLAG}; bf16 is slower than fp32 there"
    if hidden_size is None or hidden_size < BF16_MIN_HIDDEN:
        width = "of unknown width" if hidden_size is None else f"{hidden_size} wide"
        return "fp32", f"auto: the model is {width}; bf16 pays on this CPU from {BF16_MIN_HIDDEN} wide"
    return "bf16", f"auto: {'+'.join(support)} and a model {hidden_size} wide (bf16 pays from {BF16_MIN_HIDDEN})"


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without holding the host back. For a copy from pageable memory the CUDA
    driver stages the data itself and may first wait for the kernels already queued on the stream, so a
    batch bound for CUDA is page-locked here (a host copy of a few KiB) and then copied asynchronously;
    on a CPU it is `tensor` itself."""
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
