"""The speed issue's levers, each measured on and off in one process over the same batches.

    python bench/levers.py --threads 2                      # scratch:tiny, fp32, every lever
    python bench/levers.py --preset mini --precision bf16 --levers attention,dropout
    python bench/levers.py --quick                          # smoke version (fewer rows and steps)

Training levers time our real step (`ClassifierObjective` -> `accumulate_window` -> `optimizer_step`,
fused AdamW, with the attention kernel and dropout masks our CPU steps switch to) over the same
length-grouped batches of NSMC-4 reviews, each configuration on its own copy of one initial model;
prediction levers time `predict_logits` over the validation rows. The configurations of a lever
alternate (A B A B ...) `--repeats` times and the fastest pass of each
counts, so a slow spell of a shared machine hits all of them alike; ratios are to the lever's
first row (what the product does today). What each lever changes:

- order: the same batches in our shuffled order, longest first, shortest first.
- grouping: rows sorted by length within megabatches of 10, 50 (ours, as HF) or all batches; the
  padding each leaves (real / computed tokens) and the time of an epoch's worth of its batches.
- loss: our FocalLoss at gamma 0 (cross entropy through the general path) against F.cross_entropy.
- gradnorm: clipping with the norm kept on the device (ours), with `.item()` read every step, none.
- dropout: our masks from 16-bit random integers (lib.model.dropout, with our eager attention
  kernel) against torch's `bernoulli_` masks (eager attention), masks drawn as `rand_like(x) >= p`
  and no dropout at all (what dropout costs).
- attention: SDPA (the transformers default) against the eager attention, both with torch's dropout.
- mlm-attention: the same in pretraining steps (pretrain.py's objective on reviews packed into
  128-token sequences, 15% masked), on a masked LM built on the bench model's config, and our
  eager kernel with 16-bit integer dropout masks.
- compile: eager at exact widths against `torch.compile(dynamic=False)` on widths rounded up to a
  few buckets (16, 32, 64, 128, ...): compile seconds apart, steady time after every bucket compiled.
- predict-compile: eager prediction against predict.py --compile (lib.model.compiled: torch.compile,
  dynamic shapes, frozen weights) over the training rows: the compile seconds (cold inductor cache),
  steady rows/s, the rows from which compiling pays, and how far the logits move.
- predict-precision: fp32, bf16 autocast, bf16 weights; rows/s and how often the argmax agrees.
- predict-batching: 256 rows per batch against batches also closed at a token budget: fixed ones and
  ours (sized by the model's widest activation, lib.data.batching.prediction_token_budget).
- native-layer: prediction with each BERT layer as PyTorch's `nn.TransformerEncoderLayer` (the same
  weights; its fused inference fast path, with and without nested tensors that skip the padding).
  fp32 only: the fast path does not run under autocast.
- cls: the whole model against its last layer computed at [CLS] only (lib.model.cls_only), in
  training (our step runs it: the baseline of every other training lever) and in prediction.
- ema: training steps with an EMA of the weights after each (lib.loop.averaging: one multi-tensor
  lerp) against a lerp per tensor (the product's update before 2026-12-03) and no EMA at all.
- fixed: what a step costs that does not grow with the batch: the same steps on batches cut to one
  row of 4 tokens, whole and without the optimizer step: host work plus the kernels sized by the
  weights, an upper bound on the host work (no profiler, whose own cost would count).

Pinned memory and non-blocking copies only matter on CUDA and are not measured here.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/levers.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import copy
import math
import multiprocessing
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from lib.core.cli import run_cli
from lib.core.device import autocast
from lib.core.distributed import Distributed
from lib.core.errors import UserError
from lib.data import batching
from lib.data.batching import EncodedTexts, collate, padded_width, sorted_batches, training_batches
from lib.finetune.config import TrainConfig
from lib.finetune.evaluate import predict_logits, prediction_batches
from lib.finetune.losses import FocalLoss
from lib.finetune.prepare import prepare_new
from lib.data.mlm import IGNORE_INDEX, DynamicMasker, collate_mlm, masking_generator, pack_sequences
from lib.loop.averaging import EMA
from lib.loop.step import ClassifierObjective, WindowShare, accumulate_window, optimizer_step
from lib.model.attention import INTEGER_DROPOUT_ATTENTION
from lib.model.backbone import SCRATCH_PRESETS
from lib.model.mlm import MaskedPositions
from lib.pretrain.trainer import MaskedLMObjective
from lib.model.cls_only import classifier_logits, cls_only_forward
from lib.model.compiled import frozen_classifier
from lib.model.step_kernels import TrainingKernels
from bench.throughput import _Parser

LEVERS = ("order", "grouping", "loss", "gradnorm", "dropout", "attention", "mlm-attention", "compile", "predict-compile",
          "predict-precision", "predict-batching", "native-layer", "cls", "ema", "fixed")
WARMUP_STEPS = 3  # steps before timing: first-shape kernels and allocator warm-up


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python bench/levers.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated: " + ", ".join(LEVERS))
    parser.add_argument("--quick", action="store_true", help="smoke version: 1000 rows, 6 steps, 1 repeat")
    parser.add_argument("--preset", default="tiny", choices=tuple(SCRATCH_PRESETS), help="scratch: model preset")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="training precision")
    parser.add_argument("--train-file", default="data/train.csv")
    parser.add_argument("--rows", type=int, default=8000, help="training rows (a stratified subset)")
    parser.add_argument("--val-size", type=float, default=None,
                        help="validation fraction of --train-file (default 0.02; 0.005 with --quick)")
    parser.add_argument("--warm-steps", type=int, default=250,
                        help="steps the model trains before the levers: argmax agreement means little at random init")
    parser.add_argument("--steps", type=int, default=60, help="training steps timed per configuration and pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--token-budgets", default="4096,8192,16384", help="predict-batching: tokens per batch")
    parser.add_argument("--buckets", default="16,32,64,128", help="compile: static widths (the model's limit too)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per configuration, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=42)
    return parser


@dataclass
class Bench:
    """What every lever measures on: one initial model, its training batches and the validation rows."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train: EncodedTexts
    batches: list[np.ndarray]  # our length-grouped order of one epoch, cut to --steps after warm-up
    val: EncodedTexts
    args: argparse.Namespace

    def fresh_model(self) -> PreTrainedModel:
        return copy.deepcopy(self.model).train()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.repeats, args.warm_steps = 1000, 6, 1, 10
    if args.val_size is None:
        args.val_size = 0.005 if args.quick else 0.02
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = set(levers) - set(LEVERS)
    if unknown:
        raise UserError(f"--levers: unknown {', '.join(sorted(unknown))}; choose among {', '.join(LEVERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: python bench/levers.py {shlex.join(argv)}".rstrip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {multiprocessing.cpu_count()} CPU(s); "
          f"scratch:{args.preset}, {args.precision}, batch {args.batch_size}, {args.steps} steps x {args.repeats}")
    bench = _prepare(args)
    for name in levers:
        print(f"\n## {name}")
        MEASURES[name](bench)
    return 0


def _prepare(args: argparse.Namespace) -> Bench:
    """The data, model and batches train.py would prepare for these options, after --warm-steps of training."""
    cfg = TrainConfig(train_file=args.train_file, max_train_samples=args.rows, val_size=args.val_size,
                      model=f"scratch:{args.preset}", precision=args.precision, seed=args.seed, cache_dir=None,
                      output_dir="unused")
    prepared = prepare_new(cfg, Distributed(), torch.device("cpu"))
    train, val = prepared.train_data, prepared.val_data  # padded as train.py pads (pad_multiple)
    batches = training_batches(train.lengths, args.batch_size, args.seed, 0, True)
    bench = Bench(prepared.model, prepared.tokenizer, train, batches[:WARMUP_STEPS + args.steps], val, args)
    started = time.perf_counter()
    warm = batches[:args.warm_steps]
    _train_seconds(bench, model=bench.model, batches=warm, learning_rate=prepared.plan.learning_rate)
    print(f"{len(train)} training rows ({np.mean(train.lengths):.1f} tokens on average), {len(val)} validation rows, "
          f"max length {prepared.plan.max_length}; the model trained {len(warm)} steps first "
          f"({time.perf_counter() - started:.0f} s)")
    return bench


# --- timing ----------------------------------------------------------------------------------------

def _fastest(configurations: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Seconds of each configuration: its fastest of `repeats` passes, the passes interleaved."""
    best = {name: math.inf for name in configurations}
    for _ in range(repeats):
        for name, run in configurations.items():
            best[name] = min(best[name], run())
    return best


def _train_seconds(bench: Bench, *, model: PreTrainedModel | None = None, batches: list[np.ndarray] | None = None,
                   data: EncodedTexts | None = None, loss_fn: torch.nn.Module | None = None,
                   after_step: Callable[[torch.Tensor], None] | None = None, max_grad_norm: float = 1.0,
                   precision: str | None = None, collate_fn: Callable = collate, learning_rate: float = 1e-4,
                   cls_only: bool = True, step_kernels: bool = True, optimizer_steps: bool = True) -> float:
    """Seconds of our training step over `batches` after the first WARMUP_STEPS (collate included);
    `step_kernels`: with the attention and dropout our CPU steps switch to (else the model's own);
    `optimizer_steps` False: forward and backward only, the gradients dropped after each."""
    model = model if model is not None else bench.fresh_model()
    data = data if data is not None else bench.train
    batches = batches if batches is not None else bench.batches
    device = torch.device("cpu")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, fused=True)
    objective = ClassifierObjective(loss_fn or FocalLoss(model.config.num_labels), precision or bench.args.precision,
                                    device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    kernels = TrainingKernels.choose(model, device) if step_kernels else TrainingKernels(model)
    started = 0.0
    for index, rows in enumerate(batches):
        if index == WARMUP_STEPS:
            started = time.perf_counter()
        with kernels.step(), cls_only_forward(model) if cls_only else contextlib.nullcontext():
            accumulate_window(model, [collate_fn(data, rows)], objective, WindowShare(len(rows), scaler))
        if not optimizer_steps:
            optimizer.zero_grad(set_to_none=True)
            continue
        outcome = optimizer_step(parameters, optimizer, scaler, max_grad_norm)
        if after_step is not None:
            after_step(outcome.grad_norm)
    return time.perf_counter() - started


def _predict_seconds(bench: Bench, model: PreTrainedModel, precision: str, batch_size: int | None = None,
                     batches: list[np.ndarray] | None = None, forward: Callable = classifier_logits
                     ) -> tuple[float, np.ndarray]:
    """Seconds to score the validation rows (after one untimed pass) and the logits."""
    if batches is None:
        run = lambda: predict_logits(model, bench.val, batch_size or bench.args.eval_batch_size, precision,
                                     torch.device("cpu"), "predict", False)
    else:
        run = lambda: _predict_batches(model, bench.val, batches, precision, forward)
    run()
    started = time.perf_counter()
    logits = run()
    return time.perf_counter() - started, logits


def _whole_forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def _predict_batches(model: PreTrainedModel, data: EncodedTexts, batches: list[np.ndarray], precision: str,
                     forward: Callable = classifier_logits) -> np.ndarray:
    logits = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for rows in batches:
            batch = collate(data, rows)
            with autocast(precision, torch.device("cpu")):
                logits[rows] = forward(model, batch["input_ids"], batch["attention_mask"]).float().numpy()
    return logits


def _report(seconds: dict[str, float], work: float, unit: str, notes: dict[str, str] | None = None) -> None:
    """One line per configuration: its rate (`work` units over its seconds) and its speed against the first."""
    baseline = next(iter(seconds.values()))
    for name, value in seconds.items():
        note = f"  {notes[name]}" if notes and name in notes else ""
        print(f"  {name:44} {work / value:9.0f} {unit}/s  {baseline / value:5.2f}x{note}")


def _timed_rows(bench: Bench) -> int:
    return sum(len(rows) for rows in bench.batches[WARMUP_STEPS:])


# --- the levers ------------------------------------------------------------------------------------

def order_lever(bench: Bench) -> None:
    timed = bench.batches[WARMUP_STEPS:]
    width = lambda rows: int(bench.train.lengths[rows].max())
    orders = {"shuffled batch order (ours)": timed, "longest batches first": sorted(timed, key=width, reverse=True),
              "shortest batches first": sorted(timed, key=width)}
    head = bench.batches[:WARMUP_STEPS]
    seconds = _fastest({name: (lambda b=b: _train_seconds(bench, batches=head + b)) for name, b in orders.items()},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")


def grouping_lever(bench: Bench) -> None:
    """Rows per second over as many batches as --steps, for megabatches of several sizes."""
    lengths, args = bench.train.lengths, bench.args
    steps = WARMUP_STEPS + args.steps
    plans, notes = {}, {}
    for name, megabatch in (("megabatch 50 batches (ours, HF's)", 50), ("megabatch 10 batches", 10),
                            ("one megabatch (whole epoch sorted)", -(-len(lengths) // bench.args.batch_size)), ("no grouping", 0)):
        batches = _grouped(lengths, args.batch_size, args.seed, megabatch)
        plans[name] = batches[:steps]
        notes[name] = f"padding efficiency {batching.padding_efficiency(lengths, batches):.3f} over the epoch"
    seconds = _fastest({name: (lambda b=b: _train_seconds(bench, batches=b)) for name, b in plans.items()},
                       args.repeats)
    rows = {name: sum(len(r) for r in b[WARMUP_STEPS:]) for name, b in plans.items()}
    tokens = {name: sum(int(lengths[r].sum()) for r in b[WARMUP_STEPS:]) for name, b in plans.items()}
    baseline = tokens[next(iter(plans))] / seconds[next(iter(plans))]
    for name in plans:  # rows differ in length from one grouping to the next: real tokens per second compare them
        rate = tokens[name] / seconds[name]
        print(f"  {name:44} {rate:9.0f} real tokens/s  {rate / baseline:5.2f}x  "
              f"({rows[name] / seconds[name]:.0f} samples/s; {notes[name]})")


def _grouped(lengths: np.ndarray, batch_size: int, seed: int, megabatch: int) -> list[np.ndarray]:
    """`training_batches` sorted within megabatches of `megabatch` batches (0: no grouping)."""
    return training_batches(lengths, batch_size, seed, 0, megabatch > 0, megabatch_batches=max(1, megabatch))


class _CrossEntropy(torch.nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")


def loss_lever(bench: Bench) -> None:
    seconds = _fastest({"FocalLoss, gamma 0 (ours)": lambda: _train_seconds(bench),
                        "F.cross_entropy": lambda: _train_seconds(bench, loss_fn=_CrossEntropy())},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")


def gradnorm_lever(bench: Bench) -> None:
    seconds = _fastest({"clip, norm kept on the device (ours)": lambda: _train_seconds(bench),
                        "clip, norm read with .item() every step": lambda: _train_seconds(
                            bench, after_step=lambda norm: norm.item()),
                        "no clipping (norm still computed)": lambda: _train_seconds(bench, max_grad_norm=0.0)},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")


class RandDropout(torch.nn.Module):
    """Inverted dropout with the mask drawn as `rand_like(x) >= p` (same distribution as torch's)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


def _with_dropout(bench: Bench, make: Callable[[float], torch.nn.Module]) -> PreTrainedModel:
    """A fresh model with eager attention whose dropout modules are `make(p)` (the attention's too:
    it reads their `p`)."""
    model = _with_attention(bench, "eager")
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Dropout):
                setattr(parent, name, make(child.p))
    return model


def dropout_lever(bench: Bench) -> None:
    torch_steps = lambda model: _train_seconds(bench, model=model, step_kernels=False)
    seconds = _fastest({"masks from 16-bit integers (ours)": lambda: _train_seconds(bench),
                        "torch's bernoulli_ masks": lambda: torch_steps(_with_attention(bench, "eager")),
                        "masks from rand_like >= p": lambda: torch_steps(_with_dropout(bench, RandDropout)),
                        "no dropout (what dropout costs)": lambda: torch_steps(
                            _with_dropout(bench, lambda p: torch.nn.Dropout(0.0)))},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")


def _with_attention(bench: Bench, implementation: str) -> PreTrainedModel:
    model = bench.fresh_model()
    model.set_attn_implementation(implementation)
    return model


def attention_lever(bench: Bench) -> None:
    print(f"  the model's own: {bench.model.config._attn_implementation}")
    steps = lambda name: _train_seconds(bench, model=_with_attention(bench, name), step_kernels=False)
    seconds = _fastest({"training, SDPA (torch dropout)": lambda: steps("sdpa"),
                        "training, eager (torch dropout)": lambda: steps("eager")}, bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")
    models = {name: _with_attention(bench, name) for name in ("sdpa", "eager")}
    seconds = _fastest({f"prediction, {name}": (lambda m=m: _predict_seconds(bench, m, bench.args.precision)[0])
                        for name, m in models.items()}, bench.args.repeats)
    _report(seconds, len(bench.val), "rows")


def mlm_attention_lever(bench: Bench, max_length: int = 128) -> None:
    tokenizer, args = bench.tokenizer, bench.args
    packed = pack_sequences(bench.train.input_ids, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                            tokenizer.pad_token_id)
    masker = DynamicMasker(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids)
    count = min(WARMUP_STEPS + args.steps, len(packed) // args.batch_size)
    if count <= WARMUP_STEPS:
        raise UserError(f"mlm-attention: {len(bench.train)} rows pack into {len(packed)} sequences of "
                        f"{max_length} tokens, too few for {WARMUP_STEPS + 1} batches of {args.batch_size}")
    batches = [collate_mlm(packed, np.arange(i * args.batch_size, (i + 1) * args.batch_size), masker,
                           masking_generator(args.seed, 0, i)) for i in range(count)]
    torch.manual_seed(args.seed)
    initial = BertForMaskedLM(bench.model.config).train()
    device = torch.device("cpu")

    def seconds(attention: str | None, integer_dropout: bool) -> float:
        model = copy.deepcopy(initial)
        kernels = TrainingKernels.of(model, attention, integer_dropout)
        parameters = list(model.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)
        objective, scaler = MaskedLMObjective(args.precision, device), torch.amp.GradScaler("cpu", enabled=False)
        started = 0.0
        for index, batch in enumerate(batches):
            if index == WARMUP_STEPS:
                started = time.perf_counter()
            masked = int((batch["labels"] != IGNORE_INDEX).sum())
            with kernels.step():
                accumulate_window(MaskedPositions(model), [batch], objective, WindowShare(masked, scaler))
            optimizer_step(parameters, optimizer, scaler, 1.0)
        return time.perf_counter() - started

    print(f"  {count - WARMUP_STEPS} timed steps of {args.batch_size} sequences of up to {max_length} tokens")
    timed = _fastest({"pretraining, SDPA": lambda: seconds(None, False),
                      "pretraining, eager": lambda: seconds("eager", False),
                      "pretraining, eager, 16-bit integer dropout masks (ours)":
                          lambda: seconds(INTEGER_DROPOUT_ATTENTION, True)}, args.repeats)
    _report(timed, (count - WARMUP_STEPS) * args.batch_size, "sequences")


def compile_lever(bench: Bench) -> None:
    buckets = sorted(int(b) for b in bench.args.buckets.split(","))
    longest = int(bench.train.lengths.max())
    buckets = [b for b in buckets if b < longest] + [longest]
    widths = {int(bench.train.lengths[rows].max()) for rows in bench.batches}
    print(f"  buckets {buckets}; the timed batches have {len(widths)} distinct exact widths")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="levers-inductor-")  # cold: the first run's cost
    compiled = torch.compile(bench.fresh_model(), dynamic=False)
    to_bucket = lambda data, rows: _bucket_padded(collate(data, rows), buckets, data.pad_token_id)
    started = time.perf_counter()  # a batch of each width compiles every graph before timing
    _train_seconds(bench, model=compiled, batches=_one_batch_per_bucket(bench, buckets), collate_fn=to_bucket,
                   step_kernels=False)
    compile_seconds = time.perf_counter() - started
    seconds = _fastest({"eager, exact widths (ours)": lambda: _train_seconds(bench),
                        "compiled, bucketed static widths": lambda: _train_seconds(
                            bench, model=compiled, collate_fn=to_bucket, step_kernels=False)},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples",
            {"compiled, bucketed static widths": f"after {compile_seconds:.0f} s compiling {len(buckets)} widths"})


def _bucket_padded(batch: dict[str, torch.Tensor], buckets: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`batch` padded on the right up to the smallest bucket that holds it (the mask hides the padding)."""
    width = batch["input_ids"].shape[1]
    extra = next(b for b in buckets if b >= width) - width
    return {**batch, "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_token_id),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0)}


def _one_batch_per_bucket(bench: Bench, buckets: list[int]) -> list[np.ndarray]:
    """One timed batch of each shape (rows, bucket) the timed batches have, after WARMUP_STEPS untimed ones."""
    lengths, shapes = bench.train.lengths, {}
    for rows in bench.batches:
        shapes.setdefault((len(rows), next(b for b in buckets if b >= lengths[rows].max())), rows)
    return bench.batches[:WARMUP_STEPS] + list(shapes.values())


def predict_precision_lever(bench: Bench) -> None:
    model = bench.fresh_model().eval()
    half = copy.deepcopy(model).to(torch.bfloat16)
    runs = {"fp32": (model, "fp32"), "bf16 autocast": (model, "bf16"), "bf16 weights": (half, "fp32")}
    logits: dict[str, np.ndarray] = {}

    def timed(name: str) -> float:
        seconds, logits[name] = _predict_seconds(bench, *runs[name])
        return seconds

    seconds = _fastest({name: (lambda n=name: timed(n)) for name in runs}, bench.args.repeats)
    reference = logits["fp32"].argmax(1)
    notes = {name: f"argmax agrees with fp32 on {np.mean(out.argmax(1) == reference):.4f} of rows, "
                   f"max |logit diff| {np.abs(out - logits['fp32']).max():.3g}" for name, out in logits.items()}
    _report(seconds, len(bench.val), "rows", notes)


def cls_lever(bench: Bench) -> None:
    seconds = _fastest({"training, whole model": lambda: _train_seconds(bench, cls_only=False),
                        "training, last layer at [CLS] only (ours)": lambda: _train_seconds(bench)},
                       bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")
    _compare_forwards(bench, bench.fresh_model().eval(), bench.args.precision,
                      {"prediction, whole model": _whole_forward,
                       "prediction, last layer at [CLS] only (ours)": classifier_logits})


class PerTensorEMA(EMA):
    """The same average, updated with a lerp per tensor: a kernel launch and its Python each."""

    @torch.no_grad()
    def after_step(self, model: PreTrainedModel, step: int) -> None:
        if self._average is None:
            self._average = copy.deepcopy(model).float().eval().requires_grad_(False)
        decay = self.decay_at(self.updates)
        for averaged, value in zip([*self._average.parameters(), *self._average.buffers()],
                                   [*model.parameters(), *model.buffers()]):
            if averaged.is_floating_point():
                averaged.lerp_(value.detach().float(), 1.0 - decay)
            else:
                averaged.copy_(value)
        self.updates += 1


def ema_lever(bench: Bench) -> None:
    def with_ema(make: Callable[[], EMA] | None) -> float:
        model = bench.fresh_model()
        if make is None:
            return _train_seconds(bench, model=model)
        average = make()
        return _train_seconds(bench, model=model, after_step=lambda norm: average.after_step(model, 0))

    seconds = _fastest({"EMA, one multi-tensor lerp (ours)": lambda: with_ema(lambda: EMA(0.999)),
                        "EMA, a lerp per tensor": lambda: with_ema(lambda: PerTensorEMA(0.999)),
                        "no EMA": lambda: with_ema(None)}, bench.args.repeats)
    _report(seconds, _timed_rows(bench), "samples")


def fixed_lever(bench: Bench) -> None:
    """A step's cost that does not grow with the batch: the same steps on each batch cut to its first
    row and 4 tokens. What is left is host work (the loop, the model's Python, the autograd engine,
    the dispatcher) and the kernels sized by the weights, not the batch: weight gradients written in
    full, the embedding's dense gradient, autocast's weight casts, and in whole steps the clip and the
    optimizer's pass over every weight. So it bounds the host work from above; no profiler runs."""
    def cut(data: EncodedTexts, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = collate(data, rows)
        return {name: values[:1, :4] if values.dim() == 2 else values[:1] for name, values in batch.items()}

    seconds = _fastest({
        "whole steps, real batches (ours)": lambda: _train_seconds(bench),
        "whole steps, batches of 1 row x 4 tokens": lambda: _train_seconds(bench, collate_fn=cut),
        "forward and backward, real batches": lambda: _train_seconds(bench, optimizer_steps=False),
        "forward and backward, 1 row x 4 tokens": lambda: _train_seconds(bench, collate_fn=cut,
                                                                          optimizer_steps=False),
    }, bench.args.repeats)
    steps = len(bench.batches) - WARMUP_STEPS
    real = seconds["whole steps, real batches (ours)"]
    for name, value in seconds.items():
        print(f"  {name:44} {1e3 * value / steps:8.2f} ms/step  {value / real:6.1%} of a real step")


def _compare_forwards(bench: Bench, model: PreTrainedModel, precision: str, forwards: dict[str, Callable]) -> None:
    """Each forward's rate over the same length-sorted prediction batches, and its largest logit
    difference from the first forward's."""
    batches = prediction_batches(model, bench.val, bench.args.eval_batch_size, precision, torch.device("cpu"))
    logits: dict[str, np.ndarray] = {}

    def timed(name: str) -> float:
        seconds, logits[name] = _predict_seconds(bench, model, precision, batches=batches, forward=forwards[name])
        return seconds

    seconds = _fastest({name: (lambda n=name: timed(n)) for name in forwards}, bench.args.repeats)
    first = logits[next(iter(forwards))]
    _report(seconds, len(bench.val), "rows", {name: f"max |logit diff| {np.abs(first - logits[name]).max():.2g}"
                                              for name in list(forwards)[1:]})


def predict_compile_lever(bench: Bench) -> None:
    """Eager prediction (ours) against `lib.model.compiled` (predict.py --compile) over the training rows,
    a file large enough for the compile to show: the first compiled pass, with a cold inductor cache,
    holds the compiling; the steady passes after it are timed with the eager ones, interleaved."""
    model, data, precision = bench.fresh_model().eval(), bench.train, bench.args.precision
    batches = prediction_batches(model, data, bench.args.eval_batch_size, precision, torch.device("cpu"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="levers-inductor-")  # cold: the first run's cost
    frozen = frozen_classifier(model)
    compiled = lambda _, input_ids, attention_mask: frozen(input_ids, attention_mask)
    started = time.perf_counter()
    _predict_batches(model, data, batches, precision, compiled)
    first_pass = time.perf_counter() - started
    logits: dict[str, np.ndarray] = {}

    def timed(name: str, forward: Callable) -> float:
        started = time.perf_counter()
        logits[name] = _predict_batches(model, data, batches, precision, forward)
        return time.perf_counter() - started

    eager_name, compiled_name = "eager (ours)", "compiled, frozen weights (--compile)"
    seconds = _fastest({eager_name: lambda: timed(eager_name, classifier_logits),
                        compiled_name: lambda: timed(compiled_name, compiled)}, bench.args.repeats)
    compile_seconds = first_pass - seconds[compiled_name]
    saved_per_row = (seconds[eager_name] - seconds[compiled_name]) / len(data)
    pays_from = f"pays from about {compile_seconds / saved_per_row:,.0f} rows" if saved_per_row > 0 else "never pays"
    agree = np.mean(logits[compiled_name].argmax(1) == logits[eager_name].argmax(1))
    _report(seconds, len(data), "rows", {compiled_name: (
        f"after {compile_seconds:.0f} s compiling ({first_pass:.0f} s first pass), {pays_from}; argmax agrees on "
        f"{agree:.4f} of rows, max |logit diff| {np.abs(logits[compiled_name] - logits[eager_name]).max():.2g}")})


def predict_batching_lever(bench: Bench) -> None:
    model, data, rows = bench.fresh_model().eval(), bench.val, bench.args.eval_batch_size
    ours = prediction_batches(model, data, rows, bench.args.precision, torch.device("cpu"))
    largest = max(len(b) * padded_width(data.lengths[b[0]], data.pad_to_multiple_of) for b in ours)
    plans = {f"{rows} rows per batch": sorted_batches(data.lengths, rows)}
    for budget in (int(b) for b in bench.args.token_budgets.split(",")):
        plans[f"{rows} rows or {budget} tokens"] = sorted_batches(data.lengths, rows, budget, data.pad_to_multiple_of)
    plans[f"ours on a CPU (largest batch {largest} tokens)"] = ours
    notes = {name: f"{len(b)} batches" for name, b in plans.items()}
    seconds = _fastest({name: (lambda b=b: _predict_seconds(bench, model, bench.args.precision, batches=b)[0])
                        for name, b in plans.items()}, bench.args.repeats)
    _report(seconds, len(bench.val), "rows", notes)


def _native_encoder(model: PreTrainedModel, nested: bool) -> torch.nn.TransformerEncoder:
    """The model's BERT layers as PyTorch's own post-norm encoder layers, with copies of their weights."""
    config = model.config
    layers = []
    for layer in model.bert.encoder.layer:
        native = torch.nn.TransformerEncoderLayer(config.hidden_size, config.num_attention_heads,
                                                  config.intermediate_size, dropout=0.0, activation="gelu",
                                                  layer_norm_eps=config.layer_norm_eps, batch_first=True)
        attention = layer.attention.self
        pairs = [(native.self_attn.out_proj, layer.attention.output.dense),
                 (native.norm1, layer.attention.output.LayerNorm), (native.linear1, layer.intermediate.dense),
                 (native.linear2, layer.output.dense), (native.norm2, layer.output.LayerNorm)]
        with torch.no_grad():
            projections = (attention.query, attention.key, attention.value)
            native.self_attn.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
            native.self_attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        layers.append(native)
    encoder = torch.nn.TransformerEncoder(layers[0], len(layers), enable_nested_tensor=nested)
    encoder.layers = torch.nn.ModuleList(layers)
    return encoder.eval()


def native_layer_lever(bench: Bench) -> None:
    if bench.args.precision != "fp32":
        print("  skipped: PyTorch's fused encoder path does not run under autocast")
        return
    model = bench.fresh_model().eval()

    def native(nested: bool) -> Callable:
        encoder = _native_encoder(model, nested)

        def forward(_, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = encoder(model.bert.embeddings(input_ids=input_ids), src_key_padding_mask=~attention_mask.bool())
            if hidden.is_nested:
                hidden = hidden.to_padded_tensor(0.0, (*input_ids.shape, model.config.hidden_size))
            return model.classifier(model.bert.pooler(hidden))
        return forward

    _compare_forwards(bench, model, "fp32", {"prediction, BERT layers (whole model)": _whole_forward,
                                             "nn.TransformerEncoderLayer": native(False),
                                             "nn.TransformerEncoderLayer, nested tensors": native(True)})


MEASURES: dict[str, Callable[[Bench], None]] = {
    "order": order_lever, "grouping": grouping_lever, "loss": loss_lever, "gradnorm": gradnorm_lever,
    "dropout": dropout_lever, "attention": attention_lever, "mlm-attention": mlm_attention_lever,
    "compile": compile_lever, "predict-compile": predict_compile_lever,
    "predict-precision": predict_precision_lever, "predict-batching": predict_batching_lever,
    "native-layer": native_layer_lever, "cls": cls_lever, "ema": ema_lever,
    "fixed": fixed_lever,
}

if __name__ == "__main__":
    sys.exit(run_cli(main))
