"""The typed pretraining configuration: every default of pretrain.py in one place, saved with the run.

`PretrainConfig` is built once (experiment file, then command-line flags), checked by the same
option system as fine-tuning's (lib.core.options), saved into the output folder as
`pretrain_config.json` (`config.json` there is the model's own) and never changed afterwards. A
setting both scripts have carries train.py's name (per_device_train_batch_size, num_train_epochs,
scratch_vocab_size, output_dir + run_name); pretrain.py's older flags stay as aliases. Values that
depend on the data or on measured speed (total steps, warmup) live in the run's `PretrainPlan`.
Text preprocessing defaults to fine-tuning's own (lib.data.preprocess), so the model is pretrained
on texts normalised exactly as train.py will show them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lib.core.cli import CliParser
from lib.core.device import DEVICE_FORMS, PRECISIONS, parse_device
from lib.core.errors import UserError
from lib.core.options import add_options, check_fields, coerce, field_of, option, read_config_file, to_dict
from lib.data.preprocess import (DEFAULT_MAX_CHAR_REPEAT, DEFAULT_NORMALIZATION, DEFAULT_SPECIAL_PATTERNS,
                                 NORMALIZATIONS, SPECIAL_PATTERNS)
from lib.loop.schedule import SCHEDULERS
from lib.model.backbone import SCRATCH_PRESETS, SCRATCH_VOCAB_SIZE, learning_rate_defaults, learning_rate_for

HELP_HINT = "python pretrain.py --help"


@dataclass(frozen=True)
class PretrainConfig:
    """Every option of one masked-language-model pretraining run."""

    # data
    texts: tuple[str, ...] = field(default=(), metadata=option(
        "tables (.csv, .tsv, .txt, .jsonl, each also .gz, or .parquet) whose text column is pretraining text; "
        "exact duplicates are dropped",
        "data", nargs="+", shown="required"))
    text_column: str = field(default="review", metadata=option("name of the text column in every file", "data"))
    eval_texts: int = field(default=2000, metadata=option(
        "texts held out (chosen with the seed) for the held-out MLM loss and masked-token accuracy", "data",
        at_least=1))
    max_length: int = field(default=128, metadata=option(
        "tokens per packed sequence [CLS] review [SEP] review [SEP] ...", "data", at_least=8))
    unicode_normalization: str = field(default=DEFAULT_NORMALIZATION, metadata=option(
        "Unicode normal form applied to every text, as train.py does", "data", choices=NORMALIZATIONS))
    max_char_repeat: int = field(default=DEFAULT_MAX_CHAR_REPEAT, metadata=option(
        "squash runs of one character longer than this (as train.py does); 0 = off", "data", at_least=0))
    special_patterns: tuple[str, ...] = field(default=DEFAULT_SPECIAL_PATTERNS, metadata=option(
        "comma-separated patterns replaced by special tokens, as train.py does (url, email, redacted)",
        "data", choices=tuple(SPECIAL_PATTERNS)))

    # model
    preset: str | None = field(default="mini", metadata=option(
        "from scratch: a BERT of this size (" + ", ".join(SCRATCH_PRESETS) + ") with a WordPiece tokenizer "
        "trained on the texts", "model", choices=tuple(SCRATCH_PRESETS), shown="mini, unless --init is given"))
    init: str | None = field(default=None, metadata=option(
        "continue pretraining a hub id or local model folder with an MLM head (replaces --preset)", "model",
        shown="none"))
    scratch_vocab_size: int = field(default=SCRATCH_VOCAB_SIZE, metadata=option(
        "WordPiece vocabulary size of a --preset model", "model", aliases=("--vocab-size",), at_least=100))

    # masking
    mlm_probability: float = field(default=0.15, metadata=option(
        "fraction of ordinary tokens predicted (of them 80% [MASK], 10% random, 10% unchanged)", "masking",
        above=0, below=1))
    whole_word_masking: bool = field(default=False, metadata=option(
        "mask every piece of a word together (words end at spaces)", "masking", flag=True))

    # optimisation
    learning_rate: float | None = field(default=None, metadata=option(
        "peak learning rate", "optimisation", shown=learning_rate_defaults(mlm=True), above=0))
    per_device_train_batch_size: int = field(default=32, metadata=option(
        "packed sequences per micro-batch", "optimisation", aliases=("--batch-size",), at_least=1))
    gradient_accumulation_steps: int = field(default=1, metadata=option(
        "micro-batches per optimizer step (the loss is averaged over all masked tokens of the window)",
        "optimisation", at_least=1))
    weight_decay: float = field(default=0.01, metadata=option(
        "AdamW weight decay; never applied to biases and LayerNorm weights (1-D tensors)", "optimisation",
        at_least=0))
    adam_beta1: float = field(default=0.9, metadata=option("AdamW beta1", "optimisation", at_least=0, below=1))
    adam_beta2: float = field(default=0.999, metadata=option("AdamW beta2", "optimisation", at_least=0, below=1))
    adam_epsilon: float = field(default=1e-8, metadata=option("AdamW epsilon", "optimisation", at_least=0))
    max_grad_norm: float = field(default=1.0, metadata=option(
        "clip the global gradient norm to this; 0 = no clipping (the norm is still logged)", "optimisation",
        at_least=0))
    lr_scheduler_type: str = field(default="linear", metadata=option(
        "learning-rate schedule (constant ignores warmup, as in transformers)", "optimisation", choices=SCHEDULERS))
    warmup_steps: int = field(default=0, metadata=option(
        "optimizer steps of linear warmup from 0", "optimisation", at_least=0))
    warmup_ratio: float = field(default=0.06, metadata=option(
        "warmup as a fraction of all optimizer steps (rounded up); used when --warmup-steps is 0", "optimisation",
        at_least=0, below=1))

    # budget
    max_steps: int | None = field(default=None, metadata=option(
        "stop after this many optimizer steps", "budget", shown="none", at_least=1))
    num_train_epochs: float | None = field(default=None, metadata=option(
        "stop after this many passes over the texts", "budget", aliases=("--epochs",),
        shown="1 when no other budget is given, else none", above=0))
    max_minutes: float | None = field(default=None, metadata=option(
        "wall-clock budget of the whole run, preparation included; the schedule's length is fixed from the "
        "speed measured on the first micro-batches, and the budget is also a hard stop", "budget",
        shown="none", above=0))

    # evaluation and logging
    eval_steps: int = field(default=500, metadata=option(
        "evaluate on the held-out texts and save a checkpoint every N optimizer steps", "evaluation", at_least=1))
    per_device_eval_batch_size: int = field(default=64, metadata=option(
        "packed sequences per evaluation batch", "evaluation", aliases=("--eval-batch-size",), at_least=1))
    logging_steps: int = field(default=50, metadata=option(
        "log train/loss, lr, grad norm and tokens/s every N optimizer steps", "evaluation", at_least=1))

    # run
    output_dir: str = field(default="models", metadata=option("folder that holds model folders", "run"))
    run_name: str = field(default="", metadata=option(
        "model folder name, <output-dir>/<run-name> (written as <run-name>.incomplete, renamed when done)", "run",
        shown="required"))
    seed: int = field(default=42, metadata=option(
        "seed for the held-out slice, packing order, initial weights, masks and dropout", "run"))
    precision: str = field(default="auto", metadata=option(
        "auto = bf16 on CUDA GPUs that support it, fp16 + GradScaler on older ones; on a CPU bf16 with "
        "AMX for models at least 256 wide, else fp32", "run",
        choices=PRECISIONS))
    device: str = field(default="auto", metadata=option(DEVICE_FORMS, "run", parse=parse_device,
                                                        expects=DEVICE_FORMS))
    ddp_backend: str = field(default="auto", metadata=option(
        "process-group backend under torchrun: auto = nccl on CUDA, gloo on CPU", "run",
        choices=("auto", "gloo", "nccl")))
    cache_dir: str | None = field(default="cache", metadata=option(
        "folder caching the trained tokenizer and the token ids across runs, and sharing them between the "
        "processes under torchrun (--no-cache: off)", "run"))

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.texts:
            raise UserError("--texts: give at least one file of pretraining texts")
        if (self.preset is None) == (self.init is None):
            raise UserError("--preset and --init: give one of them (a new model, or one to continue)")
        if not self.run_name:
            raise UserError("--run-name: give the model folder's name (or --out models/<name>)")
        if "/" in self.run_name or self.run_name in (".", ".."):
            raise UserError(f"--run-name: expected a plain folder name, got {self.run_name!r}")

    @property
    def out(self) -> str:
        """The model folder, <output_dir>/<run_name>: what --out names."""
        return str(Path(self.output_dir) / self.run_name)

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return learning_rate_for(SCRATCH_PRESETS[self.preset] if self.preset is not None else None, mlm=True)

    @property
    def model_source(self) -> str:
        """What the weights start from, for logs and folder records."""
        return self.init if self.init is not None else f"scratch:{self.preset}"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = "config") -> "PretrainConfig":
        return cls(**_layer(values, source))

    @classmethod
    def load(cls, path: Path) -> "PretrainConfig":
        """A saved config, through the same conversion and checks (older saved names are aliases)."""
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--resume: {path.parent} has no {path.name}; not a folder written by "
                            "pretrain.py") from None
        except ValueError:
            raise UserError(f"{path}: corrupt JSON") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: not a configuration written by pretrain.py")
        return cls.from_dict(values, source=str(path))


def _layer(values: dict[str, Any], source: str | None) -> dict[str, Any]:
    """One source's values (a file, the flags), converted and checked. Naming --init or --preset in a
    source chooses the model for it, so flags win over a file that chose the other."""
    layer = coerce(PretrainConfig, _expand_out(values), source, HELP_HINT)
    chosen = [key for key in ("preset", "init") if layer.get(key) is not None]
    if len(chosen) == 2:
        raise UserError("--preset and --init: give one of them (a new model, or one to continue)")
    if chosen:
        layer["init" if chosen[0] == "preset" else "preset"] = None
    return layer


def _expand_out(values: dict[str, Any]) -> dict[str, Any]:
    """`out: models/x` (the --out shortcut, and the key of configs saved before output_dir and
    run_name) as output_dir + run_name."""
    if "out" not in values:
        return values
    rest = {key: value for key, value in values.items() if key != "out"}
    if any(getattr(field_of(PretrainConfig, str(key)), "name", None) in ("output_dir", "run_name") for key in rest):
        raise UserError("--out: sets --output-dir and --run-name; give it or them, not both")
    out = Path(str(values["out"]))
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {values['out']}: expected a folder name such as models/<name>")
    return {**rest, "output_dir": str(out.parent), "run_name": out.name}


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
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON/YAML file of options (field names, dashes or underscores); flags win "
                             "(default: none)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted <name>.incomplete folder from its last checkpoint "
                             "(default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder of the same name (default: off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only log lines (default: off)")
    parser.add_argument("--no-cache", action="store_true", help="same as --cache-dir none (default: off)")
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help="the model folder, e.g. models/<name>: sets --output-dir and --run-name (default: none)")
    add_options(parser, PretrainConfig)
    return parser


def parse_pretrain_args(argv: Sequence[str]) -> PretrainInvocation:
    """Experiment file first, then flags on top; a resume takes its config from the output folder."""
    args = build_pretrain_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "overwrite", "quiet", "no_cache")}
    if args.no_cache:
        options["cache_dir"] = None
    if args.resume is not None:
        if options or args.config is not None:
            raise UserError("--resume: takes its options from the folder; give no other options (got "
                            + (", ".join("--" + k.replace("_", "-") for k in options) or "--config") + ")")
        return PretrainInvocation(None, args.resume, args.overwrite, args.quiet)
    values = _layer(read_config_file(args.config), str(args.config)) if args.config else {}
    values.update(_layer(options, None))
    return PretrainInvocation(PretrainConfig(**values), None, args.overwrite, args.quiet)
