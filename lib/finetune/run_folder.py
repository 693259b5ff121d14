"""The run folder: the contract between train.py and everything that reads runs.

A run trains in `<output_dir>/<name>.incomplete/` and is renamed to `<output_dir>/<name>/` only
when `result.json` is written, so a folder without that suffix is always a finished run. Layout:

    config.json        the resolved TrainConfig (never changed afterwards)
    plan.json          values derived from it: label set, max length, steps, warmup, lr, precision
    environment.json   versions, device, command line, git commit
    preprocessor.json  the fitted text preprocessor
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
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.core.errors import UserError
from lib.core.files import atomic_write_text, existing_directory

INCOMPLETE_SUFFIX = ".incomplete"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunFolder:
    path: Path

    config = property(lambda self: self.path / "config.json")
    plan = property(lambda self: self.path / "plan.json")
    environment = property(lambda self: self.path / "environment.json")
    preprocessor = property(lambda self: self.path / "preprocessor.json")
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
        name = self.path.name
        return self.path.with_name(name[:-len(INCOMPLETE_SUFFIX)] if name.endswith(INCOMPLETE_SUFFIX) else name)

    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

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
    final, work = root / name, root / (name + INCOMPLETE_SUFFIX)
    if not overwrite:
        if final.exists():
            raise UserError(f"--run-name: {final} already exists; choose another name or pass --overwrite")
        if work.exists():
            raise UserError(f"--run-name: an unfinished run {work} exists; resume it with "
                            f"python train.py --resume {work}, or pass --overwrite")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return RunFolder(work)


def open_unfinished(path: Path) -> RunFolder:
    """The folder named by --resume: `runs/x.incomplete`, or `runs/x` when only the former exists."""
    if not path.name.endswith(INCOMPLETE_SUFFIX) and not path.exists():
        path = path.with_name(path.name + INCOMPLETE_SUFFIX)
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
    final = run.final_path
    if final.exists():
        if not overwrite:
            raise UserError(f"{final} appeared while this run trained; the run stays at {run.path}")
        shutil.rmtree(final)
    os.replace(run.path, final)
    return RunFolder(final)


def environment_record(device: torch.device, argv: list[str], world_size: int = 1) -> dict:
    import tokenizers
    import transformers

    record = {
        "command": [Path(sys.argv[0]).name, *argv],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "git_commit": _git(["rev-parse", "HEAD"]),
        "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        record["cuda_device"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
