"""Two CPU processes with gloo (as torchrun would start them) against one process with the same global batch."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from lib.core.distributed import Distributed, leave_process_group
from lib.finetune.predict import load_run, predict_table
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import StopRequest
from tests.conftest import tiny_config
from tests.ranks import run_ranks


class CrashAtStep(StopRequest):
    """Simulates a process killed at `step` (no state saved there: resume starts from the last checkpoint)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def should_stop(self, global_step: int) -> bool:
        if global_step >= self.step:
            raise RuntimeError("killed")
        return False


def _rank_main(rank: int, cfg, resume_path, crash_step) -> None:
    try:
        if resume_path:
            resume(resume_path)
        else:
            train_new(cfg, stop=CrashAtStep(crash_step) if crash_step else None)
    except RuntimeError as error:
        if str(error) != "killed":
            raise
    finally:
        leave_process_group()


def _launch(cfg=None, resume_path=None, crash_step=None) -> None:
    run_ranks(_rank_main, cfg, resume_path, crash_step)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


OVERRIDES = dict(num_train_epochs=2, dropout_rate=0.0, eval_steps=10, seed=3)


def test_two_processes_match_one_process_with_the_same_global_batch(toy_data, tmp_path):
    single = train_new(tiny_config(toy_data, tmp_path / "single", per_device_train_batch_size=32, **OVERRIDES))
    _launch(tiny_config(toy_data, tmp_path / "ddp", per_device_train_batch_size=16, **OVERRIDES))
    ddp = tmp_path / "ddp" / "toy"
    assert json.loads((ddp / "plan.json").read_text())["world_size"] == 2
    one, two = json.loads(single.result.read_text()), json.loads((ddp / "result.json").read_text())
    assert one["global_step"] == two["global_step"] and one["best_step"] == two["best_step"]
    assert two["best"]["loss"] == pytest.approx(one["best"]["loss"], rel=1e-4)
    assert sum(map(sum, two["report"]["confusion_matrix"])) == 120  # every validation row, once
    a, b = _weights(single.last), _weights(ddp / "last")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)
    train_records = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    single_records = [json.loads(line) for line in single.path.joinpath("metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in train_records] == pytest.approx([r["loss"] for r in single_records], rel=1e-3)
    norms = [[r["grad_norm"] for r in records if "grad_norm" in r] for records in (train_records, single_records)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-3)  # catches a gradient scaled by the number of processes


def test_a_killed_two_process_run_resumes_to_the_same_result(toy_data, tmp_path):
    cfg = tiny_config(toy_data, tmp_path / "a", per_device_train_batch_size=16, **OVERRIDES)
    _launch(cfg)
    crashed = tiny_config(toy_data, tmp_path / "b", per_device_train_batch_size=16, **OVERRIDES)
    _launch(crashed, crash_step=17)  # mid-epoch 2; the last checkpoint is the evaluation at step 10
    folder = tmp_path / "b" / "toy.incomplete"
    assert json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["step"] >= 15
    _launch(resume_path=folder)
    a, b = _weights(tmp_path / "a" / "toy" / "last"), _weights(tmp_path / "b" / "toy" / "last")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)



@pytest.mark.parametrize("adversarial", [dict(adversarial="fgm", adv_epsilon=0.1), dict(adversarial="awp", awp_lr=1e-2, awp_eps=1e-2)],
                         ids=["fgm", "awp"])
def test_two_process_adversarial_training_keeps_the_ranks_in_step(toy_data, tmp_path, adversarial):
    """Under torchrun with accumulation, each rank's second pass must be synchronised and its perturbation
    removed, or the ranks drift apart: the validation logits gathered from both ranks during training must
    equal what the saved model alone predicts for those rows, and the run must still learn."""
    cfg = tiny_config(toy_data, tmp_path / "ddp", per_device_train_batch_size=8, gradient_accumulation_steps=2,
                      **OVERRIDES, **adversarial)
    _launch(cfg)
    folder = tmp_path / "ddp" / "toy"
    assert json.loads((folder / "plan.json").read_text())["world_size"] == 2
    assert json.loads((folder / "config.json").read_text())["adversarial"] == adversarial["adversarial"]
    saved = np.load(folder / "val_logits.npz")
    loaded = load_run(folder, device="cpu")
    ids, logits = predict_table(loaded.cfg, loaded.plan, loaded.preprocessor, loaded.tokenizer, loaded.model,
                                toy_data["train"], loaded.device, show_progress=False)
    by_id = dict(zip(ids.tolist(), logits))
    np.testing.assert_allclose(np.stack([by_id[i] for i in saved["ids"].tolist()]), saved["logits"], atol=1e-4)
    assert json.loads((folder / "result.json").read_text())["best"]["accuracy"] > 0.4  # chance: 0.25


def test_the_ranks_agree_on_flags_and_messages_over_either_group(tmp_path):
    """`any` is an integer's all-reduce (a flag raised by one rank only is seen by both), and objects are
    gathered and broadcast, over the default group and over a gloo group of its own (what an NCCL run uses)."""
    out = str(tmp_path / "seen")
    run_ranks(_messages_main, out)
    for rank in range(2):
        seen = json.loads(open(f"{out}.{rank}").read())
        for name in ("default", "own group"):
            assert seen[name] == [True, False, True, [0, 10], "from 0"], (rank, name)


def _messages_main(rank: int, out: str) -> None:
    """Write what `any`, `all_gather` and `broadcast` gave this rank over the default group and a gloo group."""
    dist.init_process_group("gloo")
    try:
        seen = {}
        for name, messages in (("default", None), ("own group", dist.new_group(backend="gloo"))):
            ctx = Distributed(rank, dist.get_world_size(), rank, messages)
            seen[name] = [ctx.any(rank == 1), ctx.any(False), ctx.any(True), ctx.all_gather(rank * 10),
                          ctx.broadcast(f"from {rank}")]
        with open(f"{out}.{rank}", "w") as file:
            json.dump(seen, file)
    finally:
        leave_process_group()
