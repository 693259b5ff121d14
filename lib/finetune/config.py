"""The one typed training configuration: every default in one place, filled from a file, then flags.

`TrainConfig` is built once (experiment file, then command-line flags), validated, saved into the
run folder as `config.json` and never changed afterwards. Values that depend on the data or the
model (total steps, warmup steps, the resolved learning rate, max length) live in `lib.plan`.
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
from lib.core.options import add_options, coerce, csv_strings, option, optional, parse_bool, to_dict
from lib.data.augment import parse_augment_spec
from lib.data.preprocess import SPECIAL_PATTERNS

NSMC4_LABEL_NAMES = ("강한 부정", "약한 부정", "약한 긍정", "강한 긍정")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("auto", "ce", "focal")
SELECTION_METRICS = ("loss", "accuracy", "macro_f1")
KEEP_CHOICES = ("auto", "best", "swa")


def _alpha(text: str) -> str | tuple[float, ...] | None:
    """`--alpha` accepts `none`, `auto` or comma-separated per-class weights."""
    lowered = text.strip().lower()
    if lowered in ("", "none"):
        return None
    if lowered == "auto":
        return "auto"
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--alpha: expected 'auto', 'none' or comma-separated numbers, got {text!r}") from None


def _max_length(text: str) -> str | int:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--max-length: expected 'auto' or a whole number, got {text!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Every option of one fine-tuning run. Field names are the user's own HF-style keys."""

    # data
    train_file: str = field(default="data/train.csv", metadata=option(
        "CSV with the training rows (ID, text, label columns)", "data"))
    val_file: str | None = field(default=None, metadata=option(
        "CSV with validation rows; default: a stratified split of --train-file", "data", parse=optional(str)))
    augmented_train_file: str | None = field(default=None, metadata=option(
        "CSV of rows derived from training rows (ids '<source id>_<suffix>', as backtranslate.py writes); "
        "only those whose source row is in the training split are added to it, so nothing made from a "
        "validation row leaks", "data", parse=optional(str)))
    unlabeled_file: str | None = field(default=None, metadata=option(
        "CSV of unlabelled rows (ID, text) trained on with a teacher's class probabilities as soft targets "
        "(distillation / self-training); needs --teacher-logits", "data", parse=optional(str)))
    teacher_logits: str | None = field(default=None, metadata=option(
        "the teacher's scores of the --unlabeled-file rows: the .npz of `predict.py <run or ensemble> "
        "--test <that file> --logits-out <this file>`", "data", parse=optional(str)))
    distill_temperature: float = field(default=1.0, metadata=option(
        "soft targets are softmax(teacher score / T); T > 1 flattens them", "data"))
    test_file: str | None = field(default=None, metadata=option(
        "CSV to predict after training; writes submission.csv into the run folder", "data",
        parse=optional(str)))
    id_column: str = field(default="ID", metadata=option("name of the row-id column", "data"))
    text_column: str = field(default="review", metadata=option("name of the text column", "data"))
    label_column: str = field(default="label", metadata=option("name of the integer label column", "data"))
    val_size: float = field(default=0.1, metadata=option(
        "fraction of --train-file held out for validation (stratified)", "data"))
    split_seed: int = field(default=42, metadata=option(
        "seed of the validation split, folds and --max-train-samples; apart from --seed, so runs that differ "
        "only in --seed are scored on the same rows (ensembles of seeds)", "data"))
    num_folds: int | None = field(default=None, metadata=option(
        "cross-validation: split --train-file into this many stratified folds (instead of --val-size)", "data",
        parse=optional(int)))
    fold: int = field(default=0, metadata=option(
        "with --num-folds: which fold (0-based) is the validation split", "data"))
    max_train_samples: int | None = field(default=None, metadata=option(
        "use only this many training rows (stratified), for quick runs", "data", parse=optional(int)))
    num_labels: int | None = field(default=None, metadata=option(
        "number of classes K; default: inferred as max(label)+1", "data", parse=optional(int)))
    label_names: tuple[str, ...] = field(default=NSMC4_LABEL_NAMES, metadata=option(
        "comma-separated class names for reports, one per label 0..K-1", "data", parse=csv_strings))

    # preprocessing
    unicode_normalization: str = field(default="NFC", metadata=option(
        "Unicode normal form applied to every text", "preprocessing", choices=("NFC", "NFKC", "none")))
    max_char_repeat: int = field(default=3, metadata=option(
        "squash runs of one character longer than this (ㅋㅋㅋㅋㅋ, !!!!!); 0 = off", "preprocessing"))
    special_patterns: tuple[str, ...] = field(default=("url", "email", "redacted"), metadata=option(
        "comma-separated patterns replaced by special tokens (url, email, redacted); empty = none",
        "preprocessing", parse=csv_strings))
    special_pattern_min_count: int = field(default=3, metadata=option(
        "a pattern becomes a special token only if it occurs this often in the training split",
        "preprocessing"))
    num_rare_words_to_remove: int = field(default=0, metadata=option(
        "drop words seen at most N times in the training split (0 = off)", "preprocessing"))
    max_length: str | int = field(default="auto", metadata=option(
        "token limit per text; auto = the --max-length-percentile of training lengths", "preprocessing",
        parse=_max_length))
    max_length_percentile: float = field(default=99.0, metadata=option(
        "percentile of training token lengths used by --max-length auto", "preprocessing"))

    # model
    model: str = field(default="scratch:tiny", metadata=option(
        "hub id, local folder, or scratch:tiny|mini|small|medium (a BERT built here, offline)", "model"))
    dropout_rate: float | None = field(default=None, metadata=option(
        "hidden and attention dropout; default: the model's own", "model",
        parse=optional(float)))
    scratch_vocab_size: int = field(default=12000, metadata=option(
        "WordPiece vocabulary size for scratch: models, trained on the training split", "model"))

    # optimisation
    learning_rate: float | None = field(default=None, metadata=option(
        "peak learning rate", "optimisation",
        shown="5e-5 for pretrained models; a scratch: preset's own: tiny 1e-3, mini 3e-4, small 2e-4, medium 1e-4",
        aliases=("--lr",), parse=optional(float)))
    num_train_epochs: float = field(default=3.0, metadata=option(
        "number of epochs (a fraction trains part of the last one)", "optimisation", aliases=("--epochs",)))
    per_device_train_batch_size: int = field(default=32, metadata=option(
        "training micro-batch size", "optimisation", aliases=("--batch-size",)))
    per_device_eval_batch_size: int = field(default=256, metadata=option(
        "evaluation and prediction batch size", "optimisation"))
    max_tokens_per_batch: int | None = field(default=None, metadata=option(
        "also cap each training micro-batch at this many padded tokens (rows x width), so short texts "
        "travel in larger batches", "optimisation", parse=optional(int)))
    gradient_accumulation_steps: int = field(default=1, metadata=option(
        "micro-batches per optimizer step (the last partial group is averaged over its real size)",
        "optimisation"))
    weight_decay: float = field(default=0.0, metadata=option(
        "AdamW weight decay; never applied to biases and LayerNorm weights (1-D tensors)", "optimisation"))
    adam_beta1: float = field(default=0.9, metadata=option("AdamW beta1", "optimisation"))
    adam_beta2: float = field(default=0.999, metadata=option("AdamW beta2", "optimisation"))
    adam_epsilon: float = field(default=1e-8, metadata=option("AdamW epsilon", "optimisation"))
    max_grad_norm: float = field(default=1.0, metadata=option(
        "clip the global gradient norm to this; 0 = no clipping (the norm is still logged)", "optimisation"))
    lr_scheduler_type: str = field(default="linear", metadata=option(
        "learning-rate schedule (constant ignores warmup, as in transformers)", "optimisation",
        choices=SCHEDULERS))
    warmup_steps: int = field(default=0, metadata=option(
        "optimizer steps of linear warmup from 0", "optimisation"))
    warmup_ratio: float | None = field(default=None, metadata=option(
        "warmup as a fraction of all optimizer steps (rounded up); used when --warmup-steps is 0",
        "optimisation", parse=optional(float), shown="0.06 for scratch: models, 0 for pretrained ones"))

    # loss
    loss: str = field(default="auto", metadata=option(
        "ce or focal; auto = focal when --gamma > 0 or --alpha is set, else cross entropy", "loss",
        choices=LOSSES))
    focal_loss_gamma: float = field(default=0.0, metadata=option(
        "focal loss gamma (0 with no alpha is exactly cross entropy)", "loss", aliases=("--gamma",)))
    focal_loss_alpha: str | tuple[float, ...] | None = field(default=None, metadata=option(
        "per-class focal weights: comma-separated, 'auto' (inverse training frequency) or 'none'", "loss",
        aliases=("--alpha",), parse=_alpha))
    label_smoothing_factor: float = field(default=0.0, metadata=option(
        "label smoothing epsilon, combined with focal loss when both are set", "loss"))

    augment: str = field(default="none", metadata=option(
        "on-the-fly noise for training texts, per-unit probabilities, e.g. "
        "spacing=0.1,repeat=0.05,jamo=0.05,delete=0.05,swap=0.05 (never applied to validation or test)",
        "preprocessing"))

    # evaluation, selection, stopping
    eval_steps: int | None = field(default=None, metadata=option(
        "evaluate every N optimizer steps as well as at each epoch end", "evaluation", parse=optional(int)))
    metric_for_best_model: str = field(default="loss", metadata=option(
        "validation metric that picks best/: loss, accuracy or macro_f1 (eval_ prefix accepted)",
        "evaluation"))
    early_stopping_patience: int | None = field(default=None, metadata=option(
        "stop after this many evaluations without a val-loss improvement; default: off", "evaluation",
        parse=optional(int)))
    early_stopping_threshold: float = field(default=0.0, metadata=option(
        "a val-loss improvement must exceed this (absolute) to reset patience", "evaluation"))
    max_loss_increase: float | None = field(default=None, metadata=option(
        "select only among checkpoints whose val loss is within this fraction of the lowest seen "
        "(with --metric-for-best-model accuracy: the best accuracy that has not over-fitted)", "evaluation",
        parse=optional(float)))
    logging_steps: int = field(default=50, metadata=option(
        "log train/loss, lr and grad norm every N optimizer steps", "evaluation"))

    # weight averaging
    swa_last_k: int = field(default=0, metadata=option(
        "after training, average the weights of the last K epoch ends into swa/ (0 = off)", "averaging"))
    swa_start: float | None = field(default=None, metadata=option(
        "average during training from this epoch on (1-based epoch, or a fraction of the epochs)", "averaging",
        parse=optional(float)))
    swa_lr: float | None = field(default=None, metadata=option(
        "with --swa-start: anneal the learning rate to this value from the start of averaging (SWALR)",
        "averaging", parse=optional(float)))
    swa_anneal_steps: int | None = field(default=None, metadata=option(
        "with --swa-lr: optimizer steps of cosine annealing to it; default one epoch", "averaging",
        parse=optional(int)))
    keep: str = field(default="auto", metadata=option(
        "model predict.py uses: best, swa, or auto = the better of both by --metric-for-best-model",
        "averaging", choices=KEEP_CHOICES))

    # run
    seed: int = field(default=42, metadata=option("seed for the model init, dropout and batch order", "run"))
    precision: str = field(default="auto", metadata=option(
        "auto = fp16 + GradScaler on CUDA (bf16 where supported), fp32 on CPU", "run", choices=PRECISIONS))
    device: str = field(default="auto", metadata=option("auto, cpu or cuda[:N]", "run"))
    ddp_backend: str = field(default="auto", metadata=option(
        "process-group backend under torchrun: auto = nccl on CUDA, gloo on CPU", "run",
        choices=("auto", "gloo", "nccl")))
    compile: bool = field(default=False, metadata=option(
        "torch.compile the model for training (dynamic shapes); measured slower on 2 CPU cores, see README",
        "run", parse=parse_bool))
    group_by_length: bool = field(default=True, metadata=option(
        "length-grouped training batches (dynamic padding is always on)", "run", parse=parse_bool))
    output_dir: str = field(default="runs", metadata=option("folder that holds run folders", "run"))
    cache_dir: str | None = field(default="cache", metadata=option(
        "folder caching tokenised splits and scratch tokenizers across runs (--no-cache: off)", "run",
        parse=optional(str)))
    run_name: str | None = field(default=None, metadata=option(
        "run folder name; default: <date>-<time>-<model>", "run", parse=optional(str)))

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def bad(flag: str, expected: str) -> None:
            value = getattr(self, flag.replace("-", "_"))
            raise UserError(f"--{flag}: expected {expected}, got {value!r}")

        if self.learning_rate is not None and not self.learning_rate > 0:
            bad("learning-rate", "a positive number")
        if not self.num_train_epochs > 0:
            bad("num-train-epochs", "a positive number")
        for flag in ("per-device-train-batch-size", "per-device-eval-batch-size", "gradient-accumulation-steps",
                     "logging-steps", "scratch-vocab-size"):
            if getattr(self, flag.replace("-", "_")) < 1:
                bad(flag, "a whole number >= 1")
        for flag in ("weight-decay", "max-grad-norm", "warmup-steps", "focal-loss-gamma",
                     "early-stopping-threshold", "num-rare-words-to-remove", "max-char-repeat",
                     "special-pattern-min-count"):
            if not getattr(self, flag.replace("-", "_")) >= 0:
                bad(flag, "a number >= 0")
        if not 0 < self.val_size < 1:
            bad("val-size", "a fraction between 0 and 1")
        if self.num_folds is not None:
            if self.num_folds < 2:
                bad("num-folds", "a whole number >= 2")
            if not 0 <= self.fold < self.num_folds:
                bad("fold", f"a fold index in 0..{self.num_folds - 1}")
            if self.val_file:
                raise UserError("--num-folds and --val-file: give one of them, not both")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            bad("warmup-ratio", "a fraction in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise UserError("--warmup-steps and --warmup-ratio: give one of them, not both")
        if not 0 <= self.label_smoothing_factor < 1:
            bad("label-smoothing-factor", "a number in [0, 1)")
        if self.dropout_rate is not None and not 0 <= self.dropout_rate < 1:
            bad("dropout-rate", "a number in [0, 1)")
        if not 0 < self.max_length_percentile <= 100:
            bad("max-length-percentile", "a percentile in (0, 100]")
        if self.max_length != "auto" and (not isinstance(self.max_length, int) or self.max_length < 2):
            bad("max-length", "'auto' or a whole number >= 2")
        for flag in ("max-train-samples", "num-labels", "eval-steps"):
            value = getattr(self, flag.replace("-", "_"))
            if value is not None and value < 1:
                bad(flag, "a whole number >= 1")
        if self.num_labels is not None and self.num_labels < 2:
            bad("num-labels", "at least 2 classes")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            bad("early-stopping-patience", "a whole number >= 1")
        if self.selection_metric not in SELECTION_METRICS:
            bad("metric-for-best-model", "one of " + ", ".join(SELECTION_METRICS))
        if self.loss == "ce" and (self.focal_loss_gamma > 0 or self.focal_loss_alpha is not None):
            raise UserError("--loss ce: --gamma and --alpha only apply to focal loss (use --loss focal)")
        alpha = self.focal_loss_alpha
        if isinstance(alpha, tuple) and (not alpha or any(not a >= 0 for a in alpha)):
            bad("alpha", "non-negative per-class weights")
        unknown = set(self.special_patterns) - set(SPECIAL_PATTERNS)
        if unknown:
            bad("special-patterns", "names among " + ", ".join(SPECIAL_PATTERNS))
        if self.swa_last_k < 0:
            bad("swa-last-k", "a whole number >= 0")
        if self.swa_start is not None:
            if self.swa_last_k:
                raise UserError("--swa-start and --swa-last-k: average during training or after it, not both")
            if not self.swa_start > 0:
                bad("swa-start", "a 1-based epoch or a fraction in (0, 1)")
        if self.swa_lr is not None and (self.swa_start is None or not self.swa_lr > 0):
            raise UserError("--swa-lr: needs --swa-start and a positive learning rate")
        if self.swa_anneal_steps is not None and self.swa_anneal_steps < 0:
            bad("swa-anneal-steps", "a whole number >= 0")
        if self.keep == "swa" and not self.averages_weights:
            raise UserError("--keep swa: needs --swa-last-k or --swa-start")
        if self.max_loss_increase is not None and not self.max_loss_increase >= 0:
            bad("max-loss-increase", "a fraction >= 0")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 8:
            bad("max-tokens-per-batch", "a whole number >= 8")
        parse_augment_spec(self.augment)
        if bool(self.unlabeled_file) != bool(self.teacher_logits):
            raise UserError("--unlabeled-file and --teacher-logits: give both (texts and their teacher's scores) "
                            "or neither")
        if not self.distill_temperature > 0:
            bad("distill-temperature", "a positive number")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "auto, cpu or cuda[:N]")

    @property
    def selection_metric(self) -> str:
        """`metric_for_best_model` without the HF `eval_` prefix."""
        name = self.metric_for_best_model
        return name[len("eval_"):] if name.startswith("eval_") else name

    @property
    def averages_weights(self) -> bool:
        return self.swa_last_k > 0 or self.swa_start is not None

    @property
    def uses_focal_loss(self) -> bool:
        if self.loss == "auto":
            return self.focal_loss_gamma > 0 or self.focal_loss_alpha is not None
        return self.loss == "focal"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        return cls(**coerce(cls, values, source, "python train.py --help"))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path), source=str(path))


def option_names() -> set[str]:
    """Field names a config file, a sweep parameter or a flag may set."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read an experiment file (JSON, or YAML when PyYAML is installed) into a flat dict."""
    if not path.is_file():
        raise UserError(f"--config: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, ImportError) as error:
        raise UserError(f"--config {path}: not valid {path.suffix.lstrip('.').upper()}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values")
    return data


def build_train_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="train.py",
        description="Fine-tune a text classifier into a self-describing run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON/YAML file of options (field names, dashes or underscores); flags win")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted run folder from its last saved state")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only summary lines")
    parser.add_argument("--no-cache", action="store_true", help="tokenise from scratch; same as --cache-dir none")
    add_options(parser, TrainConfig)
    return parser


@dataclass(frozen=True)
class TrainInvocation:
    """What train.py was asked to do: a config for a new run, or a run folder to resume."""

    config: TrainConfig | None
    resume: Path | None
    overwrite: bool
    quiet: bool


def parse_train_args(argv: Sequence[str]) -> TrainInvocation:
    """Experiment file first, then flags on top; a resume takes its config from the run folder."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "overwrite", "quiet", "no_cache")}
    if args.no_cache:
        options["cache_dir"] = None
    if args.resume is not None:
        if options or args.config is not None:
            raise UserError("--resume: takes its options from the run folder; give no other options "
                            f"(got {', '.join('--' + k.replace('_', '-') for k in options) or '--config'})")
        return TrainInvocation(None, args.resume, args.overwrite, args.quiet)
    values = coerce(TrainConfig, read_config_file(args.config), str(args.config), "python train.py --help") \
        if args.config else {}
    values.update(options)
    return TrainInvocation(TrainConfig(**values), None, args.overwrite, args.quiet)

