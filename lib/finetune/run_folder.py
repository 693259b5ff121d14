"""The run folder: the contract between train.py and everything that reads runs.

A run trains in `<output_dir>/<name>.incomplete/` and is renamed to `<output_dir>/<name>/` only
when `result.json` is written, so a folder without that suffix is always a finished run. Layout:

    config.json        the resolved TrainConfig (never changed afterwards)
    plan.json          values derived from it: label set, max length, steps, warmup, lr, precision
    environment.json   versions, device, command line, git commit
    preprocessor.json  the fitted text preprocessor
    initial_weights.json  the model, --init-seed and digests of the initial backbone and head (soups check it)
    wandb_run.json     with --report-to wandb: the W&B run id a resumed run continues
    tokenizer/         the tokenizer (save_pretrained), special tokens included
    best/              the selected model + tokenizer (save_pretrained)
    last/              the latest weights (save_pretrained) and training_state.pt, for --resume
    metrics.jsonl      one line per logged train/val record
    tensorboard/       TensorBoard event files
    val_logits.npz     ids, labels and fp32 logits of the validation rows, from best/
    result.json        best step, metrics, report, timings
    submission.csv     when --test-file was given
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.core.errors import UserError
from lib.core.files import existing_directory
from lib.loop import work_folder
from lib.loop.work_folder import INCOMPLETE_SUFFIX


@dataclass(frozen=True)
class RunFolder:
    path: Path

    config = property(lambda self: self.path / "config.json")
    plan = property(lambda self: self.path / "plan.json")
    environment = property(lambda self: self.path / "environment.json")
    preprocessor = property(lambda self: self.path / "preprocessor.json")
    initial_weights = property(lambda self: self.path / "initial_weights.json")
    tokenizer = property(lambda self: self.path / "tokenizer")
    best = property(lambda self: self.path / "best")
    last = property(lambda self: self.path / "last")
    val_logits = property(lambda self: self.path / "val_logits.npz")
    result = property(lambda self: self.path / "result.json")
    submission = property(lambda self: self.path / "submission.csv")

    @property
    def training_state(self) -> Path:
        last = existing_directory(self.last) or self.last
        return last / "training_state.pt"

    @property
    def is_finished(self) -> bool:
        return self.result.is_file() and not self.path.name.endswith(INCOMPLETE_SUFFIX)

    @property
    def final_path(self) -> Path:
        return work_folder.final_path(self.path)

    def write_json(self, path: Path, data: dict) -> None:
        work_folder.write_json(path, data)

    def read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.path}: missing {path.name}; not a run folder written by train.py") from None
        except ValueError:
            raise UserError(f"{path}: corrupt JSON") from None

    def save_val_logits(self, ids: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> None:
        tmp = self.val_logits.with_name("val_logits.tmp.npz")
        np.savez(tmp, ids=ids.astype(str), labels=labels, logits=logits.astype(np.float32))
        os.replace(tmp, self.val_logits)


def default_run_name(model: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"


def new_run_folder(output_dir: str, run_name: str | None, model: str, overwrite: bool) -> RunFolder:
    """Choose and create the `.incomplete` folder of a new run; refuses to clobber without --overwrite."""
    root = Path(output_dir)
    name = run_name or default_run_name(model)
    if not run_name:
        suffix = 2
        while (root / name).exists() or (root / (name + INCOMPLETE_SUFFIX)).exists():
            name, suffix = f"{default_run_name(model)}-{suffix}", suffix + 1
    if "/" in name or name in ("", ".", ".."):
        raise UserError(f"--run-name: expected a plain folder name, got {name!r}")
    return RunFolder(work_folder.create(work_folder.claim(root / name, overwrite, "--run-name", "train.py")))


def open_unfinished(path: Path) -> RunFolder:
    """The folder named by --resume: `runs/x.incomplete`, or `runs/x` when only the former exists."""
    path = work_folder.unfinished(path)
    if not path.is_dir():
        raise UserError(f"--resume: no run folder at {path}")
    run = RunFolder(path)
    if run.is_finished or (run.result.is_file()):
        raise UserError(f"--resume: {path} is a finished run; nothing to resume")
    if not run.config.is_file():
        raise UserError(f"--resume: {path} has no config.json; not a run folder written by train.py")
    return run


def finish(run: RunFolder, overwrite: bool) -> RunFolder:
    """Rename `x.incomplete` to `x`: the moment the run becomes visible as finished."""
    return RunFolder(work_folder.finish(run.path, overwrite))
