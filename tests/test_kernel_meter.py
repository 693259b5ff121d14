"""bench/throughput.py's kernel share (aten operators' time over the measured steps' wall time) and step sections."""

import time

import pytest
import torch

from bench.throughput import KernelMeter, StepSections


def _steps(meter: KernelMeter, work, count: int) -> None:
    for _ in range(count):
        work()
        meter.step_end()


def test_steps_of_matrix_products_are_almost_all_kernel_time():
    a = torch.randn(256, 256)
    meter = KernelMeter(skip=2, steps=5)
    _steps(meter, lambda: [a @ a for _ in range(20)], 8)
    assert meter.share() > 0.8


def test_host_work_between_kernels_lowers_the_share_by_its_time():
    a = torch.randn(64, 64)

    def step():
        a @ a
        time.sleep(0.02)  # host work: no aten operator runs

    meter = KernelMeter(skip=1, steps=5)
    _steps(meter, step, 7)
    assert meter.share() < 0.2
    assert meter.wall_seconds == pytest.approx(5 * 0.02, rel=0.5)


def test_a_run_shorter_than_the_window_says_so():
    meter = KernelMeter(skip=2, steps=10)
    _steps(meter, lambda: None, 5)
    with pytest.raises(RuntimeError, match="ended before step 12"):
        meter.share()


def test_step_sections_split_each_step_into_its_parts_and_the_loop():
    sections = StepSections(skip=2)
    forward = sections.timed("forward and backward", lambda: time.sleep(0.03))
    optimizer = sections.timed("clip and optimizer step", lambda: time.sleep(0.01))
    sections.step_end()  # the first step's end: intervals are measured from here
    for step in range(6):
        forward()
        optimizer()
        time.sleep(0.01)  # the loop's own work
        if step == 3:  # an evaluation: its interval is left out
            time.sleep(0.1)
            sections.evaluated()
        sections.step_end()
    shares = sections.shares()
    assert shares["steps"] == 4  # 6 intervals, less the skipped second step and the evaluated one
    assert shares["step_ms"] == pytest.approx(50, rel=0.3)
    assert shares["forward and backward"] == pytest.approx(0.6, abs=0.1)
    assert shares["clip and optimizer step"] == pytest.approx(0.2, abs=0.1)
    assert shares["the loop's own work"] == pytest.approx(0.2, abs=0.1)


def test_step_sections_of_a_run_too_short_say_so():
    sections = StepSections(skip=3)
    for _ in range(3):
        sections.step_end()
    with pytest.raises(RuntimeError, match="ended before step 5"):
        sections.shares()
