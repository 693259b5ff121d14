"""bench/throughput.py's options: both sides on the one GPU asked for, the preset's learning rate, and what
it refuses before any work."""

import pytest
import torch

from bench import throughput
from lib.core.cli import run_cli
from lib.core.errors import UserError


@pytest.fixture
def three_gpus(monkeypatch):
    """A machine that shows three GPUs, 4, 5 and 6 of a larger node."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")


@pytest.mark.parametrize("requested, visible", [("cuda", "4"), ("auto", "4"), ("cuda:0", "4"), ("cuda:2", "6")])
def test_each_side_sees_only_the_gpu_asked_for(three_gpus, requested, visible):
    assert throughput._one_device(requested) == "cuda"
    assert throughput.os.environ["CUDA_VISIBLE_DEVICES"] == visible


def test_a_gpu_beyond_those_visible_is_refused_with_the_range(three_gpus):
    with pytest.raises(UserError, match=r"--device cuda:3: 3 CUDA GPU\(s\) visible here; expected cuda:0 to cuda:2"):
        throughput._one_device("cuda:3")


def test_cpu_runs_leave_the_visible_gpus_alone(three_gpus):
    assert throughput._one_device("cpu") == "cpu"
    assert throughput.os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "error: --device: expected auto, cpu or cuda[:N], got 'gpu'"),
    (["--precision", "fp16", "--device", "cpu"], "error: --precision fp16: needs a CUDA device"),
])
def test_bad_devices_and_precisions_exit_2_before_any_work(argv, message, tmp_path, capsys):
    assert run_cli(throughput.main, [*argv, "--workdir", str(tmp_path / "work")]) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "work").exists()


def test_the_kernels_part_is_refused_on_a_gpu(three_gpus, tmp_path, capsys):
    assert run_cli(throughput.main, ["--parts", "kernels", "--device", "cuda", "--workdir", str(tmp_path / "w")]) == 2
    assert "error: --parts kernels: measures CPU kernels only; expected --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("preset, flags, rate", [("tiny", [], 1e-3), ("mini", [], 3e-4), ("base", [], 5e-5),
                                                 ("mini", ["--lr", "1e-4"], 1e-4)])
def test_the_runs_train_at_the_presets_rate_unless_lr_is_given(preset, flags, rate, tmp_path):
    """The runs load the initial model from a folder, which alone would get a pretrained model's rate."""
    args = throughput.build_parser().parse_args(["--preset", preset, *flags])
    args.device = "cpu"
    assert throughput._base_config(args, tmp_path)["learning_rate"] == rate
