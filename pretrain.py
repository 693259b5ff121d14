"""Masked-language-model pretraining (task-adaptive pretraining) into a model folder train.py fine-tunes.

    python pretrain.py --texts data/unlabeled.csv.gz data/train.csv data/test.csv --preset mini --out models/mini-mlm
    python pretrain.py --texts data/train.csv --init klue/bert-base --max-minutes 60 --out models/klue-tapt
    python pretrain.py --config <file>.yaml --max-minutes 30   # options from a JSON/YAML file; flags win
    python pretrain.py --resume models/mini-mlm.incomplete
    python train.py --model models/mini-mlm
"""

from __future__ import annotations

import json
import sys

from lib.core.cli import run_cli
from lib.core.progress import progress_enabled
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.pretrain.config import parse_pretrain_args
from lib.pretrain.trainer import pretrain_new, resume_pretraining


def main(argv: list[str]) -> int:
    invocation = parse_pretrain_args(argv)
    stop = StopRequest()
    show_progress = progress_enabled(invocation.quiet)
    try:
        with stop.on_stop_signals():
            if invocation.resume is not None:
                folder = resume_pretraining(invocation.resume, show_progress=show_progress, stop=stop)
            else:
                folder = pretrain_new(invocation.config, overwrite=invocation.overwrite, show_progress=show_progress,
                                      argv=argv, stop=stop)
    except TrainingInterrupted as interrupted:
        print(f"\nstopped; state saved. Resume with:\n  python pretrain.py --resume {interrupted.run_path}",
              file=sys.stderr)
        return 130
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    final, initial = result["held_out"], result["initial_held_out"]
    print(f"held-out MLM loss {final['loss']:.4f} (from {initial['loss']:.4f}), masked-token accuracy "
          f"{final['accuracy']:.4f} (from {initial['accuracy']:.4f})")
    print(f"{result['global_step']} steps, {result['tokens_seen']} tokens: {result['tokens_per_second']:.0f} tokens/s "
          f"in {result['train_seconds']:.0f} s of training, {result['wall_seconds']:.0f} s in all "
          f"(stopped by {result['stopped_by']})")
    print(f"model folder: {folder}  (fine-tune it: python train.py --model {folder})")
    print(f"curves: tensorboard --logdir {folder / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
