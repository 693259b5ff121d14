"""bench/throughput.py's time to quality: ours stops at the first evaluation at or below the Trainer's loss."""

import json
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

import pytest

from bench import throughput
from bench.throughput import _UntilLoss
from lib.core.cli import run_cli
from tests.ranks import frozen_garbage

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


def _forked(function, *args, **kwargs):
    """The bench's one process per side, forked: a spawned one spends seconds importing torch again."""
    with frozen_garbage(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def test_the_quality_part_trains_ours_to_the_trainers_loss_and_prints_the_ratio(toy_data, tmp_path, capsys,
                                                                                 monkeypatch):
    pytest.importorskip("accelerate")  # bench/requirements.txt: transformers.Trainer needs it
    monkeypatch.setattr(throughput, "_in_subprocess", _forked)
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


def _outcome(trainer_loss, trainer_seconds, *ours):
    results = {"Trainer grouped": {"val_loss": trainer_loss, "train_seconds": trainer_seconds}}
    for title, (loss, seconds) in zip(("ours default", "ours budget1024"), ours):
        results[title] = {"val_loss": loss, "train_seconds": seconds}
    for result in results.values():
        result["ratio"] = throughput._quality_ratio(results["Trainer grouped"], result)
    return results


def test_over_several_seeds_the_summary_counts_reached_and_at_target(capsys):
    args = throughput.build_parser().parse_args(["--quality-seeds", "11,13,15"])
    args.quality_seeds, args.device_flag, args.device = [11, 13, 15], "auto", "cpu"
    throughput._print_quality_summary(args, {
        11: _outcome(1.01, 12.0, (1.00, 6.0), (1.02, 5.0)),   # 2.00x; not reached
        13: _outcome(1.00, 12.0, (1.00, 10.0), (0.99, 7.0)),  # 1.20x (at the loss counts); 1.71x
        15: _outcome(1.03, 12.0, (1.05, 9.0), (1.01, 8.0)),   # not reached; 1.50x
    })
    printed = capsys.readouterr().out
    assert re.search(r"13 +1\.0000 +1\.20x +1\.71x", printed) and re.search(r"15 +1\.0300 +not reached +1\.50x", printed)
    assert "ours default: reached the loss in 2 of 3 seeds, at 1.5x or more in 1; median where reached 1.60x" in printed
    assert "ours budget1024: reached the loss in 2 of 3 seeds, at 1.5x or more in 2; median where reached 1.61x" in printed
    assert "--quality-seeds 11,13,15" in printed


@pytest.mark.parametrize("seeds, message", [("11,x", "expected comma-separated whole numbers, got '11,x'"),
                                            ("3,3", "each seed once, got '3,3'")])
def test_bad_quality_seeds_exit_2_before_any_work(seeds, message, tmp_path, capsys):
    argv = ["--parts", "quality", "--quality-seeds", seeds, "--workdir", str(tmp_path / "work")]
    assert run_cli(throughput.main, argv) == 2
    assert capsys.readouterr().err.strip() == f"error: --quality-seeds: {message}"
    assert not (tmp_path / "work").exists()
