"""bf16 autocast against fp32 on this CPU, per model size: the measurement behind `--precision auto`.

    python bench/precision.py                       # every scratch preset, 2 threads
    python -m bench.precision --presets tiny mini --threads 1 --steps 30

For each scratch preset, one BERT classifier (random weights, the preset's shape, a 12,000-token
vocabulary) trains on batches of random token ids shaped like NSMC-4 reviews (32 rows, widths drawn
from the lengths of our training texts: 8 to 64 tokens) and predicts batches of 256 rows. fp32 and
bf16 alternate step by step in one process, so the machine's load affects both alike; the table is
the median step time of each and the ratio fp32 / bf16 (above 1: bf16 is faster). A training step is
forward, loss, backward and an AdamW step with fp32 master weights, as in our loop.

The CPU's bf16 support (AMX, avx512_bf16) and the choice `--precision auto` makes for each preset
(lib.core.device.auto_cpu_precision) are printed above the table, so a run on another CPU shows
whether the rule still holds there.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/precision.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from lib.core.cli import run_cli
from lib.core.device import auto_cpu_precision, autocast, cpu_bf16_support
from lib.model.backbone import SCRATCH_PRESETS, SCRATCH_VOCAB_SIZE

WIDTHS = (8, 16, 24, 32, 48, 64)  # padded widths of NSMC-4 batches (most reviews are short)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mini", "small", "medium"],
                        choices=list(SCRATCH_PRESETS))
    parser.add_argument("--steps", type=int, default=40, help="timed steps per precision and preset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser


def _model(preset: str) -> BertForSequenceClassification:
    shape = SCRATCH_PRESETS[preset]
    config = BertConfig(vocab_size=SCRATCH_VOCAB_SIZE, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate, num_labels=4)
    return BertForSequenceClassification(config)


def _batch(rows: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, SCRATCH_VOCAB_SIZE, (rows, width), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 4, (rows,), generator=generator)}


def _train_step(model, optimizer, batch, precision: str) -> None:
    with autocast(precision, torch.device("cpu")):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def _predict_step(model, batch, precision: str) -> None:
    with autocast(precision, torch.device("cpu")):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def measure(preset: str, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per training and prediction step, fp32 and bf16 alternating."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    models = {p: _model(preset) for p in ("fp32", "bf16")}
    optimizers = {p: torch.optim.AdamW(m.parameters(), lr=1e-4) for p, m in models.items()}
    times: dict[str, list[float]] = {f"{kind} {p}": [] for kind in ("train", "predict") for p in models}
    for step in range(args.steps + 3):  # 3 warm-up steps per precision, not timed
        width = WIDTHS[step % len(WIDTHS)]
        train, predict = _batch(args.batch_size, width, generator), _batch(args.eval_batch_size, width, generator)
        for precision, model in models.items():
            model.train()
            start = time.perf_counter()
            _train_step(model, optimizers[precision], train, precision)
            middle = time.perf_counter()
            model.eval()
            _predict_step(model, predict, precision)
            end = time.perf_counter()
            if step >= 3:
                times[f"train {precision}"].append(middle - start)
                times[f"predict {precision}"].append(end - middle)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    support = cpu_bf16_support()
    print(f"CPU bf16 support: {'+'.join(support) or 'none'}; torch {torch.__version__}, {args.threads} threads")
    print("| preset | parameters | train ms fp32 | train ms bf16 | train fp32/bf16 | predict ms fp32 "
          "| predict ms bf16 | predict fp32/bf16 | --precision auto |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset in args.presets:
        t = measure(preset, args)
        parameters = sum(p.numel() for p in _model(preset).parameters())
        choice, _ = auto_cpu_precision(SCRATCH_PRESETS[preset].hidden, support)
        print(f"| {preset} | {parameters / 1e6:.1f}M | {1e3 * t['train fp32']:.1f} | {1e3 * t['train bf16']:.1f} "
              f"| {t['train fp32'] / t['train bf16']:.2f}x | {1e3 * t['predict fp32']:.1f} "
              f"| {1e3 * t['predict bf16']:.1f} | {t['predict fp32'] / t['predict bf16']:.2f}x | {choice} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
