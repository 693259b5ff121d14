"""Write a CSV of back-translated training reviews (review -> pivot language -> review), labels kept.

    python backtranslate.py --train data/train.csv --forward models/opus-ko-en --backward models/opus-en-ko \\
        --out data/train_bt.csv
    python backtranslate.py --train data/train.csv --forward models/t5-ko-en --backward models/t5-ko-en \\
        --forward-prefix "translate Korean to English: " --backward-prefix "translate English to Korean: " \\
        --sample --temperature 0.8 --max-rows 2000 --out data/train_bt_sample.csv
    python train.py --augmented-train-file data/train_bt.csv ...   # only rows made from the training split
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib.core.cli import CliParser, run_cli
from lib.core.progress import progress_enabled
from lib.data.backtranslate import GenerationSettings, back_translate_file
from lib.data.tables import Columns


def main(argv: list[str]) -> int:
    parser = CliParser(prog="backtranslate.py", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", type=Path, default=Path("data/train.csv"), help="labelled CSV to paraphrase")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (id, text and label columns)")
    parser.add_argument("--forward", required=True,
                        help="seq2seq model folder or hub id translating the reviews into the pivot language")
    parser.add_argument("--backward", required=True,
                        help="seq2seq model folder or hub id translating the pivot back (may equal --forward)")
    parser.add_argument("--forward-prefix", default="", help="text put before every forward input (T5-style)")
    parser.add_argument("--backward-prefix", default="", help="text put before every backward input (T5-style)")
    parser.add_argument("--id-column", default="ID")
    parser.add_argument("--text-column", default="review")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-rows", type=int, default=None, help="paraphrase a seeded random sample of N rows")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per generate() call")
    parser.add_argument("--max-length", type=int, default=256, help="input tokens kept per text")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per text")
    parser.add_argument("--num-beams", type=int, default=1, help="beam width (1 = greedy, unless --sample)")
    parser.add_argument("--sample", action="store_true", help="sample tokens: more varied paraphrases")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --max-rows and --sample")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    settings = GenerationSettings(batch_size=args.batch_size, max_length=args.max_length,
                                  max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p)
    summary = back_translate_file(
        args.train, args.out, Columns(args.id_column, args.text_column, args.label_column), args.forward,
        args.backward, settings, forward_prefix=args.forward_prefix, backward_prefix=args.backward_prefix,
        max_rows=args.max_rows, seed=args.seed, device=args.device, show_progress=progress_enabled(args.quiet))
    print(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
