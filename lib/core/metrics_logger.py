"""One metrics logger: `metrics.jsonl` for programs, TensorBoard for people, W&B when asked for."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from torch.utils.tensorboard import SummaryWriter

from lib.core.options import csv_strings
from lib.core.wandb_sink import WandbSink, check_sweep_values, require_wandb

log = logging.getLogger(__name__)

REPORT_TO = ("tensorboard", "wandb")
REPORT_TO_EXPECTED = "comma-separated names among {tensorboard, wandb}, or none"


def parse_report_to(text: str) -> tuple[str, ...]:
    """`--report-to`: the sinks beside metrics.jsonl, which is always written; 'none' is no other."""
    names = csv_strings(text)
    if "none" in names and names != ("none",):
        raise ValueError(text)
    return () if names == ("none",) else names


def check_reporting(report_to: Sequence[str], config: Any) -> None:
    """Refuse, before any work is done, a sink whose optional package is missing and, under a W&B
    agent, a run whose options (`config`) differ from the sweep's values."""
    if "wandb" in report_to:
        require_wandb()
        check_sweep_values(config)


class MetricsLogger:
    """Writes each record to every sink with the same step (optimizer steps) as x-axis.

    A resumed run passes the step of its checkpoint: records logged after it by the interrupted
    process are dropped from metrics.jsonl and TensorBoard, so the curves show each step once (a W&B
    run keeps what it was sent). W&B also gets the run's `name`, its resolved `config` (an options
    dataclass) and `plan`, and the final result as its summary.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, report_to: Sequence[str] = ("tensorboard",),
                 name: str | None = None, config: Any = None, plan: dict | None = None) -> None:
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if "wandb" not in report_to and os.environ.get("WANDB_SWEEP_ID"):
            log.warning("a W&B agent started this run (WANDB_SWEEP_ID is set), but it does not report to W&B, so "
                        "the sweep will not see its metric: give --report-to tensorboard,wandb")
        self._wandb = (WandbSink(run_dir, name or run_dir.name, config, plan or {}, resume_step is not None)
                       if "wandb" in report_to else None)
        purge = resume_step + 1 if resume_step is not None else None
        self._tensorboard = (SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
                             if "tensorboard" in report_to else None)
        self._jsonl = path.open("a", encoding="utf-8")

    def log(self, split: str, step: int, epoch: float, values: dict[str, float]) -> None:
        record = {"split": split, "step": step, "epoch": round(epoch, 4), "time": time.time(), **values}
        self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(split, step, record["epoch"], values)

    def text(self, tag: str, text: str, step: int) -> None:
        """A text record (the final report) for TensorBoard; W&B gets the report in its summary."""
        if self._tensorboard is not None:
            # TensorBoard renders text as markdown; indenting by four spaces keeps the table monospaced.
            self._tensorboard.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)
            self._tensorboard.flush()

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final result, as W&B's run summary."""
        if self._wandb is not None:
            self._wandb.summary(values)

    def close(self) -> None:
        if not self._jsonl.closed:
            self._jsonl.close()
            if self._tensorboard is not None:
                self._tensorboard.close()
            if self._wandb is not None:
                self._wandb.close()


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
