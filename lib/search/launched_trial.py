"""What every process of a launched trial runs (lib/search/launch.py starts it under torchrun):

    python -m torch.distributed.run <launcher options> -m lib.search.launched_trial SWEEP TRIAL WORKER

Rank 0 reports each epoch to the journal and asks the pruner in the name of WORKER, the worker that
claimed the trial; the loop shares its decision with the other ranks, as it shares a stop request.
A bad trial's message goes into the journal from rank 0; the worker records the rest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


from lib.core.cli import CliParser, run_cli
from lib.core.errors import UserError
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.search import TrialState, pruner_for
from lib.search.launch import LAUNCHED_ENTRY, die_with_parent
from lib.search.sweep import TrialMonitor, metric_key, open_sweep, train_trial


def main(argv: list[str]) -> int:
    parser = CliParser(prog=f"python -m {LAUNCHED_ENTRY}", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("trial", type=int)
    parser.add_argument("worker", help="the worker that claimed the trial")
    parser.add_argument("--progress", action="store_true", help="progress bars (rank 0)")
    args = parser.parse_args(argv)
    die_with_parent()  # torchrun killed: save and stop rather than train on alone
    folder, journal, space = open_sweep(args.sweep)
    trial = next((t for t in journal.trials() if t.number == args.trial), None)
    if trial is None or trial.state is not TrialState.RUNNING or trial.worker != args.worker:
        raise UserError(f"trial {args.trial}: not running for worker {args.worker} in {folder.path}")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    stop = (TrialMonitor(journal, trial, args.worker, metric_key(space), pruner_for(space), heartbeat_s=None)
            if main_rank else StopRequest())
    try:
        with stop.on_stop_signals(repeat_aborts=False):  # torchrun, a scheduler and a dying parent may each signal
            train_trial(folder, space, trial, stop, args.progress)
    except TrainingInterrupted:
        return 130
    except UserError as error:
        if main_rank:
            journal.fail(trial.number, args.worker, str(error))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
