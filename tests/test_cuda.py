"""The CUDA paths for real: AMP training in fp16 (with its GradScaler) and bf16, an fp16 step and a BERT
training step without a host sync, prediction on the GPU (eager and compiled) against the CPU's, and page-locked batch copies. Skipped without a GPU; scripts/gpu_check.sh
runs them where one is lent."""

import json
import math

import numpy as np
import pytest
import torch

import predict
from lib.core.cli import run_cli
from lib.core.device import to_device
from lib.data.batching import collate
from lib.finetune.losses import FocalLoss
from lib.model.attention import SDPA_WITHOUT_MASK_CHECK
from lib.model.step_kernels import TrainingKernels
from lib.finetune.trainer import resume, train_new
from lib.loop.step import AppliedSteps, ClassifierObjective, WindowShare, accumulate_window, optimizer_step
from lib.loop.state import load_state
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config
from tests.tiny_encoders import random_encoded, tiny_bert

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_training_on_cuda_learns_the_toy_task(toy_data, tmp_path, precision):
    run = train_new(tiny_config(toy_data, tmp_path, device="cuda", precision=precision))
    plan = json.loads(run.plan.read_text())
    assert (plan["device"], plan["precision"]) == ("cuda", precision)
    result = json.loads(run.result.read_text())
    assert result["best"]["accuracy"] > 0.9  # chance is 0.25
    records = [json.loads(line) for line in run.path.joinpath("metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_fp16_overflow_steps_leave_the_schedule_behind_and_a_resume_continues(toy_data, tmp_path):
    """fp16's scaler starts at 2**16 and halves at every step it skips for inf/NaN gradients (it grows
    only after 2000 clean steps); a skipped step must not advance the schedule (docs/design.md), so the
    schedule trails the optimizer by exactly the halvings. The interrupted run resumes on the GPU."""
    cfg = tiny_config(toy_data, tmp_path, device="cuda", precision="fp16")
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(cfg, stop=StopAtStep(12))
    state = load_state(interrupted.value.run_path / "last" / "training_state.pt")
    halvings = round(math.log2(2.0 ** 16 / state["scaler"]["scale"]))
    assert state["loop"]["global_step"] == 12
    assert state["loop"]["schedule_step"] == 12 - halvings
    resumed = resume(interrupted.value.run_path)
    assert json.loads(resumed.result.read_text())["best"]["accuracy"] > 0.9


def test_an_fp16_step_on_cuda_never_makes_the_host_wait_for_the_gpu():
    """torch's sync debug mode raises at any host sync. The fused AdamW step under the scaler, with an
    overflow and without, and the skip counter's non-blocking copy must make none; only settling waits."""
    model = torch.nn.Linear(64, 8).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    applied = AppliedSteps()
    for overflow in (True, False):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(torch.randn(16, 64, device="cuda")).float().sum()
        scaler.scale(loss).backward()
        if overflow:
            model.bias.grad[0] = math.inf
        torch.cuda.set_sync_debug_mode("error")
        try:
            applied.add(optimizer_step(list(model.parameters()), optimizer, scaler, max_grad_norm=1.0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert applied.settle() == 1 and scaler.get_scale() == 2.0 ** 15


def test_cuda_prediction_eager_and_compiled_matches_the_cpu_logits(toy_data, tmp_path):
    run = train_new(tiny_config(toy_data, tmp_path, device="cpu", precision="fp32"))
    outputs = {}
    for name, flags in (("cpu", ["--device", "cpu"]), ("cuda", ["--device", "cuda"]),
                        ("cuda compiled", ["--device", "cuda", "--compile"])):
        logits = tmp_path / f"{name}.npz"
        assert run_cli(predict.main, [str(run.path), "--test", str(toy_data["test"]), "--out",
                                      str(tmp_path / f"{name}.csv"), "--logits-out", str(logits),
                                      "--quiet"] + flags) == 0
        outputs[name] = np.load(logits)["logits"]
    np.testing.assert_allclose(outputs["cuda"], outputs["cpu"], atol=1e-4)
    np.testing.assert_allclose(outputs["cuda compiled"], outputs["cpu"], atol=1e-4)


def test_batches_bound_for_the_gpu_are_page_locked_before_the_copy(monkeypatch):
    """A copy from pageable memory would wait for the GPU's queue; to_device pins the host tensor first."""
    pinned = []
    pin = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: pinned.append(tensor) or pin(tensor))
    batch = torch.arange(32 * 24).reshape(32, 24)
    on_gpu = to_device(batch, torch.device("cuda"))
    assert len(pinned) == 1 and pinned[0] is batch
    torch.testing.assert_close(on_gpu.cpu(), batch)
    again = to_device(batch.pin_memory(), torch.device("cuda"))  # already page-locked: no second copy
    assert len(pinned) == 2 and on_gpu.device.type == again.device.type == "cuda"
    assert to_device(on_gpu, torch.device("cuda")) is on_gpu and len(pinned) == 2  # on the GPU already


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_bert_training_step_on_cuda_never_makes_the_host_wait_for_the_gpu(precision):
    """The kernels a CUDA run's steps choose (SDPA with its mask always built): a whole step, page-locked
    batch copy, forward, loss, backward, unscale, clipping and fused AdamW, under the sync debug mode."""
    cuda = torch.device("cuda")
    model = tiny_bert(layers=2).to(cuda)
    kernels = TrainingKernels.choose(model, cuda)
    assert kernels.attention == SDPA_WITHOUT_MASK_CHECK
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, fused=True)
    share = WindowShare(11, torch.amp.GradScaler("cuda", enabled=precision == "fp16"))
    objective = ClassifierObjective(FocalLoss(3), precision, cuda)
    batch = collate(random_encoded(), np.arange(11))
    applied = AppliedSteps()
    for checked in (False, True):  # the first step creates the library handles
        if checked:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with kernels.step():
                accumulate_window(model, [batch], objective, share)
            applied.add(optimizer_step(parameters, optimizer, share.scaler, max_grad_norm=1.0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert applied.settle() in (1, 2)
