"""Fine-tune a text classifier into a self-describing run folder.

    python train.py                                   # offline default: a scratch BERT on data/train.csv
    python train.py --model klue/bert-base --gamma 2.96
    python train.py --config experiments/nsmc4_scratch.yaml --epochs 2
    python train.py --resume runs/<name>.incomplete
"""

from __future__ import annotations

import json
import sys

from lib.core.cli import run_cli
from lib.core.progress import progress_enabled
from lib.finetune.config import parse_train_args
from lib.finetune.trainer import resume, train_new
from lib.loop.stop import StopRequest, TrainingInterrupted


def main(argv: list[str]) -> int:
    invocation = parse_train_args(argv)
    stop = StopRequest()
    show_progress = progress_enabled(invocation.quiet)
    try:
        with stop.on_stop_signals():
            if invocation.resume is not None:
                run = resume(invocation.resume, show_progress=show_progress, stop=stop)
            else:
                run = train_new(invocation.config, overwrite=invocation.overwrite, show_progress=show_progress,
                                argv=argv, stop=stop)
    except TrainingInterrupted as interrupted:
        print(f"\nstopped; state saved. Resume with:\n  python train.py --resume {interrupted.run_path}",
              file=sys.stderr)
        return 130
    result = json.loads(run.result.read_text(encoding="utf-8"))
    for name, scores in result["models"].items():
        marker = "  <- kept" if name == result["kept"] else ""
        print(f"validation {name + '/':6} accuracy {scores['accuracy']:.4f}  macro_f1 {scores['macro_f1']:.4f}  "
              f"loss {scores['loss']:.4f}{marker}")
    print(f"training: {result['train_seconds']:.0f} s, {result['train_samples_per_second']:.0f} samples/s; "
          f"evaluation {result['eval_samples_per_second']:.0f} samples/s")
    print(f"run folder: {run.path}")
    if run.submission.is_file():
        print(f"submission: {run.submission}")
    if (run.path / "tensorboard").is_dir():
        print(f"curves: tensorboard --logdir {run.path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
