"""Train ensemble members, or combine finished runs into one prediction.

    python ensemble.py train --models scratch:tiny scratch:mini --config experiments/nsmc4_scratch.yaml \\
        [--folds 5] [train.py flags]
    python ensemble.py vote runs/a runs/b --test data/test.csv --out submission.csv [--weights fit] [--stack]
        [--calibrate temperature] [--prior-correction em|train|counts] [--save runs/ens-NAME]
    python ensemble.py soup runs/a runs/b [--greedy] [--metric accuracy|macro_f1|nll] --save runs/soup-NAME
    python ensemble.py soup runs/<sweep> --top 5 --greedy --save runs/soup-NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.core.cli import CliParser, run_cli
from lib.core.errors import UserError
from lib.core.options import checked_number
from lib.core.progress import progress_enabled
from lib.ensemble.calibration import CALIBRATIONS, PRIOR_CORRECTIONS
from lib.ensemble.pooling import AVERAGE_MODES
from lib.ensemble.soup import SOUP_METRICS, soup
from lib.ensemble.train import train_ensemble
from lib.ensemble.vote import vote
from lib.finetune.predict import INFERENCE_PRECISIONS, Inference
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.search import TrialState
from lib.search.sweep import SweepFolder, open_sweep


def _build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="ensemble.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,vote,soup}")
    train = commands.add_parser(
        "train", allow_abbrev=False,
        help="train one run per model (and per fold) with shared options",
        description="Train one run per model with shared options; any train.py flag (--config, --epochs, "
                    "--output-dir, --overwrite, --quiet, ...) applies to every member.")
    train.add_argument("--models", nargs="+", required=True,
                       help="hub ids, local folders or scratch: presets, one member each")
    train.add_argument("--folds", type=checked_number(int, at_least=2), default=None,
                       help="K-fold members: K runs per model and their out-of-fold logits (default: the "
                            "config's num_folds, else one validation split)")
    train.add_argument("--name", default=None, help="prefix of the member folders (default: ens-<date>-<time>)")

    combine = commands.add_parser(
        "vote", allow_abbrev=False,
        help="soft-vote or stack finished runs, compare them on validation, predict a test file",
        description="Soft-vote or stack finished runs (or cross-validation folders from train --folds).")
    combine.add_argument("runs", nargs="+", type=Path, help="finished run folders validated on the same rows")
    combine.add_argument("--test", type=Path, default=None, help="table to predict (without it: validation only)")
    combine.add_argument("--out", type=Path, default=Path("submission.csv"),
                         help="where to write ID,pred (default: submission.csv)")
    combine.add_argument("--average", choices=AVERAGE_MODES, default="logits",
                         help="pool members' logits (default; a geometric mean of probabilities) or probabilities")
    combine.add_argument("--weights", default=None,
                         help="comma-separated member weights (1,1,2), or 'fit' on validation NLL; default: equal")
    combine.add_argument("--stack", action="store_true",
                         help="predict with a logistic-regression meta-learner on the members' logits "
                              "(scored cross-validated next to voting)")
    combine.add_argument("--calibrate", choices=CALIBRATIONS, default=None,
                         help="fit a temperature on validation NLL after pooling")
    combine.add_argument("--prior-correction", choices=PRIOR_CORRECTIONS, default=None,
                         help="em: re-estimate the test class prior (Saerens et al. 2002); "
                              "train: make the mean test posterior match the training prior; "
                              "counts: make the predicted class counts match the training distribution "
                              "(trades accuracy for macro-F1; its effect on validation is reported)")
    combine.add_argument("--save", type=Path, default=None, help="write an ensemble folder predict.py can use")
    combine.add_argument("--overwrite", action="store_true", help="replace the --save folder if it exists")
    combine.add_argument("--pred-column", default="pred", help="name of the prediction column (default: pred)")
    combine.add_argument("--batch-size", type=checked_number(int, at_least=1), default=None,
                         help="default: each run's eval batch size")
    combine.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    combine.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="run",
                         help="of the test predictions; run (default): each run's training precision")
    combine.add_argument("--quiet", action="store_true", help="no progress bars")

    mix = commands.add_parser(
        "soup", allow_abbrev=False,
        help="average the weights of runs fine-tuned from one initial model into one model (a model soup)",
        description="Average the weights of finished runs that start from the same initial weights (uniform and "
                    "greedy soups, Wortsman et al. 2022); compare them with each run and the vote of the runs.")
    mix.add_argument("runs", nargs="+", type=Path, help="finished run folders, or one sweep folder")
    mix.add_argument("--top", type=checked_number(int, at_least=1), default=None,
                     help="with a sweep folder: its K best finished trials by the sweep's metric (default: all)")
    mix.add_argument("--greedy", action="store_true",
                     help="save the greedy soup (runs added best first while the validation metric does not drop) "
                          "instead of the uniform one")
    mix.add_argument("--metric", choices=SOUP_METRICS, default="accuracy",
                     help="validation metric that orders the runs and decides the greedy soup (default: accuracy)")
    mix.add_argument("--save", type=Path, default=None, help="write the soup as a run folder predict.py can use")
    mix.add_argument("--overwrite", action="store_true", help="replace the --save folder if it exists")
    mix.add_argument("--batch-size", type=checked_number(int, at_least=1), default=None,
                     help="default: the best run's eval batch size")
    mix.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    mix.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _soup_runs(paths: list[Path], top: int | None) -> list[Path]:
    """The run folders given, or a sweep folder's finished trials ranked by the sweep's metric."""
    if not any(SweepFolder(path).journal.is_file() for path in paths):
        if top is not None:
            raise UserError("--top: needs a sweep folder (runs/<sweep>) to pick the best trials from")
        return paths
    if len(paths) > 1:
        raise UserError("soup: give one sweep folder alone, or run folders")
    folder, journal, space = open_sweep(paths[0])
    done = [t for t in journal.trials() if t.state is TrialState.COMPLETE and t.has_value]
    if not done:
        raise UserError(f"{folder.path}: no finished trial to soup yet")
    ranked = sorted(done, key=lambda t: (space.metric.sign * t.value, t.number))
    return [folder.trials / folder.trial_name(t.number) for t in ranked[:top]]


def main(argv: list[str]) -> int:
    parser = _build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        stop = StopRequest()
        try:
            with stop.on_stop_signals():
                trained = train_ensemble(args.models, rest, folds=args.folds, name=args.name, stop=stop)
        except TrainingInterrupted as interrupted:
            print(f"\nstopped; state saved. Resume the member with:\n  python train.py --resume "
                  f"{interrupted.run_path}", file=sys.stderr)
            return 130
        print(trained.report)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "soup":
        print(soup(_soup_runs(args.runs, args.top), greedy=args.greedy, metric=args.metric, save=args.save,
                   overwrite=args.overwrite,
                   inference=Inference(args.device, args.batch_size, show_progress=progress_enabled(args.quiet)),
                   argv=argv))
        return 0
    report = vote(args.runs, test=args.test, out=args.out, average=args.average, weights=args.weights,
                  stack=args.stack, calibrate=args.calibrate, prior_correction=args.prior_correction,
                  save=args.save, overwrite=args.overwrite, pred_column=args.pred_column,
                  inference=Inference(args.device, args.batch_size, args.precision, progress_enabled(args.quiet)))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
