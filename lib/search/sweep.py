"""The sweep driver: workers claim trials from the journal, train each as a normal run folder,
report every epoch's validation metric, and let the pruner stop hopeless trials.

    runs/<sweep>/
        sweep.json            the sweep config as given (W&B schema)
        journal.jsonl         the only state: trials, claims, heartbeats, reports, results
        trials/trial-007/     one run folder per trial (trial-007.incomplete while it trains)
        status.csv            the trial table, rewritten by --status and at the end of each worker
        tensorboard/          HParams: one record per finished trial

A trial interrupted by Ctrl-C saves its state and goes back to the queue; one whose worker was
killed is requeued once its heartbeats stop (at once on --resume when that worker ran on this
machine and its process is gone). Either way the next worker continues the same run folder from
its last checkpoint, with the same parameters.

A worker trains its trials itself, or with a launcher as torchrun jobs (lib/search/launch.py): then
the job's rank 0 reports and asks the pruner, the loop shares the decision with every rank, and the
worker keeps the claim alive, passes stop signals on and records the result. Each worker may be
given its own GPUs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lib.core.errors import UserError
from lib.core.options import convert
from lib.finetune.config import TrainConfig, option_names
from lib.finetune.run_folder import INCOMPLETE_SUFFIX, RunFolder
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.search import (Journal, Parameter, Pruner, SweepHeader, SweepSpace, Trial, TrialState, default_worker_id,
                        load_sweep_config, make_sampler, parse_sweep_config, pruner_for)
from lib.search.importance import parameter_importance
from lib.search.launch import LaunchFailed, Launcher, run_trial_job

log = logging.getLogger(__name__)

SELECTION_KEYS = {"loss", "nll", "accuracy", "macro_f1"}
# Options that change what the validation loss measures (see metric_key).
LOSS_SHAPING = ("loss", "focal_loss_gamma", "focal_loss_alpha", "label_smoothing_factor")


@dataclass(frozen=True)
class SweepFolder:
    path: Path

    journal = property(lambda self: self.path / "journal.jsonl")
    config = property(lambda self: self.path / "sweep.json")
    trials = property(lambda self: self.path / "trials")
    status = property(lambda self: self.path / "status.csv")
    tensorboard = property(lambda self: self.path / "tensorboard")

    def trial_name(self, number: int) -> str:
        return f"trial-{number:03d}"


@dataclass(frozen=True)
class SweepOptions:
    trials: int | None
    workers: int
    stale_after_s: float
    n_startup_trials: int
    show_progress: bool
    gpus: tuple[str, ...] | None = None  # each worker process's CUDA_VISIBLE_DEVICES (launch.worker_gpus)
    launcher: Launcher | None = None  # run each trial as this torchrun job instead of in the worker


def metric_key(space: SweepSpace) -> str:
    """The validation metric a sweep compares trials by, as train.py names it (eval_loss -> loss).

    The validation loss is each trial's own objective: where the space varies the focal gamma, alpha
    or label smoothing, losses of different trials are on different scales (a larger gamma alone
    lowers it), so trials are compared by plain cross entropy (nll) instead.
    """
    name = space.metric.name
    for prefix in ("eval_", "val/", "val_", "eval/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name not in SELECTION_KEYS:
        raise UserError(f"sweep metric {name!r}: expected one of {', '.join(sorted(SELECTION_KEYS))} "
                        "(eval_ prefix accepted)")
    if name == "loss" and loss_shaping_parameters(space):
        return "nll"
    return name


def loss_shaping_parameters(space: SweepSpace) -> list[str]:
    return [p.name for p in space.searched if p.name in LOSS_SHAPING]


def metric_label(space: SweepSpace) -> str:
    return f"eval_{metric_key(space)}"


def create_sweep(config_path: Path, output_dir: Path, name: str | None, seed: int, trials: int | None) -> SweepFolder:
    """Parse the config (every bad parameter refused before anything is written) and start the journal."""
    space = load_sweep_config(config_path, known_parameters=option_names())
    if metric_key(space) == "nll" and not space.metric.name.endswith("nll"):
        log.warning("sweep metric %s: trials vary %s, which change what the validation loss measures; "
                    "comparing trials by eval_nll (plain cross entropy) instead",
                    space.metric.name, ", ".join(loss_shaping_parameters(space)))
    check_space(space, f"sweep config {config_path}")
    if space.method != "grid" and space.run_cap is None and trials is None:
        raise UserError("--trials: give a number of trials (or run_cap in the sweep config) for a "
                        f"{space.method} sweep")
    folder = SweepFolder(output_dir / (name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"))
    if folder.journal.exists():
        raise UserError(f"--name: {folder.path} already holds a sweep; continue it with "
                        f"python sweep.py --resume {folder.path}")
    folder.trials.mkdir(parents=True, exist_ok=True)
    folder.config.write_text(json.dumps(space.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    header = SweepHeader(uuid.uuid4().hex[:12], space.config_hash(), seed, space.to_dict(), trials)
    Journal.create(folder.journal, header)
    return folder


def open_sweep(path: Path) -> tuple[SweepFolder, Journal, SweepSpace]:
    folder = SweepFolder(path)
    journal = Journal.open(folder.journal)
    space = parse_sweep_config(journal.header.config, known_parameters=option_names())
    return folder, journal, space


def check_space(space: SweepSpace, source: str) -> None:
    """Every value a trial can be given passes train.py's own checks, and the fixed values build one
    config, so a bad choice, bound or fixed option fails before trial 0 rather than in it."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for parameter in space.parameters:
        for value in _deciding_values(parameter):
            convert(fields[parameter.name], value, source)
    constants = {k: v for k, v in space.constants.items() if k not in ("output_dir", "run_name")}
    TrainConfig.from_dict(constants, source=source)


def _deciding_values(parameter: Parameter) -> tuple[Any, ...]:
    """Values whose checks stand for all a parameter can take: each choice, or both ends of its range
    as the journal would hold them (a float for a continuous distribution, so an integer option fails)."""
    if parameter.is_choice:
        return parameter.values
    if parameter.step is not None:
        return parameter.grid_ends()
    return parameter.to_python(parameter.low), parameter.to_python(parameter.high)


def run_sweep(path: Path, options: SweepOptions,
              worker_process: Callable[[Path, SweepOptions, int, str | None], None] | None = None) -> None:
    """Run workers until the sweep has `options.trials` trials (counted over every call) or the grid ends.

    With several workers each is a process running `worker_process(path, options, threads, gpus)`: the
    entry script's function, which sets up its process (threads, logging, CUDA_VISIBLE_DEVICES=gpus
    before CUDA starts) as library code must not. A lone worker runs in this process, whose caller
    sets up its GPUs.
    """
    folder, journal, space = open_sweep(path)
    check_space(space, f"sweep {folder.path}")
    _requeue_dead_local_workers(journal)
    if options.workers <= 1:
        run_worker(folder.path, options)
    else:
        if worker_process is None:
            raise ValueError("run_sweep: several workers need the entry script's worker_process")
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // options.workers)
        one = dataclasses.replace(options, workers=1, gpus=None, show_progress=False)
        workers = [context.Process(target=worker_process, args=(folder.path, one, threads, gpus))
                   for gpus in options.gpus or [None] * options.workers]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except KeyboardInterrupt:  # workers got the same Ctrl-C and save their trials
            for worker in workers:
                worker.join()
            raise
    write_status(folder)


def run_worker(path: Path, options: SweepOptions) -> None:
    """Claim and run trials until none is left; Ctrl-C returns the current trial to the queue."""
    folder, journal, space = open_sweep(path)
    sampler = make_sampler(space, journal.header.seed, n_startup_trials=options.n_startup_trials)
    pruner = pruner_for(space)
    worker = default_worker_id()
    budget = options.trials if options.trials is not None else journal.header.trials
    caps = [cap for cap in (budget, space.run_cap) if cap is not None]
    max_trials = min(caps) if caps else None
    while True:
        trial = journal.claim(worker, sampler.suggest, max_trials, options.stale_after_s)
        if trial is None:
            break
        _run_trial(folder, journal, space, pruner, trial, worker, options)


class TrialMonitor(StopRequest):
    """Reports each epoch's metric to the journal, asks the pruner, and keeps the claim alive.

    In a launched trial the worker keeps the claim (`heartbeat_s`) and rank 0 reports (None): the
    claim then stays alive while torchrun starts and while the ranks save.
    """

    def __init__(self, journal: Journal, trial: Trial, worker: str, key: str, pruner: Pruner | None,
                 heartbeat_s: float | None) -> None:
        super().__init__()
        self.journal, self.trial, self.worker, self.key, self.pruner = journal, trial, worker, key, pruner
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True) if heartbeat_s else None
        if self._thread is not None:
            self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._done.wait(every):
            if not self.journal.heartbeat(self.trial.number, self.worker):
                log.warning("trial %d was taken over by another worker; stopping it here", self.trial.number)
                self.lost.set()
                self.requested = True

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def prune_after(self, step: int, epoch: float, metrics: dict[str, float]) -> bool:
        if abs(epoch - round(epoch)) > 1e-9:  # pruners compare trials at whole epochs
            return False
        self.journal.report(self.trial.number, self.worker, int(round(epoch)), metrics[self.key])
        if self.pruner is None:
            return False
        trials = self.journal.trials()
        mine = next(t for t in trials if t.number == self.trial.number)
        return self.pruner.should_prune(mine, trials)


def _run_trial(folder: SweepFolder, journal: Journal, space: SweepSpace, pruner: Pruner | None, trial: Trial,
               worker: str, options: SweepOptions) -> None:
    name = folder.trial_name(trial.number)
    key = metric_key(space)
    log.info("trial %d (attempt %d): %s", trial.number, trial.attempt, _format_params(trial.params))
    monitor = TrialMonitor(journal, trial, worker, key, pruner, heartbeat_s=max(1.0, options.stale_after_s / 4))
    try:
        with monitor.on_stop_signals():  # Ctrl-C / SIGTERM: the trial saves its state at the next step
            if options.launcher is None:
                run = train_trial(folder, space, trial, monitor, options.show_progress)
            else:  # rank 0 of the job reports and asks the pruner; this process keeps the claim alive
                run = RunFolder(folder.trials / name)
                run_trial_job(options.launcher, folder.path, trial.number, worker, run.path, options.show_progress,
                              monitor)
    except TrainingInterrupted:
        if not monitor.lost.is_set():
            journal.requeue(trial.number, "interrupted")
        raise KeyboardInterrupt from None
    except UserError as error:
        journal.fail(trial.number, worker, str(error))
        log.error("trial %d failed: %s", trial.number, error)
        return
    except LaunchFailed as error:  # rank 0 has recorded a trial's own bad input; otherwise say how it ended
        mine = next(t for t in journal.trials() if t.number == trial.number)
        if mine.state is TrialState.RUNNING and mine.worker == worker:
            journal.fail(trial.number, worker, str(error))
        log.error("trial %d failed: %s", trial.number, mine.error or error)
        return
    except Exception as error:  # a crash in one trial must not end the sweep
        journal.fail(trial.number, worker, f"{type(error).__name__}: {error}")
        log.exception("trial %d crashed", trial.number)
        return
    finally:
        monitor.close()
    result = run.read_json(run.result)
    value = result["best"][key]
    (journal.prune if result.get("pruned") else journal.finish)(trial.number, worker, value)
    _log_hparams(folder, name, trial.params, key, value, result)
    log.info("trial %d %s: %s %.4f", trial.number, "pruned" if result.get("pruned") else "finished", key, value)
    if monitor.requested and not monitor.lost.is_set():  # a Ctrl-C that came as the trial ended still stops
        raise KeyboardInterrupt


def train_trial(folder: SweepFolder, space: SweepSpace, trial: Trial, stop: StopRequest,
                show_progress: bool) -> RunFolder:
    """Train a trial's run folder, or continue it from its last checkpoint: the same in a worker and in
    every rank of a launched trial (lib/search/launched_trial.py)."""
    unfinished = RunFolder(folder.trials / (folder.trial_name(trial.number) + INCOMPLETE_SUFFIX))
    if unfinished.training_state.is_file():
        log.info("trial %d: continuing %s from its last checkpoint", trial.number, unfinished.path)
        return resume(unfinished.path, show_progress=show_progress, stop=stop)
    return train_new(trial_config(space, trial, folder), overwrite=True, show_progress=show_progress, stop=stop)


def trial_config(space: SweepSpace, trial: Trial, folder: SweepFolder) -> TrainConfig:
    values: dict[str, Any] = {**space.constants, **trial.params}
    values.update(output_dir=str(folder.trials), run_name=folder.trial_name(trial.number))
    return TrainConfig.from_dict(values, source=f"trial {trial.number}")


def _requeue_dead_local_workers(journal: Journal) -> None:
    """On --resume: a trial whose worker ran on this machine and whose process is gone is requeued now."""
    host = socket.gethostname()
    for trial in journal.trials():
        if trial.state is not TrialState.RUNNING or not trial.worker:
            continue
        worker_host, _, rest = trial.worker.partition(":")
        pid = rest.partition(":")[0]
        if worker_host == host and pid.isdigit() and not _process_alive(int(pid)):
            journal.requeue(trial.number, "worker process gone")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_hparams(folder: SweepFolder, name: str, params: dict, key: str, value: float, result: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder.tensorboard / name))
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
    metrics = {f"hparam/{key}": value, "hparam/accuracy": result["best"]["accuracy"],
               "hparam/macro_f1": result["best"]["macro_f1"]}
    writer.add_hparams(hparams, metrics, run_name=".")
    writer.close()


def _format_params(params: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_rows(folder: SweepFolder, journal: Journal, space: SweepSpace) -> list[dict[str, Any]]:
    rows = []
    for trial in journal.trials():
        ended = trial.finished_at or (time.time() if trial.state is TrialState.RUNNING else None)
        rows.append({
            "trial": trial.number, "state": trial.state.value, metric_label(space): trial.value,
            "epochs": trial.last_epoch,
            "minutes": round((ended - trial.started_at) / 60, 1) if ended and trial.started_at else None,
            "attempts": trial.attempt, **{p.name: trial.params.get(p.name) for p in space.searched},
        })
    return rows


def best_trial(journal: Journal, space: SweepSpace) -> Trial | None:
    done = [t for t in journal.trials() if t.state is TrialState.COMPLETE and t.has_value]
    return min(done, key=lambda t: space.metric.sign * t.value) if done else None


def write_status(folder: SweepFolder) -> str:
    """The trial table as text (for the terminal) and as status.csv; returns the text."""
    _, journal, space = open_sweep(folder.path)
    rows = status_rows(folder, journal, space)
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        tmp = folder.status.with_name("status.csv.tmp")
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(tmp, folder.status)
    lines = [_table(rows)] if rows else ["no trials yet"]
    best = best_trial(journal, space)
    if best is not None:
        lines.append(f"best: trial {best.number} ({metric_label(space)} {best.value:.4f}): "
                     f"{_format_params(best.params)} -> {folder.trials / folder.trial_name(best.number)}")
    trials = journal.trials()
    counts = {state.value: sum(t.state is state for t in trials) for state in TrialState}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    lines += ["", *parameter_importance(space, trials).lines()]
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    cells = [[_cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
