"""--swa-select best|greedy: which epoch ends are ranked and kept, the greedy rule, and two tiny runs."""

import json
import math
import random

import pytest

from lib.core.errors import UserError
from lib.finetune.checkpoints import CheckpointStore
from lib.finetune.selection import CheckpointSelector
from lib.finetune.trainer import train_new
from lib.loop import swa
from tests.conftest import tiny_config, write_reviews

# (step, loss, accuracy); epoch ends are the multiples of 10, step 15 an --eval-steps evaluation
HISTORY = [(10, 0.90, 0.60), (15, 0.50, 0.99), (20, 0.60, 0.70), (30, 0.50, 0.80), (40, 0.52, 0.80),
           (50, math.nan, 0.95), (60, 0.80, 0.90), (70, 0.54, 0.75)]
ENDS = [10, 20, 30, 40, 50, 60, 70]


def _selector(metric="accuracy", max_loss_increase=None):
    selector = CheckpointSelector(metric, max_loss_increase)
    for step, loss, accuracy in HISTORY:
        selector.record(step, step / 10, {"loss": loss, "accuracy": accuracy})
    return selector


@pytest.mark.parametrize("metric, max_loss_increase, k, expected", [
    ("accuracy", None, 3, [60, 30, 40]),    # NaN loss is never eligible; ties keep the earlier step
    ("accuracy", 0.1, 3, [30, 40, 70]),     # 60 (0.80 > 1.1 x 0.50) and 10, 20 fall outside the guard
    ("accuracy", 0.1, 9, [30, 40, 70]),     # fewer eligible than K: all of them
    ("loss", None, 2, [30, 40]),            # loss ranks lowest first; step 15 is no epoch end
])
def test_best_takes_exactly_the_k_best_eligible_epoch_ends(metric, max_loss_increase, k, expected):
    assert _selector(metric, max_loss_increase).ranked(ENDS)[:k] == expected


def test_only_epoch_ends_that_can_still_rank_among_the_best_are_kept(tmp_path):
    def kept_after_prune(max_loss_increase, select):
        root = tmp_path / f"{max_loss_increase}-{select}"
        for step, *_ in HISTORY:
            (root / f"step-{step}").mkdir(parents=True)
        CheckpointStore(root, tmp_path / "best", None, _selector("accuracy", max_loss_increase), 2, select).prune(ENDS)
        return sorted(int(folder.name[5:]) for folder in root.iterdir())

    # without a guard: the selected step (15) and the two best epoch ends, which later ones can only push out
    assert kept_after_prune(None, "best") == [15, 30, 60]
    # with one: every eligible step, since a lower loss later can disqualify the leaders
    assert kept_after_prune(0.1, "greedy") == [15, 30, 40, 70]
    assert kept_after_prune(None, "last") == [15, 60, 70]


def test_greedy_never_scores_below_its_start_and_adds_only_what_improves():
    rng = random.Random(0)
    for _ in range(200):
        values = {frozenset(): 0.0}
        score = lambda soup: values.setdefault(frozenset(soup), rng.random())
        ranked = list(range(rng.randint(1, 6)))
        tried = []
        evaluate = lambda soup: tried.append(list(soup)) or score(soup)
        soup, final = swa.greedy_soup(ranked, evaluate, lambda trial, current: trial > current)
        assert soup[0] == ranked[0] and final >= score([ranked[0]]) and final == score(soup)
        assert len(tried) == len(ranked)  # the start, then one trial per further ingredient
        for trial in tried[1:]:
            assert (trial[-1] in soup) == (score(trial) > score(trial[:-1]) and set(trial) <= set(soup))


def test_swa_select_without_swa_last_k_is_refused(toy_data, tmp_path):
    with pytest.raises(UserError, match="--swa-select best: needs --swa-last-k"):
        tiny_config(toy_data, tmp_path, swa_select="best")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swa_select")
    return {"train": write_reviews(folder / "train.csv", 96, seed=3)}  # 5 steps per epoch


def _val_records(run):
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["split"] == "val"}


def test_a_best_run_averages_the_k_best_epoch_ends_it_kept(small_data, tmp_path):
    run = train_new(tiny_config(small_data, tmp_path, num_train_epochs=3, swa_last_k=2, swa_select="best",
                                metric_for_best_model="macro_f1", learning_rate=4e-3))
    result = json.loads(run.result.read_text())
    val = _val_records(run)
    ranked = sorted(val, key=lambda step: (-val[step]["macro_f1"], step))
    assert result["models"]["swa_1"]["averaged_steps"] == ranked[:1]
    assert result["models"]["swa"]["averaged_steps"] == sorted(ranked[:2])
    assert not (run.path / "checkpoints").exists() and (run.path / "swa" / "model.safetensors").is_file()


def test_a_greedy_run_never_lowers_the_metric_of_its_starting_checkpoint(small_data, tmp_path):
    run = train_new(tiny_config(small_data, tmp_path, num_train_epochs=3, swa_last_k=3, swa_select="greedy"))
    models = json.loads(run.result.read_text())["models"]
    val = _val_records(run)
    start = min(val, key=lambda step: (val[step]["loss"], step))
    assert models["swa_1"]["averaged_steps"] == [start]
    assert models["swa_1"]["loss"] == pytest.approx(val[start]["loss"], abs=1e-5)
    assert models["swa"]["loss"] <= models["swa_1"]["loss"]
    assert sorted(models["swa"]["tried_steps"]) == sorted(val)  # every epoch end was tried
    trials = [models[f"swa_{k}"] for k in range(1, 4)]
    kept = [trial for trial in trials if trial["joined"]]
    assert kept[-1]["averaged_steps"] == models["swa"]["averaged_steps"]
    assert all(later["loss"] < earlier["loss"] for earlier, later in zip(kept, kept[1:]))
