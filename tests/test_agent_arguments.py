"""train.py and pretrain.py take the arguments a W&B agent writes: `--name=value` with the sweep's
(underscored, HF-style) names, each value as Python's str() renders it: `3e-05`, `True`, `None`,
`[0.11, 0.45]`. Our own dashed forms keep working beside them."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

import train
from lib.core.cli import dashed_flags, run_cli
from lib.finetune.config import TrainConfig, parse_train_args
from lib.pretrain.config import parse_pretrain_args
from tests.conftest import write_reviews

SEED_SWEEP = Path(__file__).resolve().parent.parent / "experiments" / "sweep_seed.json"
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def agent_argv(parameters: dict) -> list[str]:
    """`${args}` as the agent renders it (wandb/sdk/launch/sweeps/utils.py): `--{name}={value}`, str()."""
    return [f"--{name}={value}" for name, value in parameters.items()]


def pick(name: str, spec: dict):
    """A value the agent could send: a fixed value, the first listed one that differs from train.py's
    default (so config.json holds it only if the argument arrived), or the middle of a distribution."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return next(v for v in spec["values"] if v != DEFAULTS[name])
    low, high = spec["min"], spec["max"]
    if spec["distribution"] == "log_uniform_values":
        return math.sqrt(low * high)
    if spec["distribution"] == "q_uniform":
        return round((low + high) / 2 / spec["q"]) * spec["q"]
    return (low + high) / 2


def seed_sweep_values() -> dict:
    """One draw from the seed's sweep file; its hub model is the one value swapped, for the offline
    scratch BERT (a tiny real run cannot download klue/bert-base)."""
    parameters = json.loads(SEED_SWEEP.read_text(encoding="utf-8"))["parameters"]
    values = {name: pick(name, spec) for name, spec in parameters.items()}
    assert values["model"] == "klue/bert-base"
    return {**values, "model": "scratch:tiny"}


def test_train_runs_with_the_argument_list_an_agent_builds_from_the_seed_sweep(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any import of it fails: a run that does not ask never does
    swept = seed_sweep_values()
    assert {"num_rare_words_to_remove", "dropout_rate", "learning_rate", "warmup_steps"} <= set(swept)
    # what the user fixes in the same sweep file for this machine: data, output, a small vocabulary;
    # 32 training rows in batches of 8, 2 per step: 10 steps in the seed's 5 epochs
    fixed = {"train_file": write_reviews(tmp_path / "train.csv", 64, seed=1), "max_train_samples": 32,
             "val_size": 0.25, "scratch_vocab_size": 200, "output_dir": tmp_path / "runs", "run_name": "agent",
             "cache_dir": "none", "report_to": "none"}
    argv = agent_argv({**swept, **fixed})
    assert "--num_rare_words_to_remove=1" in argv and "--dropout_rate=0.175" in argv, argv
    assert next(a for a in argv if a.startswith("--learning_rate=")).endswith("e-06"), argv  # str(): 7.07...e-06
    code = run_cli(train.main, argv)
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "runs" / "agent" / "config.json").read_text(encoding="utf-8"))
    assert {name: saved[name] for name in swept} == swept
    assert saved["max_train_samples"] == 32 and saved["report_to"] == [] and saved["cache_dir"] is None
    assert not (tmp_path / "runs" / "agent" / "tensorboard").exists()


def test_the_agents_own_renderer_gives_the_same_arguments():
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils", reason="wandb is an optional extra")
    values = {**seed_sweep_values(), "focal_loss_alpha": [0.11, 0.45, 0.12, 0.32], "group_by_length": False,
              "label_names": ["a", "b", "c", "d"], "head_learning_rate": None}
    rendered = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    assert rendered == agent_argv(values)


def test_agent_forms_and_our_own_give_the_same_config():
    agent = parse_train_args([
        "--learning_rate=3e-05", "--num_train_epochs=5", "--focal_loss_alpha=[0.11, 0.45, 0.12, 0.32]",
        "--label_names=['a', 'b', 'c', 'd']", "--group_by_length=False", "--gradient_checkpointing=True",
        "--compile=false", "--dropout_rate=None", "--special_patterns=[]", "--report_to=tensorboard,wandb",
        "--metric_for_best_model=eval_accuracy"]).config
    ours = parse_train_args([
        "--learning-rate", "3e-5", "--epochs", "5", "--alpha", "0.11,0.45,0.12,0.32", "--label-names", "a,b,c,d",
        "--group-by-length", "false", "--gradient-checkpointing", "--dropout-rate", "none", "--special-patterns", "",
        "--report-to", "tensorboard,wandb", "--metric-for-best-model", "eval_accuracy"]).config
    assert agent == ours
    assert (agent.learning_rate, agent.focal_loss_alpha, agent.label_names) == (3e-5, (0.11, 0.45, 0.12, 0.32),
                                                                              ("a", "b", "c", "d"))
    assert (agent.group_by_length, agent.gradient_checkpointing, agent.compile) == (False, True, False)
    assert (agent.dropout_rate, agent.special_patterns, agent.report_to) == (None, (), ("tensorboard", "wandb"))
    # a JSON list reads as W&B's Python one
    assert parse_train_args(['--label_names=["a", "b", "c", "d"]']).config.label_names == ("a", "b", "c", "d")


def test_pretrain_takes_the_agent_forms(tmp_path):
    out = tmp_path / "models" / "m"
    agent = parse_pretrain_args(["--texts=['a.csv', 'b.csv']", "--whole_word_masking=True",
                                 "--per_device_train_batch_size=8", "--learning_rate=0.0003", "--max_steps=5",
                                 f"--out={out}"]).config
    ours = parse_pretrain_args(["--texts", "a.csv", "b.csv", "--whole-word-masking", "--batch-size", "8",
                                "--learning-rate", "3e-4", "--max-steps", "5", "--out", str(out)]).config
    assert agent == ours and agent.texts == ("a.csv", "b.csv") and agent.whole_word_masking is True
    assert parse_pretrain_args(["--texts=a.csv", "--whole_word_masking=False", f"--out={out}"]).config \
        .whole_word_masking is False


def test_only_flag_names_are_dashed():
    assert dashed_flags(["--run_name=my_run", "--text_column", "my_text", "-x_y", "--", "--keep_me"]) == \
        ["--run-name=my_run", "--text-column", "my_text", "-x_y", "--", "--keep_me"]


@pytest.mark.parametrize("argument, needles", [
    ("--learning_rate=abc", ("--learning-rate", "'abc'", "a positive number")),
    ("--focal_loss_alpha=[0.1, 0.2", ("--focal-loss-alpha", "'[0.1, 0.2'", "comma-separated weights")),
    ("--label_names=[a, b]", ("--label-names", "'[a, b]'", "comma-separated names")),
    ("--group_by_length=Maybe", ("--group-by-length", "'Maybe'", "true or false")),
    ("--per_device_train_batch_size=16.0", ("--per-device-train-batch-size", "'16.0'", "a whole number >= 1")),
    ("--report_to=none,wandb", ("--report-to", "'none,wandb'", "{tensorboard, wandb}, or none")),
    ("--num_rare_word_to_remove=1", ("unrecognized arguments", "--num-rare-word-to-remove=1")),
])
def test_a_bad_agent_argument_is_one_line_and_writes_nothing(tmp_path, capsys, argument, needles):
    code = run_cli(train.main, [argument, "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert all(needle in err[0] for needle in needles), (needles, err[0])
    assert not (tmp_path / "runs").exists()
