"""The loop every training run shares: epochs, accumulation windows, a step, evaluation when due,
checkpoints, stop on request, and one exit.

The final evaluation and checkpoint go through the same code as the periodic ones (the step that
ends the run is simply the last one due), so a run that finished, stopped early or ran out of time
leaves the same kind of state as one interrupted between two steps. What a step, an evaluation or
a checkpoint means is the task's; the skeleton owns only the order and the loop position.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from lib.core.distributed import Distributed
from lib.loop.state import LoopPosition
from lib.loop.stop import StopRequest, TrainingInterrupted


class LoopTask(Protocol):
    """What a training loop supplies to `run_loop`."""

    def windows(self, epoch: int) -> Sequence[object]:
        """The accumulation windows of `epoch`, rebuilt identically on resume."""

    def train_step(self, window: object) -> None:
        """One optimizer step over `window`; the task updates its own counters (not the position)."""

    def done(self) -> bool:
        """Whether training ends here: budget spent, stopped early, pruned or out of time."""

    def evaluation_due(self, step: int, epoch_ended: bool) -> bool:
        """Whether the periodic evaluation falls on this step (the last step is always evaluated)."""

    def evaluate(self) -> None:
        """Score the current weights; may make `done()` true (early stopping, pruning)."""

    def epoch_ended(self, epoch: int) -> None:
        """Called at each epoch end (0-based `epoch`) and at the end of training, which counts as one."""

    def checkpoint(self) -> None:
        """Save everything a resume needs."""


def run_loop(task: LoopTask, position: LoopPosition, stop: StopRequest, ctx: Distributed,
             interrupted: TrainingInterrupted) -> None:
    """Train `task` from `position` until it is done; raises `interrupted` after a stop request.

    After each step, in this order: evaluate if due (always on the last step), the epoch-end hook,
    a checkpoint after any of them, then the stop request. A checkpoint taken at an epoch's last
    window resumes into the next epoch.
    """
    while not task.done():
        windows = task.windows(position.epoch)
        if position.windows_done >= len(windows):  # saved after an epoch's last window by an older version
            position.epoch, position.windows_done = position.epoch + 1, 0
            continue
        for window in windows[position.windows_done:]:
            task.train_step(window)
            position.global_step += 1
            position.windows_done += 1
            ended_epoch = position.epoch if position.windows_done == len(windows) else None
            if ended_epoch is not None:
                position.epoch, position.windows_done = position.epoch + 1, 0
            last = task.done()
            evaluated = last or task.evaluation_due(position.global_step, ended_epoch is not None)
            if evaluated:
                task.evaluate()
                last = task.done()
            if ended_epoch is not None or last:
                task.epoch_ended(ended_epoch if ended_epoch is not None else position.epoch)
            if evaluated or ended_epoch is not None:
                task.checkpoint()
            if last:
                return
            if ctx.any(stop.should_stop(position.global_step)):
                if not (evaluated or ended_epoch is not None):
                    task.checkpoint()
                ctx.barrier()  # no process leaves (and tears down its process group) while rank 0 still saves
                raise interrupted
