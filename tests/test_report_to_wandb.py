"""`--report-to tensorboard,wandb`: a tiny training in W&B's offline mode, read back from the run
files with wandb's own reader (`wandb leet inspect`), holds metrics.jsonl's values under the HF
Trainer's names, the resolved config and the final result; under an agent it is the agent's run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import train
from lib.core.cli import run_cli
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import TrainingInterrupted
from tests.conftest import StopAtStep, tiny_config, write_reviews

AGENT_VARIABLES = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_PROJECT", "WANDB_ENTITY",
                   "WANDB_NAME", "WANDB_RESUME")
HF_NAMES = {"lr": "learning_rate"}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """W&B offline, every file of it under tmp_path; returns WANDB_DIR."""
    wandb = pytest.importorskip("wandb", reason="wandb is an optional extra (requirements-wandb.txt)")
    folder = tmp_path / "wandb-dir"
    folder.mkdir()
    for name in AGENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": folder, "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_X_DISABLE_STATS": "true", "WANDB_DISABLE_GIT": "true",
                        "WANDB_CACHE_DIR": tmp_path / "wandb-cache", "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data"}.items():
        monkeypatch.setenv(name, str(value))
    wandb.teardown()  # settings are read from the environment once per process setup
    yield folder
    wandb.teardown()


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def inspect(run_dir: Path, *flags: str) -> str:
    """What wandb's own reader of .wandb files prints about a run, as JSON."""
    return subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_dir)],
                          check=True, capture_output=True, text=True, timeout=120).stdout


def summary_of(run_dir: Path) -> dict:
    """One object: run_id, name, state, config, summary, ..."""
    return json.loads(inspect(run_dir, "--summary"))


def history(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in inspect(run_dir).splitlines() if line.strip()]
    return [record["history"]["item"] for record in records if record["type"] == "history"]


def expected_rows(metrics_jsonl: Path) -> list[dict]:
    """metrics.jsonl's records under the names HF's WandbCallback gives them."""
    rows = []
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        prefix = {"train": "train/", "val": "eval/"}[record["split"]]
        values = {prefix + HF_NAMES.get(k, k): v for k, v in record.items() if k not in ("split", "step", "epoch", "time")}
        rows.append({"train/global_step": record["step"], "train/epoch": record["epoch"], **values})
    return rows


def logged(rows: list[dict], expected: list[dict]) -> list[dict]:
    return [{key: row.get(key) for key in wanted} for row, wanted in zip(rows, expected)]


def test_an_interrupted_and_resumed_run_logs_metrics_config_and_result_into_one_w_and_b_run(
        offline_wandb, toy_data, tmp_path):
    # 48 training rows in batches of 16: 3 steps an epoch, 6 in all, a train record every 2
    cfg = tiny_config(toy_data, tmp_path / "runs", train_file=str(write_reviews(tmp_path / "train.csv", 64, seed=1)),
                      num_train_epochs=2, logging_steps=2, report_to=("tensorboard", "wandb"))
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_new(cfg, stop=StopAtStep(2))
    run = resume(interrupted.value.run_path)

    first, second = offline_runs(offline_wandb)
    summary = summary_of(second)
    assert first.name.endswith("-" + summary["run_id"]), "the resumed run is a new W&B run"
    assert json.loads((run.path / "wandb_run.json").read_text())["id"] == summary["run_id"]
    assert summary["name"] == "toy" and summary["state"] == "finished"

    rows = history(first) + history(second)
    expected = expected_rows(run.path / "metrics.jsonl")
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "eval/accuracy",
            "eval/macro_f1"} <= {key for row in expected for key in row}
    assert len(rows) == len(expected) == 3 + 2, [row["train/global_step"] for row in rows]
    assert logged(rows, expected) == expected

    result = json.loads(run.result.read_text())
    assert {key: summary["summary"][key] for key in ("kept", "best_step", "global_step", "best")} == \
        {key: result[key] for key in ("kept", "best_step", "global_step", "best")}
    saved = json.loads(run.config.read_text())
    assert {key: summary["config"][key] for key in saved} == saved
    assert summary["config"]["plan"] == json.loads(run.plan.read_text())
    assert (run.path / "tensorboard").is_dir()


def _agent_argv(tmp_path: Path, learning_rate: str) -> list[str]:
    train_file = write_reviews(tmp_path / "train.csv", 48, seed=1)
    return [f"--train_file={train_file}", "--scratch_vocab_size=200", "--val_size=0.25", "--num_train_epochs=1",
            "--per_device_train_batch_size=12", f"--learning_rate={learning_rate}", "--num_rare_words_to_remove=1",
            f"--output_dir={tmp_path / 'runs'}", "--run_name=trial", "--cache_dir=None", "--report_to=wandb", "--quiet"]


def _as_an_agent(monkeypatch, tmp_path: Path, parameters: dict) -> None:
    """The environment `wandb agent` gives the program it starts (wandb_agent.py)."""
    path = tmp_path / "config-agentrun1.yaml"
    path.write_text(json.dumps({"wandb_version": 1, **{k: {"value": v} for k, v in parameters.items()}}))
    for name, value in {"WANDB_SWEEP_ID": "sweep1", "WANDB_RUN_ID": "agentrun1",
                        "WANDB_SWEEP_PARAM_PATH": path}.items():
        monkeypatch.setenv(name, str(value))


def test_under_an_agent_the_metrics_go_into_the_agents_run(offline_wandb, tmp_path, monkeypatch, capsys):
    _as_an_agent(monkeypatch, tmp_path, {"learning_rate": 0.002, "num_rare_words_to_remove": 1})
    code = run_cli(train.main, _agent_argv(tmp_path, "0.002"))
    assert code == 0, capsys.readouterr().err
    (run_dir,) = offline_runs(offline_wandb)
    summary = summary_of(run_dir)
    assert run_dir.name.endswith("-agentrun1") and summary["run_id"] == "agentrun1"
    assert (summary["config"]["learning_rate"], summary["config"]["num_rare_words_to_remove"]) == (0.002, 1)
    val = [json.loads(line) for line in (tmp_path / "runs" / "trial" / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "val"]
    assert [row["eval/loss"] for row in history(run_dir) if "eval/loss" in row] == [r["loss"] for r in val]
    assert not (tmp_path / "runs" / "trial" / "tensorboard").exists()


def test_under_an_agent_a_value_the_arguments_did_not_deliver_is_refused(offline_wandb, tmp_path, monkeypatch,
                                                                         capsys):
    _as_an_agent(monkeypatch, tmp_path, {"learning_rate": 0.002})
    code = run_cli(train.main, _agent_argv(tmp_path, "0.003"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert "learning_rate is 0.002 in the sweep but 0.003 in this run" in err[-1], err[-1]
    assert not (tmp_path / "runs").exists() and not offline_runs(offline_wandb)


def test_asking_for_wandb_without_the_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec and import both fail
    code = run_cli(train.main, _agent_argv(tmp_path, "0.002"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("error: --report-to wandb: the wandb package is not installed "
                      "(install it: pip install -r requirements-wandb.txt)"), err
    assert not (tmp_path / "runs").exists()
