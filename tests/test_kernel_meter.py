"""bench/throughput.py's kernel share: aten operators' time over the measured steps' wall time."""

import time

import pytest
import torch

from bench.throughput import KernelMeter


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
