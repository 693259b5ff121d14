"""Where a sweep's trials run: each worker's GPUs, and a trial as a torchrun job.

`--gpus-per-trial G` deals each worker its own G GPUs of the visible pool. `--launcher "torchrun
..."` runs each trial as `python -m torch.distributed.run <its options> -m lib.search.launched_trial
...` (this interpreter's torchrun), so every rank trains the trial and the worker only supervises:
it keeps the claim alive, owns the signals and records the result (lib/search/sweep.py).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from torch.distributed.run import get_args_parser, parse_min_max_nnodes

from lib.core.errors import UserError
from lib.finetune.run_folder import INCOMPLETE_SUFFIX, RunFolder
from lib.loop.stop import StopRequest, TrainingInterrupted

LAUNCHED_ENTRY = "lib.search.launched_trial"
REPOSITORY = Path(__file__).resolve().parents[2]  # so the ranks import lib/ from any working directory
TORCHRUN_MODULE = "torch.distributed.run"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def gpu_pool(visible: str | None, device_count: int) -> list[str]:
    """The GPUs a sweep may deal out: CUDA_VISIBLE_DEVICES as given (indices, UUIDs or MIG names) when
    set, else every device; CUDA itself stops at the first id it cannot use, hence the cut at its count."""
    if visible is None:
        return [str(i) for i in range(device_count)]
    return [d.strip() for d in visible.split(",") if d.strip()][:device_count]


def assign_gpus(workers: int, gpus_per_trial: int, pool: Sequence[str]) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: worker i gets the i-th run of `gpus_per_trial` GPUs of the
    pool, dealt in turn, so no two workers share a GPU and a trial's GPUs are neighbours (usually the
    fastest links between them)."""
    if not pool:
        raise UserError("--gpus-per-trial: no CUDA GPU is visible here (check CUDA_VISIBLE_DEVICES); "
                        "expected at least one, or leave the flag out to train on the CPU")
    if workers * gpus_per_trial > len(pool):
        raise UserError(f"--gpus-per-trial {gpus_per_trial}: {workers} worker(s) need {workers * gpus_per_trial} "
                        f"GPUs, {len(pool)} visible ({','.join(pool)}); expected --workers at most "
                        f"{len(pool) // gpus_per_trial}")
    return [",".join(pool[i * gpus_per_trial:(i + 1) * gpus_per_trial]) for i in range(workers)]


def worker_gpus(workers: int, gpus_per_trial: int | None, launched: bool) -> tuple[str, ...] | None:
    """This machine's assignment for `--workers` and `--gpus-per-trial` (None: devices left alone)."""
    if gpus_per_trial is None:
        return None
    if gpus_per_trial > 1 and not launched:
        raise UserError(f"--gpus-per-trial {gpus_per_trial}: a trial trained in the worker process uses one GPU; "
                        f'expected 1, or --launcher "torchrun --nproc_per_node {gpus_per_trial}"')
    if not torch.cuda.is_available():
        raise UserError(f"--gpus-per-trial {gpus_per_trial}: CUDA is not available on this machine; "
                        "expected GPUs, or leave the flag out to train on the CPU")
    return tuple(assign_gpus(workers, gpus_per_trial, gpu_pool(os.environ.get("CUDA_VISIBLE_DEVICES"),
                                                                torch.cuda.device_count())))


@dataclass(frozen=True)
class Launcher:
    """torchrun's options for one trial; `nproc_per_node` is None for its auto/cpu/gpu forms."""

    options: tuple[str, ...]
    nproc_per_node: int | None

    def command(self, sweep: Path, trial: int, worker: str, show_progress: bool) -> list[str]:
        return [sys.executable, "-m", TORCHRUN_MODULE, *self.options, "-m", LAUNCHED_ENTRY,
                str(sweep), str(trial), worker, *(["--progress"] if show_progress else [])]

    def environment(self, base: Mapping[str, str], threads: int) -> dict[str, str]:
        """The job's environment: lib/ importable, and this worker's CPU threads shared among its ranks
        (torchrun would give each one thread) unless OMP_NUM_THREADS says otherwise."""
        env = dict(base)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), base.get("PYTHONPATH")) if p)
        if self.nproc_per_node and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, threads // self.nproc_per_node))
        return env


def parse_launcher(text: str, gpus_per_trial: int | None) -> Launcher:
    """Read `--launcher`: torchrun (or `python -m torch.distributed.run`) with options for one machine.

    torchrun's own parser reads the options, so a misspelt one is refused here rather than in trial 0.
    The sweep adds the program, so a script in the launcher is refused, as are several nodes: a trial is
    one job on one machine, and machines share a sweep through its folder (docs/sweeps.md).
    """
    def refuse(message: str) -> NoReturn:
        raise UserError(f"--launcher {text!r}: {message}")

    try:
        tokens = shlex.split(text)
    except ValueError as error:  # an unclosed quote
        refuse(str(error))
    if tokens and Path(tokens[0]).name == "torchrun":
        options = tokens[1:]
    elif len(tokens) >= 3 and Path(tokens[0]).name.startswith("python") and tokens[1:3] == ["-m", TORCHRUN_MODULE]:
        options = tokens[3:]
    else:
        refuse('expected torchrun and its options, e.g. "torchrun --nproc_per_node 4"')
    parser = get_args_parser()
    parser.error = lambda message: refuse(f"torchrun: {message}")  # argparse would print usage and exit
    args = parser.parse_args([*options, "-m", LAUNCHED_ENTRY])
    if args.training_script != LAUNCHED_ENTRY or not args.module:
        refuse(f"expected torchrun's options only; the sweep adds the program (found {args.training_script!r})")
    if args.no_python or args.run_path:
        refuse("expected the trial to run in Python (no --no-python or --run-path)")
    if parse_min_max_nnodes(args.nnodes)[1] != 1:
        refuse(f"--nnodes {args.nnodes}: expected one machine per trial; several machines share a sweep by "
               "each running sweep.py --resume on its folder")
    nproc = int(args.nproc_per_node) if args.nproc_per_node.isdigit() else None
    if gpus_per_trial is not None and nproc is not None and nproc > gpus_per_trial:
        refuse(f"--nproc_per_node {nproc}: each process takes a GPU of its trial's; expected --gpus-per-trial "
               f"{nproc} or more (got {gpus_per_trial})")
    return Launcher(tuple(options), nproc)


class LaunchFailed(Exception):
    """A launched trial ended with an error rather than after a stop request."""


def run_trial_job(launcher: Launcher, sweep: Path, trial: int, worker: str, run: Path, show_progress: bool,
                  stop: StopRequest) -> None:
    """Train a claimed trial as a torchrun job until `run` is finished.

    Raises TrainingInterrupted when the job ended after a stop request (the ranks saved their state),
    LaunchFailed when it ended otherwise without finishing the run folder.
    """
    env = launcher.environment(os.environ, torch.get_num_threads())
    code = run_launched(launcher.command(sweep, trial, worker, show_progress), env, stop)
    if code == 0 and RunFolder(run).is_finished:
        return
    if stop.requested:
        raise TrainingInterrupted(run.with_name(run.name + INCOMPLETE_SUFFIX))
    raise LaunchFailed(f"the launched trial ({' '.join(launcher.options)}) exited with status {code}")


def run_launched(command: list[str], env: Mapping[str, str], stop: StopRequest, poll_s: float = 0.5) -> int:
    """Run a launched trial's job to its end and return its exit status.

    The job gets its own session, so a terminal's Ctrl-C reaches torchrun once, through this worker:
    the first stop request here (Ctrl-C, SIGTERM, a lost claim) is passed on as one SIGTERM, which
    torchrun forwards to every rank, and they save after their step. A second Ctrl-C raised here
    (KeyboardInterrupt) kills torchrun and returns at once; its ranks, sent SIGTERM as it dies, save.
    """
    process = subprocess.Popen(command, env=dict(env), start_new_session=True, preexec_fn=die_with_parent)
    forwarded = False
    try:
        while True:
            try:
                return process.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                if stop.requested and not forwarded:
                    process.send_signal(signal.SIGTERM)
                    forwarded = True
    except BaseException:
        process.kill()
        process.wait()
        raise


def die_with_parent() -> None:
    """On Linux, have this process sent SIGTERM when its parent dies, so a job never trains on,
    unsupervised, after its worker (or a rank after torchrun) was killed; elsewhere nothing. Also run
    between fork and exec, so it does nothing else."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
