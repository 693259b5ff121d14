"""sweep.py end to end on tiny models: trials are run folders, one is pruned, an interrupted sweep resumes."""

import json
import os
import signal
from pathlib import Path

import pytest

import sweep
from lib.core.cli import run_cli
from lib.loop.state import load_state
from lib.search import Journal, TrialState
from lib.search.sweep import SweepFolder, SweepOptions, run_sweep


def _config(tmp_path, toy_data, pruning=True) -> str:
    parameters = {
        "train_file": {"value": str(toy_data["train"])}, "model": {"value": "scratch:tiny"},
        "scratch_vocab_size": {"value": 200}, "val_size": {"value": 0.25}, "seed": {"value": 7},
        "per_device_train_batch_size": {"value": 16}, "num_train_epochs": {"value": 3},
        "warmup_ratio": {"value": 0.1}, "cache_dir": {"value": str(tmp_path / "cache")},
        "learning_rate": {"values": [2e-3, 1e-7, 3e-3]},
    }
    config = {"method": "grid", "metric": {"name": "eval_loss", "goal": "minimize"}, "parameters": parameters}
    if pruning:
        config["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 2}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_a_small_sweep_runs_every_trial_as_a_run_folder_and_prunes_the_hopeless_one(tmp_path, toy_data, capsys):
    config = _config(tmp_path, toy_data)
    code = run_cli(sweep.main, ["--config", config, "--output-dir", str(tmp_path / "runs"), "--name", "s", "--quiet"])
    assert code == 0
    folder = SweepFolder(tmp_path / "runs" / "s")
    trials = Journal.open(folder.journal).trials()
    assert [t.params["learning_rate"] for t in trials] == [2e-3, 1e-7, 3e-3]
    assert trials[0].state is TrialState.COMPLETE and trials[1].state is TrialState.PRUNED
    assert trials[1].last_epoch == 1 and trials[0].last_epoch == 3
    for trial in trials:
        result = json.loads((folder.trials / f"trial-{trial.number:03d}" / "result.json").read_text())
        assert result["best"]["loss"] == pytest.approx(trial.value)
        assert result["pruned"] is (trial.state is TrialState.PRUNED)
    out = capsys.readouterr().out
    assert "best: trial" in out and folder.status.is_file()
    assert len(folder.status.read_text().splitlines()) == 4
    assert any((folder.tensorboard / "trial-000").iterdir())


def test_an_interrupted_sweep_resumes_the_running_trial_and_keeps_its_trial_budget(tmp_path, toy_data, monkeypatch):
    import lib.search.sweep

    config = Path(_config(tmp_path, toy_data, pruning=False))
    folder = lib.search.sweep.create_sweep(config, tmp_path / "runs", "r", seed=0, trials=2)  # of a grid of 3

    original = lib.search.sweep.TrialMonitor.should_stop

    def ctrl_c_in_trial_one(self, global_step):  # a real Ctrl-C during trial 1, at step 30 (epoch 2 of 3)
        if self.trial.number == 1 and global_step == 30 and self.trial.attempt == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, global_step)

    monkeypatch.setattr(lib.search.sweep.TrialMonitor, "should_stop", ctrl_c_in_trial_one)
    options = SweepOptions(trials=None, workers=1, stale_after_s=600, n_startup_trials=5, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(folder.path, options)
    trials = Journal.open(folder.journal).trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.WAITING]
    state = load_state(folder.trials / "trial-001.incomplete" / "last" / "training_state.pt")
    assert state["loop"]["global_step"] == 30  # saved at the step of the Ctrl-C, not at the last epoch end

    run_sweep(folder.path, options)  # a plain --resume: no --trials given again
    trials = Journal.open(folder.journal).trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[1].attempt == 2 and trials[1].params["learning_rate"] == 1e-7
    log = (folder.trials / "trial-001" / "train.log").read_text()
    assert "resuming" in log


@pytest.mark.parametrize("parameters, needle", [
    ({"learning_rate": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, "learning_rate"),
    ({"learning_rat": {"values": [1, 2]}}, "learning_rat"),
    ({"lr_scheduler_type": {"distribution": "normalish", "values": [1]}}, "normalish"),
    ({"learning_rate": {"min": 2.0, "max": 1.0}}, "learning_rate"),
])
def test_bad_sweep_configs_are_refused_in_one_line(tmp_path, capsys, parameters, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"method": "random", "metric": {"name": "eval_loss", "goal": "minimize"},
                                "parameters": parameters}))
    code = run_cli(sweep.main, ["--config", str(path), "--trials", "2", "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and needle in err[-1] and err[-1].startswith("error:")
    assert not (tmp_path / "runs").exists()


def test_two_worker_processes_share_one_sweep_without_running_a_trial_twice(tmp_path, toy_data):
    import lib.search.sweep

    folder = lib.search.sweep.create_sweep(Path(_config(tmp_path, toy_data, pruning=False)), tmp_path / "runs", "w",
                                    seed=0, trials=None)
    run_sweep(folder.path, SweepOptions(trials=None, workers=2, stale_after_s=600, n_startup_trials=5,
                                        show_progress=False), sweep.worker_process)
    trials = Journal.open(folder.journal).trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(t.attempt == 1 for t in trials)  # each claimed once, by whichever worker got there first


def test_trials_that_vary_the_loss_itself_are_compared_by_plain_cross_entropy():
    """A larger focal gamma alone lowers the validation loss; ranking trials by it would reward that."""
    from lib.search import parse_sweep_config
    from lib.search.sweep import metric_key

    def space(parameters, metric="eval_loss"):
        return parse_sweep_config({"method": "random", "metric": {"name": metric, "goal": "minimize"},
                                   "parameters": parameters})

    lr = {"learning_rate": {"values": [1e-3, 2e-3]}}
    assert metric_key(space(lr)) == "loss"
    assert metric_key(space({**lr, "focal_loss_gamma": {"value": 2.0}})) == "loss"  # the same loss for all
    assert metric_key(space({**lr, "focal_loss_gamma": {"values": [0.0, 2.0]}})) == "nll"
    assert metric_key(space({**lr, "label_smoothing_factor": {"values": [0.0, 0.1]}})) == "nll"
    assert metric_key(space({**lr, "label_smoothing_factor": {"values": [0.0, 0.1]}}, "eval_accuracy")) == "accuracy"
