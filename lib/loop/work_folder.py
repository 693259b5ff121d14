"""The life cycle of an output folder: written as `<name>.incomplete/`, renamed to `<name>/` when done.

A folder without the suffix is therefore always finished. Fine-tuning runs and pretrained models
share this life cycle, the refusal to clobber without --overwrite, and the environment record.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lib.core.errors import UserError
from lib.core.files import atomic_write_text

INCOMPLETE_SUFFIX = ".incomplete"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def final_path(work: Path) -> Path:
    name = work.name
    return work.with_name(name[:-len(INCOMPLETE_SUFFIX)] if name.endswith(INCOMPLETE_SUFFIX) else name)


def claim(final: Path, overwrite: bool, flag: str, script: str) -> Path:
    """The `.incomplete` folder for `final`; refuses a finished or unfinished namesake without --overwrite."""
    work = final.with_name(final.name + INCOMPLETE_SUFFIX)
    if not overwrite:
        if final.exists():
            raise UserError(f"{flag}: {final} already exists; choose another name or pass --overwrite")
        if work.exists():
            raise UserError(f"{flag}: an unfinished run {work} exists; resume it with "
                            f"python {script} --resume {work}, or pass --overwrite")
    return work


def create(work: Path) -> Path:
    """Start `work` empty (an --overwrite replaces what was there)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def unfinished(path: Path) -> Path:
    """The folder named by --resume: `x.incomplete`, or `x` when only the former exists."""
    if not path.name.endswith(INCOMPLETE_SUFFIX) and not path.exists():
        path = path.with_name(path.name + INCOMPLETE_SUFFIX)
    return path


def finish(work: Path, overwrite: bool) -> Path:
    """Rename `x.incomplete` to `x`: the moment the run becomes visible as finished."""
    final = final_path(work)
    if final.exists():
        if not overwrite:
            raise UserError(f"{final} appeared while this run trained; the run stays at {work}")
        shutil.rmtree(final)
    os.replace(work, final)
    return final


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
