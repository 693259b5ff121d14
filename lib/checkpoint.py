"""Atomic writes and the training-state checkpoint.

Everything is written to a temporary name and renamed, so a crash leaves either the old file or
the new one, never half of one. Training state is a plain dict of tensors, numbers and strings,
loaded with `weights_only=True`; model weights go through `save_pretrained` (safetensors).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from lib.errors import UserError

STATE_FORMAT = "textclf-training-state"
STATE_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces `path` (the previous copy survives a crash)."""
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def existing_directory(path: Path) -> Path | None:
    """`path`, or the previous copy kept while `atomic_directory` was swapping it in."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None


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


class CheckpointStore:
    """Weights and validation logits of evaluations, in `checkpoints/step-N/`, pruned as the run goes.

    Selection rules and weight averaging may need a checkpoint from an earlier evaluation; the
    store keeps exactly the ones the caller still needs and nothing else.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def save(self, step: int, model: torch.nn.Module, logits) -> None:
        import numpy as np

        with atomic_directory(self.folder(step)) as folder:
            model.save_pretrained(folder)
            np.save(folder / "val_logits.npy", logits)

    def logits(self, step: int):
        import numpy as np

        return np.load(self.folder(step) / "val_logits.npy")

    def prune(self, keep: set[int]) -> None:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.name.startswith("step-") or not folder.name[5:].isdigit() or int(folder.name[5:]) not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
