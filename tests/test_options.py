"""One option system: every value passes the same checks whatever its source (flag, experiment file,
sweep config, resumed config), and a refusal is one line naming the option, the source, the value
and what was expected, before any run, member or sweep folder exists."""

import dataclasses
import json
import math
import uuid
from pathlib import Path

import pytest

import ensemble
import pretrain
import sweep
import train
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.core.options import Range, checked_number
from lib.finetune.config import TrainConfig, parse_train_args
from lib.pretrain.config import PretrainConfig, parse_pretrain_args
from lib.search import Journal, SweepHeader, parse_sweep_config
from lib.search.sweep import SweepFolder
from tests.conftest import tiny_config

FAST = ["--model", "scratch:tiny", "--scratch-vocab-size", "200", "--epochs", "1", "--quiet", "--no-cache"]

# (key, bad value, what the one line must also name: the expected choices or range)
BAD_CHOICES = [
    ("lr_scheduler_type", "cosinee", "{constant, constant_with_warmup, linear, cosine}"),
    ("precision", "fp64", "{auto, fp32, bf16, fp16}"),
    ("keep", "bset", "{auto, best, swa, ema}"),
    ("loss", "focall", "{auto, ce, focal}"),
]
BAD_NUMBERS = [
    ("learning_rate", -1, "a positive number"),
    ("warmup_ratio", 1.5, "a number in [0, 1)"),
    ("per_device_train_batch_size", 0, "a whole number >= 1"),
    ("per_device_train_batch_size", 16.5, "a whole number >= 1"),
    ("label_smoothing_factor", 1.0, "a number in [0, 1)"),
]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _last_error(code: int, capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("error: "), err
    assert not any(line.startswith("Traceback") for line in err), err
    return err[-1]


def _assert_one_line(line: str, *needles) -> None:
    missing = [str(n) for n in needles if str(n) not in line]
    assert not missing, (missing, line)


def _write_yaml(path: Path, values: dict) -> Path:
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()), encoding="utf-8")
    return path


# --- the checks themselves -------------------------------------------------------------------------

def test_ranges_describe_their_ends_and_refuse_nan():
    assert Range(0, 1, low_open=False, high_open=True).describe("a number") == "a number in [0, 1)"
    assert Range(0, None, low_open=True).describe("a number") == "a positive number"
    assert Range(8, None).describe("a whole number") == "a whole number >= 8"
    assert Range(0, 100, low_open=True).describe("a number") == "a number in (0, 100]"
    half_open = Range(0, 1, high_open=True)
    assert half_open.admits(0) and half_open.admits(0.5) and not half_open.admits(1) and not half_open.admits(-0.1)
    assert not Range(0, None, low_open=True).admits(math.nan)


@pytest.mark.parametrize("key, value, expected", BAD_CHOICES + BAD_NUMBERS)
def test_a_value_is_refused_alike_from_a_flag_a_file_and_code(tmp_path, key, value, expected):
    with pytest.raises(UserError) as from_flag:
        parse_train_args([_flag(key), str(value)])
    path = _write_yaml(tmp_path / "exp.yaml", {key: value})
    with pytest.raises(UserError) as from_file:
        parse_train_args(["--config", str(path)])
    with pytest.raises(UserError) as from_code:
        TrainConfig(**{key: value})
    for error in (from_flag, from_file, from_code):
        _assert_one_line(str(error.value), _flag(key), expected, str(value))
    assert str(from_file.value).startswith(f"{path}: ")  # a file is named; the command line is not
    assert str(from_flag.value).split(": ", 1)[0].startswith("--")


def test_a_replaced_config_is_checked_too(toy_data, tmp_path):
    with pytest.raises(UserError, match="--precision"):
        dataclasses.replace(tiny_config(toy_data, tmp_path), precision="fp64")


def test_nan_is_not_a_learning_rate():
    with pytest.raises(UserError, match="--learning-rate"):
        parse_train_args(["--lr", "nan"])


def test_a_key_and_its_alias_in_one_file_are_refused(tmp_path):
    path = _write_yaml(tmp_path / "exp.yaml", {"learning_rate": 1e-3, "lr": 2e-3})
    with pytest.raises(UserError, match="given twice"):
        parse_train_args(["--config", str(path)])


def test_a_broken_yaml_file_is_one_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("precision: [fp32\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        parse_train_args(["--config", str(path)])
    assert "not valid YAML" in str(error.value) and "\n" not in str(error.value)


def test_entry_script_numbers_use_the_same_wording():
    workers = checked_number(int, at_least=1)
    assert workers("2") == 2
    for text in ("0", "two", "1.5"):
        with pytest.raises(Exception, match="expected a whole number >= 1"):
            workers(text)


# --- train.py ------------------------------------------------------------------------------------

def _train_refused(tmp_path, capsys, argv, *needles) -> None:
    out = tmp_path / "runs"
    line = _last_error(run_cli(train.main, argv + ["--output-dir", str(out)]), capsys)
    _assert_one_line(line, *needles)
    assert not out.exists() or not any(out.iterdir()), "a bad value left a run folder behind"


@pytest.mark.parametrize("key, value, expected", BAD_CHOICES + BAD_NUMBERS[:2])
def test_train_refuses_a_bad_value_in_its_experiment_file(tmp_path, capsys, toy_data, key, value, expected):
    path = _write_yaml(tmp_path / "exp.yaml", {key: value})
    _train_refused(tmp_path, capsys, FAST + ["--train-file", str(toy_data["train"]), "--config", str(path)],
                   str(path), _flag(key), repr(value), expected)


def test_train_refuses_a_resumed_config_with_a_bad_value(tmp_path, capsys, toy_data):
    folder = tmp_path / "runs" / "x.incomplete"
    folder.mkdir(parents=True)
    values = tiny_config(toy_data, tmp_path).to_dict()
    values["precision"] = "fp64"
    (folder / "config.json").write_text(json.dumps(values), encoding="utf-8")
    line = _last_error(run_cli(train.main, ["--resume", str(folder)]), capsys)
    _assert_one_line(line, folder / "config.json", "--precision", "'fp64'", "{auto, fp32, bf16, fp16}")


# --- sweep.py ------------------------------------------------------------------------------------

def _sweep_file(tmp_path, toy_data, **parameters) -> Path:
    base = {"train_file": {"value": str(toy_data["train"])}, "model": {"value": "scratch:tiny"},
            "learning_rate": {"values": [1e-3, 2e-3]}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"method": "random", "metric": {"name": "eval_loss", "goal": "minimize"},
                                "parameters": {**base, **parameters}}), encoding="utf-8")
    return path


SWEEP_BAD = [
    ({"lr_scheduler_type": {"values": ["linear", "cosinee"]}}, ("--lr-scheduler-type", "'cosinee'", "cosine}")),
    ({"precision": {"value": "fp64"}}, ("--precision", "'fp64'", "{auto, fp32, bf16, fp16}")),
    ({"keep": {"values": ["bset"]}}, ("--keep", "'bset'", "{auto, best, swa, ema}")),
    ({"loss": {"value": "focall"}}, ("--loss", "'focall'", "{auto, ce, focal}")),
    ({"warmup_ratio": {"values": [0.1, 1.5]}}, ("--warmup-ratio", "1.5", "[0, 1)")),
    ({"warmup_ratio": {"distribution": "uniform", "min": 0.0, "max": 1.5}}, ("--warmup-ratio", "1.5", "[0, 1)")),
    ({"per_device_train_batch_size": {"distribution": "q_uniform", "min": -8, "max": 32, "q": 8}},
     ("--per-device-train-batch-size", "-8", ">= 1")),
    ({"per_device_train_batch_size": {"distribution": "uniform", "min": 8.0, "max": 32.0}},
     ("--per-device-train-batch-size", "8.0", "whole number")),
    ({"num_train_epochs": {"values": ["three"]}}, ("--num-train-epochs", "'three'", "a positive number")),
]


@pytest.mark.parametrize("parameters, needles", SWEEP_BAD, ids=[str(list(p)[0]) + str(i) for i, (p, _) in
                                                                   enumerate(SWEEP_BAD)])
def test_sweep_refuses_a_bad_value_before_trial_0(tmp_path, capsys, toy_data, parameters, needles):
    path = _sweep_file(tmp_path, toy_data, **parameters)
    code = run_cli(sweep.main, ["--config", str(path), "--output-dir", str(tmp_path / "runs"), "--name", "s",
                                "--trials", "2", "--quiet"])
    _assert_one_line(_last_error(code, capsys), f"sweep config {path}", *needles)
    assert not (tmp_path / "runs").exists(), "a refused sweep left a folder behind"


def test_sweep_resume_refuses_a_journal_with_a_bad_value(tmp_path, capsys, toy_data):
    """A sweep started before the checks existed: its journal holds `cosinee`; resuming runs no trial."""
    raw = json.loads(_sweep_file(tmp_path, toy_data, lr_scheduler_type={"value": "cosinee"}).read_text())
    space = parse_sweep_config(raw)  # the space parser alone knows nothing of train.py's values
    folder = SweepFolder(tmp_path / "runs" / "old")
    folder.trials.mkdir(parents=True)
    Journal.create(folder.journal, SweepHeader(uuid.uuid4().hex[:12], space.config_hash(), 0, space.to_dict(), 2))
    code = run_cli(sweep.main, ["--resume", str(folder.path), "--quiet"])
    _assert_one_line(_last_error(code, capsys), f"sweep {folder.path}", "--lr-scheduler-type", "'cosinee'")
    assert Journal.open(folder.journal).trials() == [] and not any(folder.trials.iterdir())


@pytest.mark.parametrize("flags, needle", [(["--workers", "0"], "--workers"), (["--stale-after", "0"], "--stale-after"),
                                           (["--trials", "x"], "--trials"), (["--n-startup-trials", "-1"], "startup")])
def test_sweep_own_flags_are_one_line(tmp_path, capsys, toy_data, flags, needle):
    path = _sweep_file(tmp_path, toy_data)
    code = run_cli(sweep.main, ["--config", str(path), "--output-dir", str(tmp_path / "runs")] + flags)
    _assert_one_line(_last_error(code, capsys), needle, "expected")
    assert not (tmp_path / "runs").exists()


# --- ensemble.py ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, expected", BAD_CHOICES[:2])
def test_ensemble_checks_member_options_before_the_first_member(tmp_path, capsys, toy_data, key, value, expected):
    path = _write_yaml(tmp_path / "exp.yaml", {key: value})
    out = tmp_path / "runs"
    code = run_cli(ensemble.main, ["train", "--models", "scratch:tiny", "scratch:mini", "--name", "e",
                                   "--train-file", str(toy_data["train"]), "--config", str(path),
                                   "--output-dir", str(out), "--quiet"])
    _assert_one_line(_last_error(code, capsys), str(path), _flag(key), repr(value), expected)
    assert not out.exists(), "a refused ensemble left a member folder behind"


@pytest.mark.parametrize("argv, needle", [
    (["train", "--models", "scratch:tiny", "--folds", "1"], "--folds"),
    (["train", "--models", "scratch:tiny", "--lr-scheduler-type", "cosinee"], "--lr-scheduler-type"),
    (["vote", "runs/a", "--batch-size", "0"], "--batch-size"),
])
def test_ensemble_flags_are_one_line(tmp_path, capsys, argv, needle):
    code = run_cli(ensemble.main, argv + (["--output-dir", str(tmp_path / "runs")] if argv[0] == "train" else []))
    _assert_one_line(_last_error(code, capsys), needle, "expected")
    assert not (tmp_path / "runs").exists()


# --- pretrain.py ---------------------------------------------------------------------------------

@pytest.fixture()
def texts(toy_data) -> str:
    return str(toy_data["train"])


def test_old_pretrain_flags_are_aliases_of_train_py_names(texts):
    cfg = parse_pretrain_args(["--texts", texts, "--preset", "tiny", "--batch-size", "4", "--eval-batch-size", "8",
                               "--epochs", "2", "--vocab-size", "300", "--out", "models/x"]).config
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size) == (4, 8)
    assert (cfg.num_train_epochs, cfg.scratch_vocab_size) == (2.0, 300)
    assert (cfg.output_dir, cfg.run_name, cfg.out) == ("models", "x", str(Path("models") / "x"))
    new = parse_pretrain_args(["--texts", texts, "--preset", "tiny", "--per-device-train-batch-size", "4",
                               "--per-device-eval-batch-size", "8", "--num-train-epochs", "2",
                               "--scratch-vocab-size", "300", "--run-name", "x"]).config
    assert new == cfg


def test_out_and_run_name_together_are_refused(texts):
    with pytest.raises(UserError, match="--out"):
        parse_pretrain_args(["--texts", texts, "--out", "models/x", "--run-name", "y"])


def test_a_config_saved_with_the_old_names_still_loads(texts, tmp_path):
    saved = tmp_path / "pretrain_config.json"
    saved.write_text(json.dumps({"texts": [texts], "preset": "tiny", "init": None, "batch_size": 4,
                                 "eval_batch_size": 8, "epochs": None, "vocab_size": 300,
                                 "out": "models/old"}), encoding="utf-8")
    cfg = PretrainConfig.load(saved)
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size, cfg.scratch_vocab_size) == (4, 8, 300)
    assert (cfg.output_dir, cfg.run_name, cfg.num_train_epochs) == ("models", "old", None)


def test_pretrain_config_file_layers_under_flags(texts, tmp_path):
    path = _write_yaml(tmp_path / "mlm.yaml", {"texts": [texts], "init": "some/model", "max_steps": 30,
                                               "learning_rate": 1.0e-4, "run_name": "from-file"})
    cfg = parse_pretrain_args(["--config", str(path), "--max-steps", "7", "--preset", "tiny"]).config
    assert (cfg.max_steps, cfg.learning_rate, cfg.run_name) == (7, 1e-4, "from-file")
    assert (cfg.preset, cfg.init) == ("tiny", None)  # --preset on the command line wins over the file's init
    assert cfg.texts == (texts,)


def test_pretrain_runs_from_a_config_file(toy_data, tmp_path, capsys):
    out = tmp_path / "models"
    path = _write_yaml(tmp_path / "mlm.yaml", {
        "texts": [str(toy_data["train"])], "preset": "tiny", "scratch_vocab_size": 200, "max_steps": 5,
        "eval_texts": 20, "max_length": 64, "per_device_train_batch_size": 4, "output_dir": str(out),
        "run_name": "m", "lr_scheduler_type": "constant"})
    code = run_cli(pretrain.main, ["--config", str(path), "--max-steps", "2", "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "m" / "pretrain_config.json").read_text())
    assert (saved["max_steps"], saved["lr_scheduler_type"], saved["per_device_train_batch_size"]) == (2, "constant", 4)
    assert json.loads((out / "m" / "result.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("key, value, expected", [
    ("lr_scheduler_type", "cosinee", "cosine}"), ("precision", "fp64", "{auto, fp32, bf16, fp16}"),
    ("preset", "huge", "{tiny, mini, small, medium, base}"), ("warmup_ratio", 1.5, "[0, 1)"),
    ("per_device_train_batch_size", 0, "a whole number >= 1"),
])
def test_pretrain_refuses_bad_values_from_a_file_and_from_flags(texts, tmp_path, capsys, key, value, expected):
    out = tmp_path / "models"
    path = _write_yaml(tmp_path / "mlm.yaml", {"texts": [texts], key: value, "output_dir": str(out), "run_name": "m"})
    line = _last_error(run_cli(pretrain.main, ["--config", str(path), "--no-cache", "--quiet"]), capsys)
    _assert_one_line(line, str(path), _flag(key), repr(value), expected)
    line = _last_error(run_cli(pretrain.main, ["--texts", texts, _flag(key), str(value), "--out", str(out / "m")]),
                       capsys)
    _assert_one_line(line, _flag(key), str(value), expected)
    assert not out.exists(), "a bad value left a model folder behind"


def test_pretrain_resume_refuses_a_saved_config_with_a_bad_value(texts, tmp_path, capsys):
    folder = tmp_path / "models" / "m.incomplete"
    folder.mkdir(parents=True)
    saved = PretrainConfig(texts=(texts,), preset="tiny", output_dir=str(tmp_path / "models"), run_name="m").to_dict()
    saved["lr_scheduler_type"] = "cosinee"
    (folder / "pretrain_config.json").write_text(json.dumps(saved), encoding="utf-8")
    line = _last_error(run_cli(pretrain.main, ["--resume", str(folder)]), capsys)
    _assert_one_line(line, folder / "pretrain_config.json", "--lr-scheduler-type", "'cosinee'")
