"""bench/recipe.py on the toy task, in this process: every part runs, prints its tables and writes its JSON."""

import json

import pytest

from bench import recipe
from lib.core.cli import run_cli

FAST = ["--seeds", "42", "--epochs", "1", "--batch-size", "16", "--scratch-vocab-size", "200", "--threads", "1",
        "--in-process"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, keep_torch_threads):
    """The bench sets HF_HUB_OFFLINE (and torch's threads) for itself; other tests get theirs back."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_ours_best_ablation_and_vote_side_by_side(toy_data, tmp_path, capsys):
    out = tmp_path / "recipe.json"
    argv = ["--train-file", str(toy_data["train"]), *FAST, "--parts", "ours,best,ablation,ensemble",
            "--best", "--ema-decay 0.99", "--ablation", "ema", "custom=--pooling mean",
            "--backbones", "scratch:tiny", str(tmp_path / "no-such-model"), "--json-out", str(out)]
    assert run_cli(recipe.main, argv) == 0
    printed = capsys.readouterr().out
    assert "(b) ours, seed recipe" in printed and "(c) ours + --best" in printed
    assert "no such folder" in printed and "ablation: each technique alone" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    tiny = report["backbones"]["scratch:tiny"]
    assert set(tiny["mean"]) == {"ours", "best"} and tiny["versus_trainer"] == {}
    assert [row["technique"] for row in tiny["ablation"]] == ["ema", "custom"]
    assert all(0 <= row["accuracy"] <= 1 and row["train_sps_ratio"] > 0 for row in tiny["ablation"])
    assert "skipped" in report["backbones"][str(tmp_path / "no-such-model")]
    # the classical member is in when train_new trains --model tfidf, and said to be left out when it refuses
    names = [row["name"] for row in tiny["ensembles"]]
    assert any("TF-IDF" in name for name in names) or "classical member is left out" in printed


def test_the_trainer_side_runs_the_same_recipe_and_leaves_no_checkpoints(toy_data, tmp_path, capsys):
    pytest.importorskip("accelerate")  # bench/requirements.txt: transformers.Trainer needs it
    argv = ["--train-file", str(toy_data["train"]), *FAST, "--parts", "trainer,ours", "--output-dir",
            str(tmp_path / "work"), "--json-out", str(tmp_path / "recipe.json")]
    assert run_cli(recipe.main, argv) == 0
    assert "(b) ours / (a) Trainer" in capsys.readouterr().out
    tiny = json.loads((tmp_path / "recipe.json").read_text(encoding="utf-8"))["backbones"]["scratch:tiny"]
    trainer, ours = tiny["seeds"]["42"]["trainer"], tiny["seeds"]["42"]["ours"]
    assert trainer["steps"] == ours["steps"] and trainer["max_length"] == ours["max_length"]
    assert trainer["val_rows"] == ours["val_rows"] and tiny["versus_trainer"]["ours/trainer"]["train_sps_ratio"] > 0
    assert not list((tmp_path / "work").rglob("trainer-*"))  # Trainer outputs are removed


def test_bad_options_are_refused_before_any_training(toy_data, tmp_path, capsys):
    argv = ["--train-file", str(toy_data["train"]), *FAST, "--best", "--no-such-option 1",
            "--output-dir", str(tmp_path / "work")]
    assert run_cli(recipe.main, argv) == 2
    assert "--best" in capsys.readouterr().err and not (tmp_path / "work").exists()
