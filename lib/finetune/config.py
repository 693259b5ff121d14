"""The one typed training configuration: every default in one place, filled from a file, then flags.

`TrainConfig` is built once (experiment file, then command-line flags), validated, saved into the
run folder as `config.json` and never changed afterwards. Each field's own checks (choices, range)
live in its metadata and apply to every source (lib.core.options); rules between fields live in
`__post_init__`. Values that depend on the data or the model (total steps, warmup steps, the
resolved learning rate, max length) live in `lib.finetune.plan`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lib.core.cli import CliParser
from lib.core.device import DEVICE_FORMS, PRECISIONS, parse_device
from lib.core.errors import UserError
from lib.core.metrics_logger import REPORT_TO, REPORT_TO_EXPECTED, parse_report_to
from lib.core.options import add_options, check_fields, coerce, option, read_config_file, to_dict
from lib.data.augment import parse_augment_spec
from lib.data.preprocess import (DEFAULT_MAX_CHAR_REPEAT, DEFAULT_NORMALIZATION, DEFAULT_SPECIAL_PATTERNS,
                                 NORMALIZATIONS, SPECIAL_PATTERNS)
from lib.loop.schedule import SCHEDULERS
from lib.model.backbone import SCRATCH_VOCAB_SIZE, learning_rate_defaults

NSMC4_LABEL_NAMES = ("강한 부정", "약한 부정", "약한 긍정", "강한 긍정")
LOSSES = ("auto", "ce", "focal")
SELECTION_METRICS = ("loss", "accuracy", "macro_f1")
KEEP_CHOICES = ("auto", "best", "swa", "ema")
POOLINGS = ("model", "cls", "mean", "max", "attention", "weighted-layers", "concat-last-4")
ADVERSARIAL = ("none", "fgm", "awp")
TRUNCATIONS = ("head", "tail", "head+tail")
CLASSICAL_MODEL = "tfidf"
# Used when --adversarial is on and these are not given: FGM's usual 1.0 on BERT embeddings; AWP as
# Kaggle solutions run it. Their options default to None, so giving one without --adversarial is caught.
FGM_EPSILON, AWP_LR, AWP_EPS = 1.0, 1e-4, 1e-2
HELP_HINT = "python train.py --help"


def _alpha(text: str) -> str | tuple[float, ...]:
    """`--alpha`: 'auto' or comma-separated per-class weights ('none' comes from the annotation)."""
    return "auto" if text.strip().lower() == "auto" else tuple(float(part) for part in text.split(","))


def _max_length(text: str) -> str | int:
    return "auto" if str(text).strip().lower() == "auto" else int(text)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of one fine-tuning run. Field names are the user's own HF-style keys."""

    # data
    train_file: str = field(default="data/train.csv", metadata=option(
        "table with the training rows (ID, text, label columns): .csv, .tsv, .txt, .jsonl (each also .gz) "
        "or .parquet", "data"))
    val_file: str | None = field(default=None, metadata=option(
        "table with validation rows; default: a stratified split of --train-file", "data"))
    augmented_train_file: str | None = field(default=None, metadata=option(
        "table of rows derived from training rows (ids '<source id>_<suffix>', as backtranslate.py writes); "
        "only those whose source row is in the training split are added to it, so nothing made from a "
        "validation row leaks", "data"))
    unlabeled_file: str | None = field(default=None, metadata=option(
        "table of unlabelled rows (ID, text) trained on with a teacher's class probabilities as soft targets "
        "(distillation / self-training); needs --teacher-logits", "data"))
    teacher_logits: str | None = field(default=None, metadata=option(
        "the teacher's scores of the --unlabeled-file rows: the .npz of `predict.py <run or ensemble> "
        "--test <that file> --logits-out <this file>`", "data"))
    distill_temperature: float = field(default=1.0, metadata=option(
        "soft targets are softmax(teacher score / T); T > 1 flattens them", "data", above=0))
    test_file: str | None = field(default=None, metadata=option(
        "table to predict after training; writes submission.csv into the run folder", "data"))
    id_column: str = field(default="ID", metadata=option("name of the row-id column", "data"))
    text_column: str = field(default="review", metadata=option("name of the text column", "data"))
    label_column: str = field(default="label", metadata=option("name of the integer label column", "data"))
    val_size: float = field(default=0.1, metadata=option(
        "fraction of --train-file held out for validation (stratified)", "data", above=0, below=1))
    split_seed: int = field(default=42, metadata=option(
        "seed of the validation split, folds and --max-train-samples; apart from --seed, so runs that differ "
        "only in --seed are scored on the same rows (ensembles of seeds)", "data"))
    num_folds: int | None = field(default=None, metadata=option(
        "cross-validation: split --train-file into this many stratified folds (instead of --val-size)", "data",
        at_least=2))
    fold: int = field(default=0, metadata=option(
        "with --num-folds: which fold (0-based) is the validation split", "data", at_least=0))
    max_train_samples: int | None = field(default=None, metadata=option(
        "use only this many training rows (stratified), for quick runs", "data", at_least=1))
    num_labels: int | None = field(default=None, metadata=option(
        "number of classes K; default: inferred as max(label)+1, and then every class needs a training row",
        "data", at_least=2))
    label_names: tuple[str, ...] = field(default=NSMC4_LABEL_NAMES, metadata=option(
        "comma-separated class names for reports, one per label 0..K-1", "data"))

    # preprocessing
    unicode_normalization: str = field(default=DEFAULT_NORMALIZATION, metadata=option(
        "Unicode normal form applied to every text", "preprocessing", choices=NORMALIZATIONS))
    max_char_repeat: int = field(default=DEFAULT_MAX_CHAR_REPEAT, metadata=option(
        "squash runs of one character longer than this (ㅋㅋㅋㅋㅋ, !!!!!); 0 = off", "preprocessing", at_least=0))
    special_patterns: tuple[str, ...] = field(default=DEFAULT_SPECIAL_PATTERNS, metadata=option(
        "comma-separated patterns replaced by special tokens (url, email, redacted); empty = none",
        "preprocessing", choices=tuple(SPECIAL_PATTERNS)))
    special_pattern_min_count: int = field(default=3, metadata=option(
        "a pattern becomes a special token only if it occurs this often in the training split",
        "preprocessing", at_least=0))
    num_rare_words_to_remove: int = field(default=0, metadata=option(
        "drop words seen at most N times in the training split (0 = off)", "preprocessing", at_least=0))
    max_length: str | int = field(default="auto", metadata=option(
        "token limit per text; auto = the --max-length-percentile of training lengths", "preprocessing",
        parse=_max_length, at_least=2, expects="'auto' or a whole number >= 2"))
    max_length_percentile: float = field(default=99.0, metadata=option(
        "percentile of training token lengths used by --max-length auto", "preprocessing", above=0, at_most=100))
    truncation: str = field(default="head", metadata=option(
        "which tokens a text longer than --max-length keeps: its head, its tail, or head+tail (Sun et al. 2019: "
        "the first --head-tokens and the rest from the end)", "preprocessing", choices=TRUNCATIONS))
    head_tokens: int | None = field(default=None, metadata=option(
        "--truncation head+tail: tokens kept from the start", "preprocessing",
        shown="a quarter of the tokens a text may keep", at_least=1))

    # model
    model: str = field(default="scratch:tiny", metadata=option(
        "hub id, local folder, or scratch:tiny|mini|small|medium|base (a BERT built here, offline)", "model"))
    dropout_rate: float | None = field(default=None, metadata=option(
        "hidden and attention dropout; default: the model's own", "model", at_least=0, below=1))
    scratch_vocab_size: int = field(default=SCRATCH_VOCAB_SIZE, metadata=option(
        "WordPiece vocabulary size for scratch: models, trained on the training split", "model", at_least=1))
    pooling: str = field(default="model", metadata=option(
        "classification head: model = the architecture's own (BERT: the pooler over [CLS]); cls, mean, max, "
        "attention (learned weights over tokens), weighted-layers (learned mix of every layer's [CLS]) or "
        "concat-last-4 ([CLS] of the last 4 layers); every head except model ignores padding", "model",
        choices=POOLINGS))
    multi_sample_dropout: int = field(default=1, metadata=option(
        "dropout samples averaged by the head during training (Inoue 2019); 1 = the usual single dropout",
        "model", at_least=1))
    reinit_top_layers: int = field(default=0, metadata=option(
        "re-initialise the top K encoder layers (and the pooler) with the model's own initialiser before "
        "fine-tuning (Zhang et al. 2021); 0 = off", "model", at_least=0))
    gradient_checkpointing: bool = field(default=False, metadata=option(
        "recompute activations in the backward pass (the model's own switch): less memory, more time", "model"))

    # optimisation
    learning_rate: float | None = field(default=None, metadata=option(
        "peak learning rate", "optimisation", shown=learning_rate_defaults(), aliases=("--lr",), above=0))
    layer_lr_decay: float | None = field(default=None, metadata=option(
        "layer-wise learning-rate decay (Sun et al. 2019): the top encoder layer gets the peak rate, each layer "
        "below it this times the one above, the embeddings last; off when not given", "optimisation",
        above=0, at_most=1))
    head_learning_rate: float | None = field(default=None, metadata=option(
        "learning rate of the classification head (and pooler); default: the peak learning rate",
        "optimisation", above=0))
    num_train_epochs: float = field(default=3.0, metadata=option(
        "number of epochs (a fraction trains part of the last one)", "optimisation", aliases=("--epochs",),
        above=0))
    per_device_train_batch_size: int = field(default=32, metadata=option(
        "training micro-batch size", "optimisation", aliases=("--batch-size",), at_least=1))
    per_device_eval_batch_size: int = field(default=256, metadata=option(
        "evaluation and prediction batch size in rows (on a CPU a batch also closes at 8192 tokens)", "optimisation",
        at_least=1))
    max_tokens_per_batch: int | None = field(default=None, metadata=option(
        "also cap each training micro-batch at this many padded tokens (rows x width), so short texts "
        "travel in larger batches", "optimisation", at_least=8))
    gradient_accumulation_steps: int = field(default=1, metadata=option(
        "micro-batches per optimizer step (the last partial group is averaged over its real size)",
        "optimisation", at_least=1))
    weight_decay: float = field(default=0.0, metadata=option(
        "AdamW weight decay; never applied to biases and LayerNorm weights (1-D tensors)", "optimisation",
        at_least=0))
    adam_beta1: float = field(default=0.9, metadata=option("AdamW beta1", "optimisation", at_least=0, below=1))
    adam_beta2: float = field(default=0.999, metadata=option("AdamW beta2", "optimisation", at_least=0, below=1))
    adam_epsilon: float = field(default=1e-8, metadata=option("AdamW epsilon", "optimisation", at_least=0))
    max_grad_norm: float = field(default=1.0, metadata=option(
        "clip the global gradient norm to this; 0 = no clipping (the norm is still logged)", "optimisation",
        at_least=0))
    lr_scheduler_type: str = field(default="linear", metadata=option(
        "learning-rate schedule (constant ignores warmup, as in transformers)", "optimisation",
        choices=SCHEDULERS))
    warmup_steps: int = field(default=0, metadata=option(
        "optimizer steps of linear warmup from 0", "optimisation", at_least=0))
    warmup_ratio: float | None = field(default=None, metadata=option(
        "warmup as a fraction of all optimizer steps (rounded up); used when --warmup-steps is 0",
        "optimisation", shown="0.06 for scratch: models, 0 for pretrained ones", at_least=0, below=1))

    # loss
    loss: str = field(default="auto", metadata=option(
        "ce or focal; auto = focal when --gamma > 0 or --alpha is set, else cross entropy", "loss",
        choices=LOSSES))
    focal_loss_gamma: float = field(default=0.0, metadata=option(
        "focal loss gamma (0 with no alpha is exactly cross entropy)", "loss", aliases=("--gamma",), at_least=0))
    focal_loss_alpha: str | tuple[float, ...] | None = field(default=None, metadata=option(
        "per-class focal weights: comma-separated, 'auto' (inverse training frequency) or 'none'", "loss",
        aliases=("--alpha",), parse=_alpha, at_least=0, expects="'auto', 'none' or comma-separated weights >= 0"))
    label_smoothing_factor: float = field(default=0.0, metadata=option(
        "label smoothing epsilon, combined with focal loss when both are set", "loss", at_least=0, below=1))

    rdrop_alpha: float = field(default=0.0, metadata=option(
        "R-Drop (Liang et al. 2021): two forward passes, plus alpha x their symmetric KL; 0 = off", "loss",
        at_least=0))
    adversarial: str = field(default="none", metadata=option(
        "adversarial training: fgm perturbs the word embeddings, awp the weights; none = off", "loss",
        choices=ADVERSARIAL))
    adv_epsilon: float | None = field(default=None, metadata=option(
        "--adversarial fgm: norm of the embedding perturbation", "loss", shown=f"{FGM_EPSILON:g}", above=0))
    awp_lr: float | None = field(default=None, metadata=option(
        "--adversarial awp: step size of the weight perturbation", "loss", shown=f"{AWP_LR:g}", above=0))
    awp_eps: float | None = field(default=None, metadata=option(
        "--adversarial awp: largest perturbation of a weight, relative to its size", "loss", shown=f"{AWP_EPS:g}",
        above=0))
    adv_start_epoch: float | None = field(default=None, metadata=option(
        "adversarial steps from this epoch on (0-based; a fraction starts inside an epoch)", "loss", shown="0",
        at_least=0))

    augment: str = field(default="none", metadata=option(
        "on-the-fly noise for training texts, per-unit probabilities, e.g. "
        "spacing=0.1,repeat=0.05,jamo=0.05,delete=0.05,swap=0.05 (never applied to validation or test)",
        "preprocessing"))

    # evaluation, selection, stopping
    eval_steps: int | None = field(default=None, metadata=option(
        "evaluate every N optimizer steps as well as at each epoch end", "evaluation", at_least=1))
    metric_for_best_model: str = field(default="loss", metadata=option(
        "validation metric that picks best/: loss, accuracy or macro_f1 (eval_ prefix accepted)",
        "evaluation", choices=SELECTION_METRICS + tuple("eval_" + name for name in SELECTION_METRICS)))
    early_stopping_patience: int | None = field(default=None, metadata=option(
        "stop after this many evaluations without a val-loss improvement; default: off", "evaluation",
        at_least=1))
    early_stopping_threshold: float = field(default=0.0, metadata=option(
        "a val-loss improvement must exceed this (absolute) to reset patience", "evaluation", at_least=0))
    max_loss_increase: float | None = field(default=None, metadata=option(
        "select only among checkpoints whose val loss is within this fraction of the lowest seen "
        "(with --metric-for-best-model accuracy: the best accuracy that has not over-fitted)", "evaluation",
        at_least=0))
    logging_steps: int = field(default=50, metadata=option(
        "log train/loss, lr and grad norm every N optimizer steps", "evaluation", at_least=1))

    # weight averaging
    swa_last_k: int = field(default=0, metadata=option(
        "after training, average the weights of K epoch ends into swa/ (0 = off); --swa-select says which",
        "averaging", at_least=0))
    swa_select: str = field(default="last", metadata=option(
        "which epoch ends --swa-last-k K averages: last = the last K; best = the K best by "
        "--metric-for-best-model among those --max-loss-increase admits; greedy = from the best one, add each "
        "next best only if the average scores better on validation", "averaging",
        choices=("last", "best", "greedy")))
    init_seed: int | None = field(default=None, metadata=option(
        "seed of the initial weights a run draws (a scratch: model, a new head, re-initialised layers); runs "
        "with one --init-seed and different --seed start from the same weights, so ensemble.py soup can "
        "average them", "model", shown="--seed"))
    swa_start: float | None = field(default=None, metadata=option(
        "average during training from this epoch on (1-based epoch, or a fraction of the epochs)", "averaging",
        above=0, expects="a 1-based epoch or a fraction in (0, 1)"))
    swa_lr: float | None = field(default=None, metadata=option(
        "with --swa-start: anneal the learning rate to this value from the start of averaging (SWALR)",
        "averaging", above=0))
    swa_anneal_steps: int | None = field(default=None, metadata=option(
        "with --swa-lr: optimizer steps of cosine annealing to it; default one epoch", "averaging", at_least=0))
    ema_decay: float | None = field(default=None, metadata=option(
        "keep an exponential moving average of the weights (decay per optimizer step, warmed up as timm does), "
        "evaluated beside them and saved as ema/; off when not given", "averaging", above=0, below=1))
    keep: str = field(default="auto", metadata=option(
        "model predict.py uses: best, swa, ema, or auto = the best of them by --metric-for-best-model",
        "averaging", choices=KEEP_CHOICES))

    # run
    seed: int = field(default=42, metadata=option("seed for the model init, dropout and batch order", "run"))
    precision: str = field(default="auto", metadata=option(
        "auto = bf16 on CUDA where supported (else fp16 + GradScaler); on a CPU bf16 with AMX for models at "
        "least 256 wide, else fp32", "run", choices=PRECISIONS))
    device: str = field(default="auto", metadata=option(DEVICE_FORMS, "run", parse=parse_device,
                                                        expects=DEVICE_FORMS))
    ddp_backend: str = field(default="auto", metadata=option(
        "process-group backend under torchrun: auto = nccl on CUDA, gloo on CPU", "run",
        choices=("auto", "gloo", "nccl")))
    compile: bool = field(default=False, metadata=option(
        "torch.compile the model for training (dynamic shapes); measured slower on 2 CPU cores, see docs/results.md",
        "run"))
    group_by_length: bool = field(default=True, metadata=option(
        "length-grouped training batches (dynamic padding is always on)", "run"))
    output_dir: str = field(default="runs", metadata=option("folder that holds run folders", "run"))
    cache_dir: str | None = field(default="cache", metadata=option(
        "folder caching tokenised splits and scratch tokenizers across runs (--no-cache: off)", "run"))
    run_name: str | None = field(default=None, metadata=option(
        "run folder name; default: <date>-<time>-<model>", "run"))
    report_to: tuple[str, ...] = field(default=("tensorboard",), metadata=option(
        "where metrics go besides metrics.jsonl: tensorboard, wandb (W&B under the HF Trainer's names; an "
        "optional extra: pip install -r requirements-wandb.txt), both comma-separated, or none", "run",
        parse=parse_report_to, choices=REPORT_TO, expects=REPORT_TO_EXPECTED))

    def __post_init__(self) -> None:
        check_fields(self)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Rules between fields; each field's own choices and range are checked from its metadata."""
        if self.num_folds is not None:
            if self.fold >= self.num_folds:
                raise UserError(f"--fold: expected a fold index in 0..{self.num_folds - 1}, got {self.fold!r}")
            if self.val_file:
                raise UserError("--num-folds and --val-file: give one of them, not both")
        if self.warmup_steps and self.warmup_ratio:
            raise UserError("--warmup-steps and --warmup-ratio: give one of them, not both")
        if self.loss == "ce" and (self.focal_loss_gamma > 0 or self.focal_loss_alpha is not None):
            raise UserError("--loss ce: --gamma and --alpha only apply to focal loss (use --loss focal)")
        if self.swa_start is not None and self.swa_last_k:
            raise UserError("--swa-start and --swa-last-k: average during training or after it, not both")
        if self.swa_select != "last" and not self.swa_last_k:
            raise UserError(f"--swa-select {self.swa_select}: needs --swa-last-k K, the most epoch ends to average")
        if self.swa_lr is not None and self.swa_start is None:
            raise UserError("--swa-lr: needs --swa-start")
        if self.keep == "swa" and not self.averages_weights:
            raise UserError("--keep swa: needs --swa-last-k or --swa-start")
        if self.keep == "ema" and self.ema_decay is None:
            raise UserError("--keep ema: needs --ema-decay")
        self._check_adversarial()
        if self.multi_sample_dropout > 1 and self.pooling == "model":
            raise UserError("--multi-sample-dropout: needs a pooling head of ours (--pooling cls, mean, ...); the "
                            "model's own head keeps its dropout inside")
        if self.head_tokens is not None and self.truncation != "head+tail":
            raise UserError("--head-tokens: only applies with --truncation head+tail")
        if self.model == CLASSICAL_MODEL:
            self._check_classical()
        parse_augment_spec(self.augment)
        if bool(self.unlabeled_file) != bool(self.teacher_logits):
            raise UserError("--unlabeled-file and --teacher-logits: give both (texts and their teacher's scores) "
                            "or neither")

    def _check_adversarial(self) -> None:
        given = {"fgm": ("adv_epsilon",), "awp": ("awp_lr", "awp_eps")}
        for kind, names in given.items():
            for name in names:
                if getattr(self, name) is not None and self.adversarial != kind:
                    raise UserError(f"--{name.replace('_', '-')}: only applies with --adversarial {kind}")
        if self.adv_start_epoch is not None and self.adversarial == "none":
            raise UserError("--adv-start-epoch: only applies with --adversarial fgm or awp")

    def _check_classical(self) -> None:
        """--model tfidf trains no network: options that only a neural model reads are refused."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        neural = ("pooling", "multi_sample_dropout", "reinit_top_layers", "gradient_checkpointing",
                  "layer_lr_decay", "head_learning_rate", "rdrop_alpha", "adversarial", "ema_decay", "swa_last_k",
                  "swa_start", "init_seed", "dropout_rate", "augment", "compile", "unlabeled_file",
                  "max_tokens_per_batch", "gradient_accumulation_steps", "learning_rate", "focal_loss_gamma",
                  "focal_loss_alpha", "label_smoothing_factor", "early_stopping_patience", "eval_steps")
        given = [name for name in neural if getattr(self, name) != defaults[name]]
        if given:
            raise UserError(f"--model {CLASSICAL_MODEL}: trains no neural network; "
                            f"{', '.join('--' + name.replace('_', '-') for name in given)} only apply to neural models")

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
        return cls(**coerce(cls, values, source, HELP_HINT))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path), source=str(path))


def option_names() -> set[str]:
    """Field names a config file, a sweep parameter or a flag may set."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


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
    values = coerce(TrainConfig, read_config_file(args.config), str(args.config), HELP_HINT) if args.config else {}
    values.update(options)
    return TrainInvocation(TrainConfig(**values), None, args.overwrite, args.quiet)
