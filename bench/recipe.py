"""The seed's recipe run by `transformers.Trainer`, by our loop, and our best combination of techniques,
side by side in one run, plus an ablation of each technique alone on top of our loop.

    python -m bench.recipe                                        # scratch:tiny, seeds 42 and 7, all 135k rows
    python -m bench.recipe --max-train-samples 3000 --epochs 1 --seeds 42 --ablation ema rdrop
    python -m bench.recipe --backbones scratch:tiny models/tiny-mlm@5e-4 --json-out runs/recipe.json
    python -m bench.recipe --best "--ema-decay 0.998 --pooling mean" --ablation none
    python -m bench.recipe --parts ours,best,ablation               # without the Trainer (no accelerate)

On the split every run of docs/results.md uses (`lib.finetune.splits.load_splits`, val_size 0.1,
split seed 42) and for each backbone and seed:

  (a) the seed's recipe run by `transformers.Trainer`: focal loss (`lib.finetune.losses.FocalLoss`, alpha
      0.11,0.45,0.12,0.32, gamma 2.97, label smoothing 0.185) through a Trainer subclass overriding
      `compute_loss`, constant learning rate, gradient accumulation 4, evaluation and a checkpoint every
      epoch, `load_best_model_at_end` on eval_loss, `EarlyStoppingCallback(3)`; its best model is scored on
      our validation rows by our code (accuracy, macro-F1, NLL = cross entropy of the softmax);
  (b) the same recipe through our loop (`lib.finetune.trainer.train_new`): loss focal with the same
      alpha / gamma / smoothing, constant schedule, accumulation 4, patience 3, selection on val loss;
  (c) (b) plus `--best` (train.py options; default: DEFAULT_BEST below); with the ensemble part, also
      `ensemble.py vote` (lib.ensemble.vote) of (c)'s seeds, and of them with the classical member
      (`--model tfidf` through `train_new`; if train_new refuses it, the bench says so and leaves it out);
  (d) each `--ablation` entry alone on top of (b), first seed only.

Fair comparison, as in bench/throughput.py (whose helpers this reuses): a `scratch:` backbone is
built once per seed by our own code and saved with `save_pretrained`; (a), (b), (c) and (d) all start
from that folder, so the weights, the tokenizer and the token ids (checked) are the same. A model
folder (e.g. from pretrain.py) is used as it is; its new classification head is drawn from the seed
on both sides. Both sides get the same rows, preprocessed texts, max length ((b)'s, unless --max-length
is given), batch size, epochs, learning rate, seed, AdamW settings, clipping and evaluation batch size;
neither side uses the tokenisation cache.
The Trainer keeps its default random sampler (--trainer-sampling group_by_length to change it); ours
groups by length, its default.

The Trainer's loss under accumulation: the model takes `**kwargs`, so transformers 5.x would treat a
per-batch mean as already scaled and not divide it by the accumulation steps. `FocalTrainer` sums
each window's per-row losses and divides by the rows in the window (as our loop does, a short last
window included) and says so with `loss_is_scaled_for_ga = True`.

What is timed: wall seconds of a whole side (reading, preprocessing, tokenising, building, training,
evaluations, checkpoints, the final scoring) and train samples/s (ours: result.json, the sum of the
optimizer steps; the Trainer: rows trained / time inside its epoch loops, as bench/throughput.py
measures it). Every run is a fresh `spawn` process (--in-process: one process, for tests) with
--threads torch threads. Ratios, not absolute times, are what a shared machine can tell.

Needs `pip install -r bench/requirements.txt` (accelerate, which transformers.Trainer requires) for
the trainer part. Trainer checkpoints go to a temporary folder removed after each run; the run folders
go under --output-dir, or a temporary folder removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/recipe.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from transformers import DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments
from transformers.utils import is_accelerate_available

from bench.throughput import (_build_init_folder, _check_same_ids, _in_subprocess, _load_average, _PaddingCounter,
                              _Parser, _peak_memory, _preprocessed, _TrainerClock, _worker_setup, ours_side)
from lib.core.cache import DiskCache
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.data.batching import encode
from lib.data.tables import class_distribution
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig, build_train_parser
from lib.finetune.evaluate import predict_logits
from lib.finetune.losses import FocalLoss, auto_alpha
from lib.finetune.metrics import classification_metrics
from lib.finetune.predict import Inference
from lib.finetune.trainer import train_new
from lib.model.backbone import learning_rate_for, prepare_backbone, scratch_preset

PARTS = ("trainer", "ours", "best", "ablation", "ensemble")
# The seed's recipe (its tuned focal loss), on both sides.
SEED_RECIPE = {
    "loss": "focal", "focal_loss_alpha": (0.11, 0.45, 0.12, 0.32), "focal_loss_gamma": 2.97,
    "label_smoothing_factor": 0.185, "lr_scheduler_type": "constant", "gradient_accumulation_steps": 4,
    "early_stopping_patience": 3, "metric_for_best_model": "loss",
}
HEAD_LR_FACTOR = 3.0  # --head-learning-rate of the catalogue: this times the backbone's peak rate
# One entry per technique, each on top of (b); "{head_lr}" is filled in per backbone.
CATALOGUE = {
    "llrd": "--layer-lr-decay 0.8",
    "head-lr": "--head-learning-rate {head_lr}",
    "reinit": "--reinit-top-layers 1",
    "ema": "--ema-decay 0.998",
    "fgm": "--adversarial fgm --adv-epsilon 1.0",
    "awp": "--adversarial awp --awp-lr 1e-4 --awp-eps 1e-2",
    "rdrop": "--rdrop-alpha 1.0",
    "pool-mean": "--pooling mean",
    "msd": "--pooling cls --multi-sample-dropout 5",
    "grad-ckpt": "--gradient-checkpointing true",
    "head+tail": "--truncation head+tail",
    "swa": "--swa-last-k 3",
    # other poolings, by name only (not in the default ablation)
    "pool-cls": "--pooling cls",
    "pool-max": "--pooling max",
    "pool-attention": "--pooling attention",
    "pool-weighted": "--pooling weighted-layers",
    "pool-concat4": "--pooling concat-last-4",
}
DEFAULT_ABLATION = ("llrd", "head-lr", "reinit", "ema", "fgm", "awp", "rdrop", "pool-mean", "msd", "grad-ckpt",
                    "head+tail", "swa")
# Our choice for (c): weight averaging (EMA, SWA of the last epochs; --keep auto takes the best of
# best/ema/swa on val loss), a padding-aware mean-pooling head with multi-sample dropout, and R-Drop.
DEFAULT_BEST = "--ema-decay 0.998 --swa-last-k 3 --pooling mean --multi-sample-dropout 5 --rdrop-alpha 1.0"
RESULT_KEYS = ("accuracy", "macro_f1", "nll", "wall_seconds", "train_sps")


def _max_length(text: str) -> str | int:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 2, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench.recipe", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated: " + ", ".join(PARTS) + " ((b) ours always runs: it is the reference)")
    parser.add_argument("--backbones", nargs="+", default=["scratch:tiny"], metavar="BACKBONE",
                        help="scratch:<preset> or a model folder (pretrain.py's); BACKBONE@LR sets its peak "
                             "learning rate (default: the preset's, 5e-05 for a folder, or --lr)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 7], help="model seeds; the split stays 42")
    parser.add_argument("--train-file", default="data/train.csv")
    parser.add_argument("--val-size", type=float, default=0.1, help="validation fraction of --train-file")
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--max-train-samples", type=int, default=None, help="stratified subset of the training split")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32, help="micro-batch; x4 accumulation per step")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--max-length", default="auto", type=_max_length,
                        help="token limit; auto = the 99th percentile of training lengths, (b)'s plan")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of every backbone")
    parser.add_argument("--best", default=DEFAULT_BEST, metavar="OPTIONS",
                        help="(c): train.py options on top of (b), as one string")
    parser.add_argument("--ablation", nargs="+", default=list(DEFAULT_ABLATION), metavar="ENTRY",
                        help="(d): catalogue names (" + ", ".join(CATALOGUE) + "), LABEL=OPTIONS, or none")
    parser.add_argument("--trainer-sampling", default="random", choices=("random", "group_by_length"),
                        help="(a)'s train_sampling_strategy")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], both sides (fp32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run; 0 = torch's default")
    parser.add_argument("--in-process", action="store_true", help="run every side in this process (tests)")
    parser.add_argument("--scratch-vocab-size", type=int, default=None, help="WordPiece size of scratch: backbones")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="keep run folders here (default: a temporary folder, removed at the end)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every number as JSON")
    return parser


@dataclass(frozen=True)
class Backbone:
    spec: str  # as given
    model: str  # scratch:<preset> or a folder
    learning_rate: float

    @property
    def slug(self) -> str:
        return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in self.model).strip("-.")


def parse_backbone(spec: str, lr: float | None) -> Backbone:
    model, _, rate = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if rate:
        try:
            lr = float(rate)
        except ValueError:
            raise UserError(f"--backbones {spec}: expected BACKBONE@LEARNING_RATE") from None
    return Backbone(spec, model, lr if lr is not None else learning_rate_for(scratch_preset(model)))


def train_options(text: str, flag: str) -> dict[str, Any]:
    """train.py flags as TrainConfig fields, checked by train.py's own parser; only those given."""
    try:
        parsed = vars(build_train_parser().parse_args(shlex.split(text)))
    except UserError as error:
        raise UserError(f"{flag} {text!r}: {error}") from None
    except SystemExit:  # --help
        raise UserError(f"{flag}: expected train.py options, got {text!r}") from None
    for name in ("config", "resume", "overwrite", "quiet", "no_cache"):
        if parsed.pop(name, None) not in (None, False):
            raise UserError(f"{flag}: --{name.replace('_', '-')} does not apply here")
    for name in ("model", "seed", "output_dir", "run_name", "train_file", "max_train_samples", "val_size",
                 "split_seed", "num_train_epochs", "per_device_train_batch_size", "learning_rate"):
        if name in parsed:
            raise UserError(f"{flag}: --{name.replace('_', '-')} is set by the bench for every side")
    return parsed


def ablation_entries(entries: list[str]) -> list[tuple[str, str]]:
    """(label, options text) per --ablation entry."""
    if entries == ["none"]:
        return []
    chosen = []
    for entry in entries:
        if "=" in entry and not entry.startswith("-"):
            label, text = entry.split("=", 1)
        elif entry in CATALOGUE:
            label, text = entry, CATALOGUE[entry]
        else:
            raise UserError(f"--ablation {entry}: not in the catalogue ({', '.join(CATALOGUE)}); "
                            "write LABEL=OPTIONS for other options")
        chosen.append((label, text))
    return chosen


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()} | {"ours"}
    unknown = parts - set(PARTS)
    if unknown:
        raise UserError(f"--parts: unknown {', '.join(sorted(unknown))}; choose among {', '.join(PARTS)}")
    if args.epochs <= 0 or args.batch_size < 1 or not args.seeds:
        raise UserError("--epochs, --batch-size and --seeds: expected positive values")
    train_options(args.best, "--best")  # refuse bad options before any training
    for _, text in ablation_entries(args.ablation):
        train_options(text.format(head_lr=1.0), "--ablation")
    if "trainer" in parts and not is_accelerate_available():
        raise UserError("the trainer part needs accelerate (transformers.Trainer requires it): "
                        "pip install -r bench/requirements.txt, or leave it out with --parts ours,best,ablation,ensemble")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # backbones are presets or folders: never wait on the hub
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: python -m bench.recipe {shlex.join(argv)}".rstrip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per run, "
          f"{multiprocessing.cpu_count()} CPU(s), load average {_load_average()}")
    started = time.perf_counter()
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        report = run_bench(args, argv, parts, args.output_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-recipe-") as folder:
            report = run_bench(args, argv, parts, Path(folder))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"\nbench wall time {report['wall_seconds']:.0f} s")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"numbers: {args.json_out}")
    return 0


def run_bench(args: argparse.Namespace, argv: list[str], parts: set[str], workdir: Path) -> dict:
    report: dict[str, Any] = {"command": "python -m bench.recipe " + shlex.join(argv), "settings": {
        "train_file": args.train_file, "val_size": args.val_size, "split_seed": args.split_seed,
        "max_train_samples": args.max_train_samples, "epochs": args.epochs, "batch_size": args.batch_size,
        "max_length": args.max_length, "seeds": args.seeds, "seed_recipe": {**SEED_RECIPE, "focal_loss_alpha": list(
            SEED_RECIPE["focal_loss_alpha"])}, "best": args.best, "trainer_sampling": args.trainer_sampling,
        "threads": args.threads, "device": args.device, "parts": sorted(parts)}, "backbones": {}}
    for spec in args.backbones:
        backbone = parse_backbone(spec, args.lr)
        if scratch_preset(backbone.model) is None and not Path(backbone.model).is_dir():
            print(f"\n== backbone {backbone.model}: no such folder (make one with pretrain.py --out "
                  f"{backbone.model}); skipped")
            report["backbones"][spec] = {"skipped": f"no folder {backbone.model}"}
            continue
        report["backbones"][spec] = bench_backbone(args, parts, backbone, workdir)
    return report


def _run(args: argparse.Namespace, function: Callable[..., dict], *arguments: Any, **kwargs: Any) -> dict:
    """One side in a fresh process (its set-up and memory its own), or here with --in-process."""
    if args.in_process:
        return function(*arguments, **kwargs)
    return _in_subprocess(function, *arguments, **kwargs)


def bench_backbone(args: argparse.Namespace, parts: set[str], backbone: Backbone, workdir: Path) -> dict:
    root = workdir / backbone.slug
    best_options = train_options(args.best, "--best")
    seeds: dict[str, dict] = {}
    best_runs: list[Path] = []
    ablation: list[dict] = []
    header_printed = False
    for index, seed in enumerate(args.seeds):
        base = _base_options(args, backbone, seed, root)
        if scratch_preset(backbone.model) is not None:  # one saved starting point per seed, for every side
            base["model"] = str(_build_init_folder(base, root / f"init-s{seed}"))
        results: dict[str, dict] = {}
        results["ours"] = ours_result(args, {**base, "run_name": f"s{seed}-ours"})
        max_length = results["ours"]["max_length"]
        if not header_printed:
            _print_header(args, backbone, results["ours"], best_options)
            header_printed = True
        if "trainer" in parts:
            results["trainer"] = _run(args, trainer_side, {**base, "max_length": max_length}, args.threads,
                                      args.trainer_sampling)
        if "best" in parts:
            try:
                results["best"] = ours_result(args, {**base, **best_options, "run_name": f"s{seed}-best"})
                best_runs.append(Path(results["best"]["run"]))
            except UserError as error:
                print(f"   (c) refused for seed {seed}: {error}")
        seeds[str(seed)] = results
        _print_seed(seed, results)
        if index == 0 and "ablation" in parts:
            ablation = run_ablation(args, backbone, base, results["ours"])
    summary = _summarise(seeds)
    _print_summary(summary)
    ensembles = run_ensembles(args, backbone, best_runs, root) if "ensemble" in parts and best_runs else []
    if ablation:
        _print_ablation(ablation, seeds[str(args.seeds[0])]["ours"], args.seeds[0])
    return {"learning_rate": backbone.learning_rate, "seeds": seeds, **summary, "ensembles": ensembles,
            "ablation": ablation}


def _base_options(args: argparse.Namespace, backbone: Backbone, seed: int, root: Path) -> dict[str, Any]:
    """TrainConfig fields of (b); (a) reads the same, (c) and (d) add theirs."""
    options = {
        "train_file": args.train_file, "val_size": args.val_size, "split_seed": args.split_seed,
        "max_train_samples": args.max_train_samples, "model": backbone.model,
        "learning_rate": backbone.learning_rate, "num_train_epochs": float(args.epochs),
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.eval_batch_size,
        "max_length": args.max_length, "seed": seed,
        "device": args.device, "precision": "fp32", "output_dir": str(root / "runs"),
        "cache_dir": None, **SEED_RECIPE,  # no tokenisation cache: both sides tokenise, as in bench/throughput
    }
    if args.scratch_vocab_size:
        options["scratch_vocab_size"] = args.scratch_vocab_size
    return options


# --- the sides ---------------------------------------------------------------------------------------

def ours_result(args: argparse.Namespace, options: dict[str, Any]) -> dict:
    """A run of our loop (bench.throughput.ours_side) and the scores of its kept model (result.json)."""
    measured = _run(args, ours_side, options, args.threads, steady=False)
    run = Path(options["output_dir"]) / options["run_name"]
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    scores = result["best"]
    return {
        "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "nll": scores["nll"], "loss": scores["loss"],
        "wall_seconds": measured["wall_seconds"], "train_seconds": result["train_seconds"],
        "train_sps": result["train_samples_per_second"], "steps": result["global_step"],
        "epochs": result["epochs_completed"], "stopped_early": result["stopped_early"], "kept": result["kept"],
        "best_step": result["best_step"], "max_length": measured["plan"]["max_length"],
        "train_rows": sum(measured["plan"]["train_class_counts"]),
        "val_rows": sum(measured["plan"]["val_class_counts"]), "peak_rss_mib": measured["peak_rss_mib"],
        "run": str(run),
    }


class FocalTrainer(Trainer):
    """transformers.Trainer with our focal loss as its objective (the seed recipe's loss).

    A training step's loss is the sum of its accumulation window's per-row losses over the rows in the
    window (the count `get_batch_samples` returns, a short last window included), as in our loop; so
    the Trainer is told not to divide it by the accumulation steps again.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *arguments: Any, focal: FocalLoss, **kwargs: Any) -> None:
        super().__init__(*arguments, **kwargs)
        self.focal = focal.to(self.args.device)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batches, sum(len(batch["labels"]) for batch in batches)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        losses = self.focal(outputs.logits, inputs["labels"])
        loss = losses.sum() / num_items_in_batch if num_items_in_batch else losses.mean()
        return (loss, outputs) if return_outputs else loss


def _rows(tokenizer, texts: list[str], labels: np.ndarray, max_length: int) -> list[dict]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
    return [{"input_ids": ids, "attention_mask": mask, "labels": int(label)}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels)]


def _focal_loss(cfg: TrainConfig, train_labels: np.ndarray, num_labels: int) -> FocalLoss:
    alpha = cfg.focal_loss_alpha
    if alpha == "auto":
        alpha = auto_alpha(class_distribution(train_labels, num_labels))
    return FocalLoss(num_labels, cfg.focal_loss_gamma, alpha, cfg.label_smoothing_factor)


def trainer_side(options: dict[str, Any], threads: int, sampling: str) -> dict:
    """(a): the seed recipe through transformers.Trainer, from the same folder, rows and token ids as (b)."""
    _worker_setup(threads)
    started = time.perf_counter()
    cfg = TrainConfig(**options)
    splits, preprocessor, train_texts, val_texts = _preprocessed(cfg)
    with torch.random.fork_rng():  # as lib.finetune.prepare: a new head starts from the seed alone
        torch.manual_seed(cfg.seed)
        tokenizer, model = prepare_backbone(cfg.model, train_texts, preprocessor.special_tokens, splits.num_labels,
                                            splits.label_names, cfg.dropout_rate, cfg.scratch_vocab_size, cfg.seed,
                                            DiskCache(None))
    max_length = int(cfg.max_length)
    train_rows = _rows(tokenizer, train_texts, splits.train.labels, max_length)
    val_rows = _rows(tokenizer, val_texts, splits.val.labels, max_length)
    _check_same_ids(tokenizer, train_texts, train_rows, max_length, model.config.max_position_embeddings)
    focal = _focal_loss(cfg, splits.train.labels, splits.num_labels)
    collator = _PaddingCounter(DataCollatorWithPadding(tokenizer))
    clock = _TrainerClock(collator)
    device = torch.device(cfg.device)
    folder = tempfile.mkdtemp(prefix="trainer-", dir=_existing(cfg.output_dir))
    try:
        arguments = TrainingArguments(
            output_dir=folder, per_device_train_batch_size=cfg.per_device_train_batch_size,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_train_epochs=cfg.num_train_epochs,
            learning_rate=cfg.learning_rate, lr_scheduler_type="constant", weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon,
            max_grad_norm=cfg.max_grad_norm, use_cpu=device.type == "cpu", seed=cfg.seed, eval_strategy="epoch",
            save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="eval_loss",
            greater_is_better=False, logging_steps=cfg.logging_steps, report_to="none", disable_tqdm=True,
            train_sampling_strategy=sampling)
        trainer = FocalTrainer(
            model=model, args=arguments, train_dataset=train_rows, eval_dataset=val_rows, data_collator=collator,
            processing_class=tokenizer, callbacks=[clock, EarlyStoppingCallback(cfg.early_stopping_patience)],
            focal=focal)
        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
        trainer.train()
        data = encode(tokenizer, val_texts, max_length, splits.val.labels)
        logits = predict_logits(trainer.model, data, cfg.per_device_eval_batch_size, "fp32", device, "predict", False)
        state = trainer.state
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    scores = classification_metrics(logits, splits.val.labels, focal.cpu(), splits.label_names)
    return {
        "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "nll": scores["nll"], "loss": scores["loss"],
        "wall_seconds": time.perf_counter() - started, "train_seconds": clock.seconds,
        "train_sps": sum(collator.rows) / max(clock.seconds, 1e-9), "steps": state.global_step,
        "epochs": round(float(state.epoch or 0.0), 4), "stopped_early": state.global_step < state.max_steps,
        "kept": "best", "best_step": getattr(state, "best_global_step", None), "max_length": max_length,
        "train_rows": len(train_rows), "val_rows": len(val_rows), **_peak_memory(),
    }


def _existing(folder: str) -> str:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


def classical_side(options: dict[str, Any]) -> dict:
    """The TF-IDF member through train_new (`--model tfidf`); UserError if train_new refuses it."""
    started = time.perf_counter()
    run = train_new(TrainConfig(**options), overwrite=True)
    result = json.loads(run.result.read_text(encoding="utf-8"))
    return {**{key: result["best"][key] for key in ("accuracy", "macro_f1", "nll")},
            "wall_seconds": time.perf_counter() - started, "run": str(run.path)}


# --- (c)'s ensembles and (d) ---------------------------------------------------------------------------

def run_ensembles(args: argparse.Namespace, backbone: Backbone, best_runs: list[Path], root: Path) -> list[dict]:
    """`ensemble.py vote` of (c)'s seeds, and of them with the TF-IDF member when train_new trains it."""
    members: list[tuple[str, list[Path]]] = []
    if len(best_runs) > 1:
        members.append((f"vote of (c)'s {len(best_runs)} seeds", best_runs))
    classical = {key: value for key, value in _base_options(args, backbone, args.seeds[0], root).items()
                 if key in ("train_file", "val_size", "split_seed", "max_train_samples", "seed", "output_dir")}
    tfidf = None
    try:
        tfidf = classical_side({**classical, "model": CLASSICAL_MODEL, "run_name": "tfidf"})
        seeds = f"{len(best_runs)} seeds" if len(best_runs) > 1 else "seed"
        members.append((f"vote of (c)'s {seeds} + TF-IDF", [*best_runs, Path(tfidf["run"])]))
    except UserError as error:
        print(f"\n   note: the classical member is left out: train_new refused --model {CLASSICAL_MODEL} ({error})")
    rows: list[dict] = []
    if tfidf is not None:
        rows.append({"name": "TF-IDF + LR alone (train.py --model tfidf)", **tfidf})
    for name, paths in members:
        rows.append({"name": name, "members": [str(p) for p in paths], **_vote(paths, root / f"vote-{len(rows)}")})
    if rows:
        print(f"\n   {'ensemble (validation rows of the same split)':<52}{'accuracy':>9}{'macro-F1':>9}{'NLL':>8}")
        for row in rows:
            print(f"   {row['name']:<52}{row['accuracy']:>9.4f}{row['macro_f1']:>9.4f}{row['nll']:>8.4f}")
    return rows


def _vote(paths: list[Path], folder: Path) -> dict:
    """Soft vote (pooled logits, equal weights) of finished runs, scored from the saved ensemble folder."""
    from lib.ensemble.vote import vote

    vote(paths, test=None, out=folder / "unused.csv", average="logits", weights=None, stack=False, calibrate=None,
         prior_correction=None, save=folder, overwrite=True, pred_column="pred", inference=Inference(device="cpu"))
    saved = np.load(folder / "val_logits.npz")
    logits, labels = saved["logits"].astype(np.float32), saved["labels"].astype(np.int64)
    scores = classification_metrics(logits, labels, FocalLoss(logits.shape[1]), [str(k) for k in range(logits.shape[1])])
    return {key: scores[key] for key in ("accuracy", "macro_f1", "nll")}


def run_ablation(args: argparse.Namespace, backbone: Backbone, base: dict[str, Any], reference: dict) -> list[dict]:
    rows = []
    for label, text in ablation_entries(args.ablation):
        text = text.format(head_lr=f"{HEAD_LR_FACTOR * backbone.learning_rate:g}")
        row: dict[str, Any] = {"technique": label, "options": text}
        try:
            result = ours_result(args, {**base, **train_options(text, "--ablation"),
                                        "run_name": f"s{base['seed']}-ablation-{label}"})
        except UserError as error:
            row["refused"] = str(error)
            print(f"   ablation {label}: refused ({error})")
            rows.append(row)
            continue
        row.update(result)
        row.update({"delta_accuracy_points": 100 * (result["accuracy"] - reference["accuracy"]),
                    "delta_macro_f1_points": 100 * (result["macro_f1"] - reference["macro_f1"]),
                    "delta_nll": result["nll"] - reference["nll"],
                    "train_sps_ratio": result["train_sps"] / reference["train_sps"]})
        print(f"   ablation {label}: accuracy {result['accuracy']:.4f} ({row['delta_accuracy_points']:+.2f} points), "
              f"{result['wall_seconds']:.1f} s")
        rows.append(row)
    return rows


# --- summary and printing ---------------------------------------------------------------------------------

NAMES = {"trainer": "(a) Trainer, seed recipe", "ours": "(b) ours, seed recipe", "best": "(c) ours + --best"}


def _summarise(seeds: dict[str, dict]) -> dict:
    """Means over seeds of each side, ratios to (a) and differences in points."""
    sides = [side for side in NAMES if all(side in results for results in seeds.values())]
    mean = {side: {key: float(np.mean([results[side][key] for results in seeds.values()])) for key in RESULT_KEYS}
            for side in sides}
    versus = {}
    if "trainer" in mean:
        a = mean["trainer"]
        for side in ("ours", "best"):
            if side in mean:
                x = mean[side]
                versus[f"{side}/trainer"] = {
                    "train_sps_ratio": x["train_sps"] / a["train_sps"],
                    "wall_seconds_ratio": x["wall_seconds"] / a["wall_seconds"],
                    "accuracy_points": 100 * (x["accuracy"] - a["accuracy"]),
                    "macro_f1_points": 100 * (x["macro_f1"] - a["macro_f1"]),
                    "nll_difference": x["nll"] - a["nll"],
                }
    return {"mean": mean, "versus_trainer": versus}


def _print_header(args: argparse.Namespace, backbone: Backbone, ours: dict, best_options: dict) -> None:
    recipe = SEED_RECIPE
    print(f"\n== backbone {backbone.model}: {ours['train_rows']} train / {ours['val_rows']} validation rows of "
          f"{args.train_file} (split seed {args.split_seed}), {args.epochs:g} epoch(s), batch {args.batch_size} x "
          f"{recipe['gradient_accumulation_steps']} accumulation, lr {backbone.learning_rate:g} constant, max length "
          f"{ours['max_length']}, focal alpha {','.join(f'{a:g}' for a in recipe['focal_loss_alpha'])} gamma "
          f"{recipe['focal_loss_gamma']:g} smoothing {recipe['label_smoothing_factor']:g}, early stopping patience "
          f"{recipe['early_stopping_patience']} on val loss, {args.threads or 'default'} thread(s) per run")
    print(f"   (a) Trainer sampling: {args.trainer_sampling}; (b) ours: length-grouped batches")
    print(f"   (c) --best {args.best}")
    print(f"\n   {'seed':<6}{'run':<26}{'accuracy':>9}{'macro-F1':>9}{'NLL':>8}{'wall s':>8}{'train/s':>9}"
          f"{'steps':>7}{'epochs':>7}  kept")


def _row(seed: str, name: str, r: dict) -> str:
    return (f"   {seed:<6}{name:<26}{r['accuracy']:>9.4f}{r['macro_f1']:>9.4f}{r['nll']:>8.4f}{r['wall_seconds']:>8.1f}"
            f"{r['train_sps']:>9.0f}" + (f"{r['steps']:>7d}{r['epochs']:>7.2f}  {r['kept']}" if "steps" in r else ""))


def _print_seed(seed: int, results: dict[str, dict]) -> None:
    for side, name in NAMES.items():
        if side in results:
            print(_row(str(seed), name, results[side]))


def _print_summary(summary: dict) -> None:
    for side, name in NAMES.items():
        if side in summary["mean"]:
            print(_row("mean", name, summary["mean"][side]))
    if summary["versus_trainer"]:
        print(f"\n   {'means over seeds, against (a)':<34}{'train/s':>9}{'wall':>8}{'acc pts':>9}{'F1 pts':>8}"
              f"{'NLL diff':>10}")
        for key, v in summary["versus_trainer"].items():
            label = {"ours/trainer": "(b) ours / (a) Trainer", "best/trainer": "(c) ours + --best / (a) Trainer"}[key]
            print(f"   {label:<34}{v['train_sps_ratio']:>8.2f}x{v['wall_seconds_ratio']:>7.2f}x"
                  f"{v['accuracy_points']:>+9.2f}{v['macro_f1_points']:>+8.2f}{v['nll_difference']:>+10.4f}")
        print("   train/s and wall: ratio of samples per second and of wall seconds; pts: difference in points")


def _print_ablation(rows: list[dict], reference: dict, seed: int) -> None:
    print(f"\n   ablation: each technique alone on top of (b), seed {seed}")
    print(f"   {'technique':<16}{'accuracy':>9}{'macro-F1':>9}{'NLL':>8}{'Δacc pts':>9}{'ΔF1 pts':>8}{'ΔNLL':>9}"
          f"{'wall s':>8}{'train/s':>9}{'vs (b)':>8}  kept  options")
    print(f"   {'(b) ours':<16}{reference['accuracy']:>9.4f}{reference['macro_f1']:>9.4f}{reference['nll']:>8.4f}"
          f"{'':>26}{reference['wall_seconds']:>8.1f}{reference['train_sps']:>9.0f}{'1.00x':>8}  {reference['kept']}")
    for row in rows:
        if "refused" in row:
            print(f"   {row['technique']:<16}{'refused: ' + row['refused']}")
            continue
        print(f"   {row['technique']:<16}{row['accuracy']:>9.4f}{row['macro_f1']:>9.4f}{row['nll']:>8.4f}"
              f"{row['delta_accuracy_points']:>+9.2f}{row['delta_macro_f1_points']:>+8.2f}{row['delta_nll']:>+9.4f}"
              f"{row['wall_seconds']:>8.1f}{row['train_sps']:>9.0f}{row['train_sps_ratio']:>7.2f}x  {row['kept']:<4}  "
              f"{row['options']}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
