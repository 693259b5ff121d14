"""The evaluations' checkpoints of one fine-tuning run, and which of them are kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from lib.core.files import atomic_directory


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
        with atomic_directory(self.folder(step)) as folder:
            model.save_pretrained(folder)
            np.save(folder / "val_logits.npy", logits)

    def logits(self, step: int):
        return np.load(self.folder(step) / "val_logits.npy")

    def prune(self, keep: set[int]) -> None:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.name.startswith("step-") or not folder.name[5:].isdigit() or int(folder.name[5:]) not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
