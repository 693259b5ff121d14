"""Sweeps on several GPUs and as torchrun jobs, on a CPU: each worker's GPUs (faked), bad launch flags,
the worker's side of a launched trial (faked jobs), and one real 2-process gloo trial in a sweep."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import sweep
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.loop.stop import StopRequest
from lib.search import Journal, TrialState, launch, launched_trial, make_sampler
from lib.search.launch import assign_gpus, gpu_pool, parse_launcher, run_launched, worker_gpus
from lib.search.sweep import SweepOptions, create_sweep, open_sweep, run_sweep

TORCHRUN_2 = "torchrun --nproc_per_node 2"


def _config(tmp_path, toy_data, epochs=2, **constants):
    parameters = {
        "train_file": {"value": str(toy_data["train"])}, "model": {"value": "scratch:tiny"},
        "scratch_vocab_size": {"value": 200}, "val_size": {"value": 0.25}, "seed": {"value": 7},
        "per_device_train_batch_size": {"value": 8}, "num_train_epochs": {"value": epochs},
        "warmup_ratio": {"value": 0.1}, "cache_dir": {"value": str(tmp_path / "cache")},
        "learning_rate": {"values": [2e-3, 1e-7]}, **{k: {"value": v} for k, v in constants.items()},
    }
    config = {"method": "grid", "metric": {"name": "eval_loss", "goal": "minimize"}, "parameters": parameters,
              "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(config))
    return path


def _sweep(tmp_path, toy_data, epochs=2, **constants):
    return create_sweep(_config(tmp_path, toy_data, epochs, **constants), tmp_path / "runs", "s", seed=0, trials=None)


def _options(**fields):
    return SweepOptions(**{"trials": None, "workers": 1, "stale_after_s": 600, "n_startup_trials": 5,
                           "show_progress": False, **fields})


def test_the_gpu_pool_is_cuda_visible_devices_when_set_else_every_device():
    assert gpu_pool(None, 4) == ["0", "1", "2", "3"]
    assert gpu_pool("3, 5", 8) == ["3", "5"]
    assert gpu_pool("GPU-aa,GPU-bb,GPU-cc", 2) == ["GPU-aa", "GPU-bb"]  # CUDA stops where it cannot go on
    assert gpu_pool("", 4) == []


def test_each_worker_gets_its_own_gpus_dealt_in_turn_and_too_many_workers_are_refused():
    assert assign_gpus(4, 1, ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert assign_gpus(2, 2, ["4", "5", "6", "7"]) == ["4,5", "6,7"]
    assert assign_gpus(2, 3, [str(i) for i in range(8)]) == ["0,1,2", "3,4,5"]  # two GPUs left idle
    with pytest.raises(UserError, match=r"--gpus-per-trial 2: 3 worker\(s\) need 6 GPUs, 4 visible.*at most 2"):
        assign_gpus(3, 2, ["0", "1", "2", "3"])
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        assign_gpus(1, 1, [])


def test_worker_gpus_reads_this_machine_and_refuses_what_it_cannot_serve(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_gpus(2, None, launched=False) is None
    with pytest.raises(UserError, match="--gpus-per-trial 1: CUDA is not available"):
        worker_gpus(1, 1, launched=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert worker_gpus(3, 1, launched=False) == ("2", "5", "7")
    with pytest.raises(UserError, match="--gpus-per-trial 2: a trial trained in the worker process uses one GPU"):
        worker_gpus(1, 2, launched=False)
    assert worker_gpus(1, 2, launched=True) == ("2,5",)


@pytest.mark.parametrize("flags, needle", [
    (["--gpus-per-trial", "1"], "--gpus-per-trial 1: CUDA is not available"),
    (["--launcher", "mpirun -np 2"], "--launcher 'mpirun -np 2': expected torchrun"),
    (["--launcher", "torchrun --nproc_per_node 2 train.py"], "the sweep adds the program"),
    (["--launcher", "torchrun --nnodes 2 --nproc_per_node 2"], "--nnodes 2: expected one machine per trial"),
    (["--launcher", "torchrun --nproc_per_node 2 --bogus"], "torchrun: unrecognized arguments: --bogus"),
    (["--launcher", "torchrun --no-python --nproc_per_node 2"], "no --no-python"),
    (["--launcher", "torchrun --nproc_per_node 4", "--gpus-per-trial", "2"], "expected --gpus-per-trial 4 or more"),
    (["--launcher", "torchrun 'unclosed"], "--launcher"),
])
def test_bad_launch_flags_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                              flags, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = run_cli(sweep.main, ["--config", "experiments/sweep.json", "--trials", "2",
                                "--output-dir", str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and needle in err[-1]
    assert not (tmp_path / "runs").exists()


class _InlineProcess:
    """A worker process run in this one when started: a spawned one would spend seconds importing torch."""

    def __init__(self, target, args):
        self.target, self.args = target, args

    def start(self):
        self.target(*self.args)

    def join(self):
        pass


class _Context:
    Process = _InlineProcess


def test_each_worker_process_starts_with_its_own_cuda_visible_devices(tmp_path, toy_data, monkeypatch):
    import lib.search.sweep

    folder = _sweep(tmp_path, toy_data)
    seen = []
    monkeypatch.setattr(lib.search.sweep.multiprocessing, "get_context", lambda method: _Context)
    monkeypatch.setattr(sweep, "run_worker", lambda path, options: seen.append(
        (os.environ.get("CUDA_VISIBLE_DEVICES"), options.workers, options.gpus, torch.get_num_threads())))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")  # the pool, restored afterwards
    threads = torch.get_num_threads()
    try:
        run_sweep(folder.path, _options(workers=2, gpus=("3", "5,6")), sweep.worker_process)
    finally:
        torch.set_num_threads(threads)
    per_worker = max(1, (os.cpu_count() or 1) // 2)
    assert seen == [("3", 1, None, per_worker), ("5,6", 1, None, per_worker)]


def test_a_lone_worker_hands_its_gpus_to_the_trials_it_launches(tmp_path, toy_data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7,9")  # restored afterwards: sweep.py sets it for its worker
    seen = []

    def job(command, env, stop, poll_s=0.5):
        seen.append(env["CUDA_VISIBLE_DEVICES"])
        return 1

    monkeypatch.setattr(launch, "run_launched", job)
    code = run_cli(sweep.main, ["--config", str(_config(tmp_path, toy_data)), "--output-dir", str(tmp_path / "runs"),
                                "--name", "g", "--quiet", "--gpus-per-trial", "2", "--launcher", TORCHRUN_2])
    assert code == 0 and seen == ["4,7", "4,7"]  # the grid's two trials, each on this worker's two GPUs


def test_a_stop_request_reaches_the_job_as_one_sigterm_and_its_exit_status_comes_back(tmp_path):
    ready, seen = tmp_path / "ready", tmp_path / "sigterms"
    job = ("import signal, sys, time\n"
           "count = []\n"
           "signal.signal(signal.SIGTERM, lambda *a: count.append(1))\n"
           f"open({str(ready)!r}, 'w').close()\n"
           "time.sleep(1)\n"
           f"open({str(seen)!r}, 'w').write(str(len(count)))\n"
           "sys.exit(3)\n")
    stop = StopRequest()

    def request_once_running():
        while not ready.exists():
            time.sleep(0.05)
        stop.requested = True

    threading.Thread(target=request_once_running, daemon=True).start()
    assert run_launched([sys.executable, "-c", job], os.environ, stop, poll_s=0.1) == 3
    assert seen.read_text() == "1"  # once, however many polls saw the request


def test_a_crashed_launch_fails_the_trial_and_an_interrupted_one_returns_to_the_queue(tmp_path, toy_data,
                                                                                      monkeypatch):
    folder = _sweep(tmp_path, toy_data)
    calls = []

    def crashed(command, env, stop, poll_s=0.5):
        calls.append((command, env))
        return 1

    monkeypatch.setattr(launch, "run_launched", crashed)
    run_sweep(folder.path, _options(trials=1, launcher=parse_launcher(TORCHRUN_2, None)))
    trial = Journal.open(folder.journal).trials()[0]
    assert trial.state is TrialState.FAILED and "exited with status 1" in trial.error
    command, env = calls[0]
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"]
    assert command[6:9] == ["lib.search.launched_trial", str(folder.path), "0"] and command[9] == trial.worker
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(launch.__file__).resolve().parents[2])
    assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // 2)))

    def interrupted(command, env, stop, poll_s=0.5):  # Ctrl-C while the job ran: the ranks saved and exited
        stop.requested = True
        return 1

    monkeypatch.setattr(launch, "run_launched", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(folder.path, _options(trials=2, launcher=parse_launcher(TORCHRUN_2, None)))
    trials = Journal.open(folder.journal).trials()
    assert [t.state for t in trials] == [TrialState.FAILED, TrialState.WAITING]


def test_rank_zero_records_a_bad_trial_in_the_journal_in_the_claiming_workers_name(tmp_path, toy_data,
                                                                                   monkeypatch, capsys):
    monkeypatch.setattr(launched_trial, "die_with_parent", lambda: None)  # not for the test process itself
    folder = _sweep(tmp_path, toy_data, train_file=str(tmp_path / "missing.csv"))
    _, journal, space = open_sweep(folder.path)
    trial = journal.claim("host:1:w", make_sampler(space, 0).suggest, None, 600)
    assert run_cli(launched_trial.main, [str(folder.path), "0", "someone-else"]) == 2
    assert "not running for worker someone-else" in capsys.readouterr().err
    assert run_cli(launched_trial.main, [str(folder.path), str(trial.number), "host:1:w"]) == 2
    failed = Journal.open(folder.journal).trials()[0]
    assert failed.state is TrialState.FAILED and "missing.csv" in failed.error


def test_a_two_process_gloo_trial_reports_is_pruned_on_every_rank_and_is_recorded_like_an_in_process_one(
        tmp_path, toy_data):
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    folder = _sweep(tmp_path, toy_data, epochs=2)
    _, journal, space = open_sweep(folder.path)
    earlier = journal.claim("earlier", make_sampler(space, 0).suggest, None, 600)  # a good trial 0, already run
    journal.report(earlier.number, "earlier", 1, 0.5)
    journal.finish(earlier.number, "earlier", 0.3)

    run_sweep(folder.path, _options(launcher=parse_launcher(TORCHRUN_2, None)))  # trial 1: learning rate 1e-7

    trial = Journal.open(folder.journal).trials()[1]
    run = folder.trials / "trial-001"
    result = json.loads((run / "result.json").read_text())
    assert trial.state is TrialState.PRUNED and trial.attempt == 1 and list(trial.reports) == [1]
    assert result["pruned"] is True and result["best"]["loss"] == pytest.approx(trial.value)
    assert json.loads((run / "plan.json").read_text())["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 23  # both ranks stopped after epoch 1 of 2 (23 steps of 16 rows), not only rank 0
    records = [json.loads(line) for line in folder.journal.read_text().splitlines()]
    claims = [r["worker"] for r in records if r["op"] == "claimed" and r["trial"] == 1]
    assert [r["worker"] for r in records if r["op"] == "reported" and r["trial"] == 1] == claims
    assert any((folder.tensorboard / "trial-001").iterdir()) and folder.status.is_file()
    assert signal.getsignal(signal.SIGINT) is handler  # the worker's handlers are undone
