"""The shared loop skeleton: what it calls after each step, its one exit, and a resume that continues."""

import pytest

from lib.core.distributed import Distributed
from lib.loop.skeleton import run_loop
from lib.loop.state import LoopPosition
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep


class Recorder:
    """A task of `epochs` x `windows` steps that logs every call the skeleton makes."""

    def __init__(self, position, windows=3, epochs=2, eval_every=None, stop_after_eval_at=None):
        self.position, self.n_windows, self.epochs = position, windows, epochs
        self.eval_every, self.stop_after_eval_at = eval_every, stop_after_eval_at
        self.calls, self.stopped = [], False

    def windows(self, epoch):
        return [f"e{epoch}w{i}" for i in range(self.n_windows)]

    def train_step(self, window):
        self.calls.append(("step", window))

    def done(self):
        return self.stopped or self.position.epoch >= self.epochs

    def evaluation_due(self, step, epoch_ended):
        return self.eval_every is not None and step % self.eval_every == 0

    def evaluate(self):
        self.calls.append(("eval", self.position.global_step))
        self.stopped = self.position.global_step == self.stop_after_eval_at

    def epoch_ended(self, epoch):
        self.calls.append(("epoch", epoch))

    def checkpoint(self):
        self.calls.append(("checkpoint", self.position.global_step))


def _run(task, stop=None):
    run_loop(task, task.position, stop or StopAtStep(10 ** 9), Distributed(), TrainingInterrupted("run"))


def test_the_last_step_is_evaluated_and_checkpointed_through_the_periodic_path():
    task = Recorder(LoopPosition(), eval_every=2)
    _run(task)
    assert task.calls == [
        ("step", "e0w0"), ("step", "e0w1"), ("eval", 2), ("checkpoint", 2), ("step", "e0w2"), ("epoch", 0),
        ("checkpoint", 3), ("step", "e1w0"), ("eval", 4), ("checkpoint", 4), ("step", "e1w1"),
        ("step", "e1w2"), ("eval", 6), ("epoch", 1), ("checkpoint", 6)]
    assert (task.position.epoch, task.position.windows_done, task.position.global_step) == (2, 0, 6)


def test_a_stop_from_an_evaluation_ends_mid_epoch_and_counts_as_an_epoch_end():
    task = Recorder(LoopPosition(), eval_every=2, stop_after_eval_at=4)
    _run(task)
    assert task.calls[-3:] == [("eval", 4), ("epoch", 1), ("checkpoint", 4)]
    assert task.position.global_step == 4


def test_a_stop_request_checkpoints_and_a_resume_continues_with_the_next_window():
    position = LoopPosition()
    first = Recorder(position)
    with pytest.raises(TrainingInterrupted):
        _run(first, StopAtStep(2))
    assert first.calls == [("step", "e0w0"), ("step", "e0w1"), ("checkpoint", 2)]
    second = Recorder(position)
    _run(second)
    assert [call for call in second.calls if call[0] == "step"] == [
        ("step", "e0w2"), ("step", "e1w0"), ("step", "e1w1"), ("step", "e1w2")]
    assert position.global_step == 6


def test_a_stop_request_at_an_epoch_end_resumes_in_the_next_epoch():
    position = LoopPosition()
    with pytest.raises(TrainingInterrupted):
        _run(Recorder(position), StopAtStep(3))
    assert (position.epoch, position.windows_done) == (1, 0)
    resumed = Recorder(position)
    _run(resumed)
    assert resumed.calls[0] == ("step", "e1w0")
