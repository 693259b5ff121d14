"""One metrics logger: `metrics.jsonl` for programs, TensorBoard for people."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    """Writes each record to both sinks with the same step (optimizer steps) as x-axis.

    A resumed run passes the step of its checkpoint: records logged after it by the interrupted
    process are dropped from both sinks, so the curves show each step once.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._jsonl = path.open("a", encoding="utf-8")
        purge = resume_step + 1 if resume_step is not None else None
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, split: str, step: int, epoch: float, values: dict[str, float]) -> None:
        record = {"split": split, "step": step, "epoch": round(epoch, 4), "time": time.time(), **values}
        self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        self._tensorboard.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        # TensorBoard renders text as markdown; indenting by four spaces keeps the table monospaced.
        self._tensorboard.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)
        self._tensorboard.flush()

    def close(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
            self._tensorboard.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a torn last line from a killed process
        return 1 << 62


def attach_log_file(path: Path) -> logging.Handler:
    """Copy the records of the `lib` loggers into a run's log file, at whatever level the caller set."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lib").addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger("lib").removeHandler(handler)
    handler.close()
