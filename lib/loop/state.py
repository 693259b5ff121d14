"""Where a training loop stands, and the training-state file that carries it across a resume.

Training state is a plain dict of tensors, numbers and strings, loaded with `weights_only=True`;
model weights go through `save_pretrained` (safetensors) beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.core.errors import UserError

STATE_FORMAT = "textclf-training-state"
STATE_VERSION = 3  # 3: the loop state no longer carries last_eval_step


@dataclass
class LoopPosition:
    """Where a training loop stands, saved with every checkpoint: a resumed run rebuilds the epoch's
    batches from (seed, epoch) and skips the accumulation windows already done."""

    epoch: int = 0
    windows_done: int = 0  # accumulation windows finished in `epoch`
    global_step: int = 0
    schedule_step: int = 0  # optimizer steps actually applied (fp16 overflow steps do not count)


def save_state(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """Load a training state we wrote; anything else is refused with one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--resume: no training state at {path}") from None
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise UserError(f"--resume: {path} is not a readable training state ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"--resume: {path} is not a training state written by train.py")
    if state.get("version") != STATE_VERSION:
        raise UserError(f"--resume: {path} has state version {state.get('version')}, expected {STATE_VERSION}")
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
