"""Stopping a loop on request: Ctrl-C or SIGTERM saves the state after the current step, a pruner ends a run."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class StopRequest:
    """Asks the loop to stop: after the current optimizer step with a checkpoint (Ctrl-C sets it),
    or for good after an evaluation (a sweep's pruner overrides `prune_after`)."""

    def __init__(self) -> None:
        self.requested = False

    def should_stop(self, global_step: int) -> bool:
        return self.requested

    def prune_after(self, step: int, epoch: float, metrics: dict[str, float]) -> bool:
        """Called after every evaluation; True ends training there and finishes the run as pruned."""
        return False

    @contextmanager
    def on_stop_signals(self, repeat_aborts: bool = True) -> Iterator[None]:
        """First Ctrl-C or SIGTERM (what `kill` and job schedulers send before preempting): stop cleanly
        after this step and save. A second one aborts at once, unless `repeat_aborts` is False (a
        torchrun rank, to which torchrun, a job scheduler and the parent's death may each send one)."""
        def handler(signum, frame):
            if self.requested and repeat_aborts:
                raise KeyboardInterrupt
            if not self.requested:
                log.warning("%s: saving state after this step%s", signal.Signals(signum).name,
                            " (send it again to abort without saving)" if repeat_aborts else "")
            self.requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class TrainingInterrupted(Exception):
    """Raised after the state was saved on request; carries the folder to resume."""

    def __init__(self, run_path: Path, script: str = "train.py") -> None:
        super().__init__(f"interrupted; resume with: python {script} --resume {run_path}")
        self.run_path = run_path
