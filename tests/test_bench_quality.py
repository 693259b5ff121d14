"""bench/throughput.py's time to quality: ours stops at the first evaluation at or below the Trainer's loss."""

import json
import re

import pytest

from bench import throughput
from bench.throughput import _UntilLoss
from lib.core.cli import run_cli

PRINTED = 5e-5  # the target loss is read from the output, rounded to 4 decimals


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_the_stop_rule_ends_training_at_the_first_loss_at_or_below_the_target():
    stop = _UntilLoss(target=0.5)
    assert not stop.prune_after(10, 0.1, {"loss": 0.51})
    assert stop.prune_after(20, 0.2, {"loss": 0.5})
    assert stop.prune_after(30, 0.3, {"loss": 0.2})


def test_the_stop_rule_still_tells_the_step_clock_an_evaluation_came_before_the_next_step():
    stop = _UntilLoss(target=0.5)
    stop.should_stop(1)
    stop.prune_after(1, 0.1, {"loss": 0.4})
    stop.should_stop(2)
    assert [evaluated for _, _, _, evaluated in stop.clock.marks] == [False, True]


def test_the_quality_part_trains_ours_to_the_trainers_loss_and_prints_the_ratio(toy_data, tmp_path, capsys):
    pytest.importorskip("accelerate")  # bench/requirements.txt: transformers.Trainer needs it
    argv = ["--parts", "quality", "--train-file", str(toy_data["train"]), "--train-samples", "480",
            "--val-size", "0.25", "--batch-size", "16", "--lr", "2e-3", "--max-tokens-per-batch", "256",
            "--quality-epochs", "4", "--threads", "1", "--workdir", str(tmp_path)]
    assert run_cli(throughput.main, argv) == 0
    printed = capsys.readouterr().out
    target = float(re.search(r"Trainer grouped after 1 epoch\(s\), (\d\.\d{4})", printed).group(1))
    assert "re-run: python -m bench.throughput --parts quality" in printed and "--quality-epochs 4.0" in printed
    for name in ("quality-default", "quality-budget"):
        run = tmp_path / "runs" / name
        losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                  if r["split"] == "val"]
        assert losses[-1] <= target + PRINTED and all(loss > target - PRINTED for loss in losses[:-1])
        assert json.loads((run / "result.json").read_text())["pruned"]
    ratios = re.search(r"Trainer seconds / ours +(\S+) +(\S+) +(\S+)", printed).groups()
    assert ratios[0] == "1.00x" and all(ratio.endswith("x") for ratio in ratios[1:])
