"""The evaluations' checkpoints of one fine-tuning run: the one owner of what is kept and of best/.

Every evaluation saves its weights and validation logits under `checkpoints/step-N/`. Selection
(under --max-loss-increase it can still move back to an earlier evaluation) and SWA over K epoch
ends (the last K, or with --swa-select best|greedy those that can still rank among the K best) may
need an earlier checkpoint; the store keeps exactly those, deletes the rest, and copies the
selected one to `best/` the moment the selection changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lib.core.files import atomic_directory
from lib.finetune.selection import CheckpointSelector

LOGITS_FILE = "val_logits.npy"


class CheckpointStore:
    def __init__(self, root: Path, best: Path, tokenizer: PreTrainedTokenizerBase, selector: CheckpointSelector,
                 swa_last_k: int, swa_select: str = "last") -> None:
        self.root, self.best, self.tokenizer = root, best, tokenizer
        self.selector, self.swa_last_k, self.swa_select = selector, swa_last_k, swa_select

    def folder(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def save(self, step: int, model: torch.nn.Module, logits: np.ndarray) -> None:
        with atomic_directory(self.folder(step)) as folder:
            model.save_pretrained(folder)
            np.save(folder / LOGITS_FILE, logits)

    def logits(self, step: int) -> np.ndarray:
        return np.load(self.folder(step) / LOGITS_FILE)

    def select(self, step: int) -> None:
        """Make checkpoint `step` the run's `best/` (model + tokenizer, as `from_pretrained` reads it)."""
        with atomic_directory(self.best) as folder:
            shutil.copytree(self.folder(step), folder, dirs_exist_ok=True)
            (folder / LOGITS_FILE).unlink()
            self.tokenizer.save_pretrained(folder)

    def prune(self, epoch_end_steps: list[int]) -> None:
        """Delete every checkpoint that neither selection nor the post-hoc SWA can still use."""
        if not self.swa_last_k:
            averaged = set()
        elif self.swa_select == "last":
            averaged = set(epoch_end_steps[-self.swa_last_k:])
        else:
            averaged = self.selector.may_rank_among_best(epoch_end_steps, self.swa_last_k)
        keep = self.selector.may_be_selected_later() | averaged
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.name.startswith("step-") or not folder.name[5:].isdigit() or int(folder.name[5:]) not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
