"""The typed pretraining configuration: every default of pretrain.py in one place, saved with the run.

`PretrainConfig` is built once from the command line, validated, saved into the output folder as
`pretrain_config.json` (`config.json` there is the model's own) and never changed afterwards.
Values that depend on the data or on measured speed (total steps, warmup, learning rate) live in
`lib.pretrainer.PretrainPlan`. Text preprocessing defaults to fine-tuning's own (`TrainConfig`), so
the model is pretrained on texts normalised exactly as train.py will show them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lib.core.cli import CliParser
from lib.core.errors import UserError
from lib.core.options import add_options, csv_strings, option, optional, to_dict
from lib.data.preprocess import SPECIAL_PATTERNS
from lib.finetune.config import PRECISIONS, SCHEDULERS, TrainConfig
from lib.finetune.plan import PRETRAINED_LEARNING_RATE
from lib.model.backbone import SCRATCH_PRESETS

NORMALIZATIONS = ("NFC", "NFKC", "none")
SCRATCH_LEARNING_RATE = 5e-4


@dataclass(frozen=True)
class PretrainConfig:
    """Every option of one masked-language-model pretraining run."""

    # data
    texts: tuple[str, ...] = field(default=(), metadata=option(
        "CSV files (.csv or .csv.gz) whose text column is pretraining text; exact duplicates are dropped",
        "data", nargs="+", shown="required"))
    text_column: str = field(default="review", metadata=option("name of the text column in every file", "data"))
    eval_texts: int = field(default=2000, metadata=option(
        "texts held out (chosen with the seed) for the held-out MLM loss and masked-token accuracy", "data"))
    max_length: int = field(default=128, metadata=option(
        "tokens per packed sequence [CLS] review [SEP] review [SEP] ...", "data"))
    unicode_normalization: str = field(default=TrainConfig.unicode_normalization, metadata=option(
        "Unicode normal form applied to every text, as train.py does", "data", choices=NORMALIZATIONS))
    max_char_repeat: int = field(default=TrainConfig.max_char_repeat, metadata=option(
        "squash runs of one character longer than this (as train.py does); 0 = off", "data"))
    special_patterns: tuple[str, ...] = field(default=TrainConfig.special_patterns, metadata=option(
        "comma-separated patterns replaced by special tokens, as train.py does (url, email, redacted)",
        "data", parse=csv_strings))

    # model
    preset: str | None = field(default="mini", metadata=option(
        "from scratch: a BERT of this size (" + ", ".join(SCRATCH_PRESETS) + ") with a WordPiece tokenizer "
        "trained on the texts", "model", choices=tuple(SCRATCH_PRESETS), shown="mini, unless --init is given"))
    init: str | None = field(default=None, metadata=option(
        "continue pretraining a hub id or local model folder with an MLM head (replaces --preset)", "model",
        shown="none"))
    vocab_size: int = field(default=TrainConfig.scratch_vocab_size, metadata=option(
        "WordPiece vocabulary size of a --preset model", "model"))

    # masking
    mlm_probability: float = field(default=0.15, metadata=option(
        "fraction of ordinary tokens predicted (of them 80% [MASK], 10% random, 10% unchanged)", "masking"))
    whole_word_masking: bool = field(default=False, metadata=option(
        "mask every piece of a word together (words end at spaces)", "masking", flag=True))

    # optimisation
    learning_rate: float | None = field(default=None, metadata=option(
        "peak learning rate", "optimisation", parse=optional(float),
        shown=f"{SCRATCH_LEARNING_RATE:g} with --preset, {PRETRAINED_LEARNING_RATE:g} with --init"))
    batch_size: int = field(default=32, metadata=option("packed sequences per micro-batch", "optimisation"))
    gradient_accumulation_steps: int = field(default=1, metadata=option(
        "micro-batches per optimizer step (the loss is averaged over all masked tokens of the window)",
        "optimisation"))
    weight_decay: float = field(default=0.01, metadata=option(
        "AdamW weight decay; never applied to biases and LayerNorm weights (1-D tensors)", "optimisation"))
    adam_beta1: float = field(default=0.9, metadata=option("AdamW beta1", "optimisation"))
    adam_beta2: float = field(default=0.999, metadata=option("AdamW beta2", "optimisation"))
    adam_epsilon: float = field(default=1e-8, metadata=option("AdamW epsilon", "optimisation"))
    max_grad_norm: float = field(default=1.0, metadata=option(
        "clip the global gradient norm to this; 0 = no clipping (the norm is still logged)", "optimisation"))
    lr_scheduler_type: str = field(default="linear", metadata=option(
        "learning-rate schedule (constant ignores warmup, as in transformers)", "optimisation", choices=SCHEDULERS))
    warmup_steps: int = field(default=0, metadata=option(
        "optimizer steps of linear warmup from 0", "optimisation"))
    warmup_ratio: float = field(default=0.06, metadata=option(
        "warmup as a fraction of all optimizer steps (rounded up); used when --warmup-steps is 0", "optimisation"))

    # budget
    max_steps: int | None = field(default=None, metadata=option(
        "stop after this many optimizer steps", "budget", parse=optional(int), shown="none"))
    epochs: float | None = field(default=None, metadata=option(
        "stop after this many passes over the texts", "budget", parse=optional(float),
        shown="1 when no other budget is given, else none"))
    max_minutes: float | None = field(default=None, metadata=option(
        "wall-clock budget of the whole run, preparation included; the schedule's length is fixed from the "
        "speed measured on the first micro-batches, and the budget is also a hard stop", "budget",
        parse=optional(float), shown="none"))

    # evaluation and logging
    eval_steps: int = field(default=500, metadata=option(
        "evaluate on the held-out texts and save a checkpoint every N optimizer steps", "evaluation"))
    eval_batch_size: int = field(default=64, metadata=option("packed sequences per evaluation batch", "evaluation"))
    logging_steps: int = field(default=50, metadata=option(
        "log train/loss, lr, grad norm and tokens/s every N optimizer steps", "evaluation"))

    # run
    out: str = field(default="", metadata=option(
        "output model folder, e.g. models/<name> (written as <name>.incomplete, renamed when done)", "run",
        shown="required"))
    seed: int = field(default=42, metadata=option(
        "seed for the held-out slice, packing order, initial weights, masks and dropout", "run"))
    precision: str = field(default="auto", metadata=option(
        "auto = bf16 on CUDA GPUs that support it, fp16 + GradScaler on older ones, fp32 on CPU", "run",
        choices=PRECISIONS))
    device: str = field(default="auto", metadata=option("auto, cpu or cuda[:N]", "run"))
    cache_dir: str | None = field(default="cache", metadata=option(
        "folder caching the trained tokenizer and the token ids across runs (--no-cache: off)", "run",
        parse=optional(str)))

    def __post_init__(self) -> None:
        def bad(flag: str, expected: str) -> None:
            raise UserError(f"--{flag}: expected {expected}, got {getattr(self, flag.replace('-', '_'))!r}")

        if not self.texts:
            raise UserError("--texts: give at least one CSV file of pretraining texts")
        if (self.preset is None) == (self.init is None):
            raise UserError("--preset and --init: give one of them (a new model, or one to continue)")
        if self.preset is not None and self.preset not in SCRATCH_PRESETS:
            bad("preset", "one of " + ", ".join(SCRATCH_PRESETS))
        for flag in ("eval-texts", "batch-size", "gradient-accumulation-steps", "eval-steps", "eval-batch-size",
                     "logging-steps"):
            if getattr(self, flag.replace("-", "_")) < 1:
                bad(flag, "a whole number >= 1")
        if self.max_length < 8:
            bad("max-length", "a whole number >= 8")
        if self.vocab_size < 100:
            bad("vocab-size", "a whole number >= 100")
        if not 0 < self.mlm_probability < 1:
            bad("mlm-probability", "a fraction in (0, 1)")
        for flag in ("weight-decay", "max-grad-norm", "warmup-steps", "max-char-repeat"):
            if not getattr(self, flag.replace("-", "_")) >= 0:
                bad(flag, "a number >= 0")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup-ratio", "a fraction in [0, 1)")
        if self.learning_rate is not None and not self.learning_rate > 0:
            bad("learning-rate", "a positive number")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max-steps", "a whole number >= 1")
        for flag in ("epochs", "max-minutes"):
            value = getattr(self, flag.replace("-", "_"))
            if value is not None and not value > 0:
                bad(flag, "a positive number")
        for flag, choices in (("lr-scheduler-type", SCHEDULERS), ("precision", PRECISIONS),
                              ("unicode-normalization", NORMALIZATIONS)):
            if getattr(self, flag.replace("-", "_")) not in choices:
                bad(flag, "one of " + ", ".join(choices))
        if set(self.special_patterns) - set(SPECIAL_PATTERNS):
            bad("special-patterns", "names among " + ", ".join(SPECIAL_PATTERNS))
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "auto, cpu or cuda[:N]")
        if not self.out:
            raise UserError("--out: give the output model folder, e.g. models/<name>")

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return SCRATCH_LEARNING_RATE if self.preset is not None else PRETRAINED_LEARNING_RATE

    @property
    def model_source(self) -> str:
        """What the weights start from, for logs and folder records."""
        return self.init if self.init is not None else f"scratch:{self.preset}"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "PretrainConfig":
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--resume: {path.parent} has no {path.name}; not a folder written by pretrain.py") from None
        except ValueError:
            raise UserError(f"{path}: corrupt JSON") from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - names:
            raise UserError(f"{path}: not a configuration written by this version of pretrain.py")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class PretrainInvocation:
    """What pretrain.py was asked to do: a config for a new run, or a folder to resume."""

    config: PretrainConfig | None
    resume: Path | None
    overwrite: bool
    quiet: bool


def build_pretrain_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="pretrain.py", description="Masked-language-model pretraining into a model folder that "
                     "train.py --model fine-tunes like a hub model.")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted <name>.incomplete folder from its last checkpoint "
                             "(default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder of the same name (default: off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only log lines (default: off)")
    parser.add_argument("--no-cache", action="store_true", help="same as --cache-dir none (default: off)")
    add_options(parser, PretrainConfig)
    return parser


def parse_pretrain_args(argv: Sequence[str]) -> PretrainInvocation:
    """Flags over the defaults; a resume takes its config from the output folder."""
    args = build_pretrain_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "quiet", "no_cache")}
    if args.no_cache:
        options["cache_dir"] = None
    if args.resume is not None:
        if options:
            raise UserError("--resume: takes its options from the folder; give no other options (got "
                            + ", ".join("--" + k.replace("_", "-") for k in options) + ")")
        return PretrainInvocation(None, args.resume, args.overwrite, args.quiet)
    if "init" in options:
        if "preset" in options:
            raise UserError("--preset and --init: give one of them (a new model, or one to continue)")
        options["preset"] = None
    if "texts" in options:
        options["texts"] = tuple(options["texts"])
    return PretrainInvocation(PretrainConfig(**options), None, args.overwrite, args.quiet)

