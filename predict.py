"""Write a submission (`ID,pred`) for a CSV with a finished run's preprocessor, tokenizer and model.

    python predict.py runs/<name> --test data/test.csv --out submission.csv
    python predict.py runs/ens-<name> --test data/test.csv --out submission.csv   # an ensemble folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.core.cli import CliParser, run_cli
from lib.core.errors import UserError
from lib.core.progress import progress_enabled
from lib.ensemble.vote import is_ensemble_folder, predict_with_ensemble
from lib.finetune.predict import (INFERENCE_PRECISIONS, Inference, distribution_table, load_run, predict_run_table,
                                  save_logits, write_predictions)


def main(argv: list[str]) -> int:
    parser = CliParser(prog="predict.py", description=__doc__.splitlines()[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", type=Path, help="finished run folder, or an ensemble folder from ensemble.py vote")
    parser.add_argument("--test", type=Path, default=Path("data/test.csv"),
                        help="table (.csv, .tsv, .jsonl, .parquet, ...) with id and text columns")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="where to write ID,pred")
    parser.add_argument("--model", default=None,
                        help="which model of the run: best, last, swa or ema (default: the one the run kept)")
    parser.add_argument("--pred-column", default="pred", help="name of the prediction column")
    parser.add_argument("--logits-out", type=Path, default=None, help="also save ids and fp32 logits (.npz)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval batch size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="run",
                        help="run: each run's training precision; bf16 predicts faster on CPUs with AMX")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each model with frozen weights: faster batches after 20-35 s of "
                             "compiling, for files of several 100k rows (docs/results.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    inference = Inference(args.device, args.batch_size, args.precision, progress_enabled(args.quiet), args.compile)
    if is_ensemble_folder(args.run):
        if args.model:
            raise UserError("--model: an ensemble folder predicts with the models its members kept; omit --model")
        ensemble = predict_with_ensemble(args.run, args.test, inference)
        ids, logits = ensemble.ids, ensemble.scores
        id_column, distribution = ensemble.id_column, ensemble.distribution
    else:
        loaded = load_run(args.run, args.model, args.device)
        ids, logits = predict_run_table(loaded, args.test, inference)
        id_column, distribution = loaded.cfg.id_column, distribution_table(loaded.plan, logits.argmax(axis=1))
    write_predictions(args.out, ids, logits, id_column, args.pred_column)
    if args.logits_out:
        save_logits(args.logits_out, ids, logits)
    print(distribution)
    print(f"wrote {len(ids)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
