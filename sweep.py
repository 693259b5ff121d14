"""Hyperparameter sweeps over train.py options, with our own random / grid / TPE search and pruning.

    python sweep.py --trials 20                             # experiments/sweep.json, a new sweep folder
    python sweep.py --config experiments/sweep_seed.json --trials 20 --name seed-space
    python sweep.py --resume runs/<sweep> [--trials 30]     # continue (also from another shell: a second worker)
    python sweep.py --resume runs/<sweep> --workers 2       # two worker processes on this machine
    python sweep.py --workers 4 --gpus-per-trial 1          # four trials at a time, one GPU each
    python sweep.py --workers 2 --gpus-per-trial 4 --launcher "torchrun --nproc_per_node 4"  # a trial per 4 GPUs
    python sweep.py --status runs/<sweep>                   # the trial table and the best trial
    python sweep.py --report runs/<sweep>                   # runs/<sweep>/report.html (also written after a sweep)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from lib.core.cli import CliParser, run_cli
from lib.core.options import checked_number
from lib.core.progress import progress_enabled
from lib.search.launch import parse_launcher, worker_gpus
from lib.search.report import write_report
from lib.search.sweep import SweepFolder, SweepOptions, create_sweep, run_sweep, run_worker, write_status


def main(argv: list[str]) -> int:
    parser = CliParser(prog="sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("experiments/sweep.json"),
                        help="sweep config in the W&B schema, JSON or YAML (default: experiments/sweep.json)")
    parser.add_argument("--trials", type=checked_number(int, at_least=1), default=None,
                        help="total number of trials of the sweep, counted over every resume (default: run_cap)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs"), help="where the sweep folder goes (default: runs)")
    parser.add_argument("--name", default=None, help="sweep folder name (default: sweep-<date>-<time>)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampler seed; suggestion k depends only on (seed, k) (default: 0)")
    parser.add_argument("--workers", type=checked_number(int, at_least=1), default=1,
                        help="worker processes on this machine (default: 1)")
    parser.add_argument("--gpus-per-trial", type=checked_number(int, at_least=1), default=None,
                        help="give each worker its own GPUs, dealt from CUDA_VISIBLE_DEVICES (default: leave the "
                             "device alone)")
    parser.add_argument("--launcher", default=None,
                        help='run each trial as this torchrun job, e.g. "torchrun --nproc_per_node 4" (default: '
                             "in the worker process)")
    parser.add_argument("--stale-after", type=checked_number(float, above=0), default=600.0,
                        help="seconds without a heartbeat before a running trial is requeued (default: 600)")
    parser.add_argument("--n-startup-trials", type=checked_number(int, at_least=0), default=5,
                        help="random (Latin hypercube) trials before TPE models the space (default: 5)")
    parser.add_argument("--resume", type=Path, default=None, help="continue the sweep in this folder")
    parser.add_argument("--status", type=Path, default=None, help="print the trial table of this sweep folder")
    parser.add_argument("--report", type=Path, default=None,
                        help="write report.html (charts, best trial, importance) into this sweep folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.status:
        print(write_status(SweepFolder(args.status)))
        return 0
    if args.report:
        print(f"report: {write_report(SweepFolder(args.report))}")
        return 0
    launcher = parse_launcher(args.launcher, args.gpus_per_trial) if args.launcher is not None else None
    gpus = worker_gpus(args.workers, args.gpus_per_trial, launched=launcher is not None)  # before anything is written
    folder = SweepFolder(args.resume) if args.resume else create_sweep(args.config, args.output_dir, args.name,
                                                                       args.seed, args.trials)
    options = SweepOptions(args.trials, args.workers, args.stale_after, args.n_startup_trials,
                           progress_enabled(args.quiet), gpus, launcher)
    if gpus and args.workers == 1:
        # CUDA here has counted its devices already, so this reaches launched trials only; a trial trained
        # in this process uses cuda:0, which is the first GPU of the pool and so this worker's
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    try:
        run_sweep(folder.path, options, worker_process)
    except KeyboardInterrupt:
        print(f"\nstopped; the running trial keeps its state. Continue with:\n  python sweep.py --resume {folder.path}",
              file=sys.stderr)
        return 130
    print(write_status(folder))
    print(f"report: {write_report(folder)}")
    return 0


def worker_process(path: Path, options: SweepOptions, threads: int, gpus: str | None) -> None:
    """One of --workers N processes: its share of the CPU threads, its own GPUs and log lines. Ctrl-C
    reaches every worker; each saves its trial and returns it to the queue, and the parent says how to
    resume."""
    if gpus is not None:  # before CUDA starts in this process; launched trials inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_worker(path, options)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(run_cli(main))
