"""Everything before the first training step: data, preprocessing, backbone, token ids and the plan.

A new run fits its preprocessor and builds (or loads) its backbone, and records what its initial
weights were (`initial_weights.json`: the model, the --init-seed and the digests of the backbone and
head), so that model soups can check their runs started alike; a resumed run loads both from its
folder. Under torchrun, rank 0 goes first through the cache so every process gets the same
tokenizer and initial weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lib.core.cache import DiskCache, texts_digest, tokenizer_digest
from lib.core.device import training_precision
from lib.core.distributed import Distributed
from lib.core.errors import UserError
from lib.core.files import existing_directory
from lib.data.batching import (EncodedTexts, leading_special_tokens, load_ids, pad_multiple, padded_width, save_ids,
                               tokenize, trailing_special_tokens, training_batches, truncate)
from lib.data.preprocess import TextPreprocessor
from lib.data.tables import class_distribution
from lib.finetune.config import TrainConfig
from lib.finetune.losses import auto_alpha
from lib.finetune.plan import TrainingPlan, default_learning_rate, step_counts
from lib.finetune.run_folder import RunFolder
from lib.finetune.splits import Splits, load_splits
from lib.loop import swa
from lib.model.backbone import (ScratchPreset, check_reachable, load_classifier, prepare_backbone, scratch_preset,
                                 weight_digests)
from lib.model.heads import head_for
from lib.model.reinit import reinit_top_layers

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The in-memory inputs of a run."""

    plan: TrainingPlan
    splits: Splits
    preprocessor: TextPreprocessor
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train_data: EncodedTexts
    val_data: EncodedTexts
    initial_weights: dict | None  # a new run's record of its initial weights (rank 0); None when resumed


@dataclass
class Session(Prepared):
    """Everything one run needs in memory: the prepared inputs, where they go, how to run."""

    cfg: TrainConfig
    run: RunFolder
    device: torch.device
    show_progress: bool
    ctx: Distributed

    @classmethod
    def of(cls, cfg: TrainConfig, run: RunFolder, prepared: Prepared, device: torch.device, show_progress: bool,
           ctx: Distributed) -> "Session":
        inputs = {f.name: getattr(prepared, f.name) for f in fields(Prepared)}
        inputs["model"] = prepared.model.to(device)
        return cls(cfg=cfg, run=run, device=device, show_progress=show_progress, ctx=ctx, **inputs)


def prepare_new(cfg: TrainConfig, ctx: Distributed, device: torch.device) -> Prepared:
    """Read and check the data, fit the preprocessor, build the backbone, choose the precision for it,
    tokenise, plan; raises UserError."""
    if ctx.enabled and not cfg.cache_dir:
        raise UserError("--no-cache: under torchrun the processes share the tokenizer through the cache; "
                        "give a --cache-dir")
    if scratch_preset(cfg.model) is None:
        check_reachable(cfg.model)  # before reading any data: an unreachable hub id fails in seconds
    splits = load_splits(cfg)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns,
                                    cfg.special_pattern_min_count, cfg.num_rare_words_to_remove)
    train_texts = preprocessor.fit(splits.training_texts).transform(splits.training_texts)
    val_texts = preprocessor.transform(splits.val.texts)
    cache = _cache(cfg)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 fills the cache first, so every rank gets the same tokenizer
    init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
    with torch.random.fork_rng():  # new weights (a head, re-initialised layers) come from the init seed alone
        torch.manual_seed(init_seed)
        tokenizer, model = prepare_backbone(cfg.model, train_texts, preprocessor.special_tokens, splits.num_labels,
                                            splits.label_names, cfg.dropout_rate, cfg.scratch_vocab_size, init_seed,
                                            cache, head_for(cfg.pooling, cfg.multi_sample_dropout))
        reinit_top_layers(model, cfg.reinit_top_layers)
    # hashing every weight takes a second for a base-sized model: only rank 0 writes the record
    initial_weights = {"model": cfg.model, "init_seed": init_seed, **weight_digests(model)} if ctx.is_main else None
    precision = training_precision(cfg.precision, device, model)
    limit = _model_limit(model)
    train_ids, val_ids = _tokenize_splits(cache, tokenizer, train_texts, val_texts, _tokenized_limit(cfg, limit))
    if ctx.is_main:
        ctx.barrier()
    max_length = _resolve_max_length(cfg, train_ids, limit)
    train_data, val_data = _truncated_splits(cfg, tokenizer, splits, train_ids, val_ids, max_length,
                                             pad_multiple(device, precision, cfg.compile))
    plan = _make_plan(cfg, splits, preprocessor, max_length, device, precision, ctx.world_size,
                      preset=scratch_preset(cfg.model),
                      micro_batches=_budget_micro_batches(cfg, train_data, ctx.world_size))
    if cfg.swa_start is not None:
        swa.start_epoch(cfg.swa_start, math.ceil(cfg.num_train_epochs))  # refuse a bad value before any folder
    return Prepared(plan, splits, preprocessor, tokenizer, model, train_data, val_data, initial_weights)


def prepare_resumed(cfg: TrainConfig, run: RunFolder, ctx: Distributed) -> Prepared:
    """The same inputs rebuilt from the run folder: saved plan, preprocessor, tokenizer, last weights."""
    plan = TrainingPlan.load(run.plan)
    splits = load_splits(cfg)
    if (splits.num_labels != plan.num_labels or len(splits.train) != sum(plan.train_class_counts)
            or splits.distilled_rows != plan.distilled_rows):
        sources = cfg.train_file + (f" and {cfg.unlabeled_file}" if cfg.unlabeled_file else "")
        raise UserError(f"--resume: the data behind {sources} changed since {run.path} started")
    preprocessor = TextPreprocessor.load(run.preprocessor)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    model = load_classifier(existing_directory(run.last), plan.num_labels, plan.label_names, None)
    if not ctx.is_main:
        ctx.barrier()
    train_ids, val_ids = _tokenize_splits(_cache(cfg), tokenizer, preprocessor.transform(splits.training_texts),
                                          preprocessor.transform(splits.val.texts),
                                          _tokenized_limit(cfg, _model_limit(model)))
    if ctx.is_main:
        ctx.barrier()
    train_data, val_data = _truncated_splits(cfg, tokenizer, splits, train_ids, val_ids, plan.max_length,
                                             pad_multiple(torch.device(plan.device), plan.precision, cfg.compile))
    return Prepared(plan, splits, preprocessor, tokenizer, model, train_data, val_data, None)


def _cache(cfg: TrainConfig) -> DiskCache:
    return DiskCache(Path(cfg.cache_dir) if cfg.cache_dir else None)


def _budget_micro_batches(cfg: TrainConfig, train_data: EncodedTexts, world_size: int) -> int | None:
    """With --max-tokens-per-batch, the first epoch's number of micro-batches (None without a budget)."""
    if cfg.max_tokens_per_batch is None:
        return None
    widest = padded_width(train_data.lengths.max(), train_data.pad_to_multiple_of)
    if cfg.max_tokens_per_batch < widest:
        raise UserError(f"--max-tokens-per-batch {cfg.max_tokens_per_batch}: the longest training text takes "
                        f"{widest} padded tokens; give at least {widest} or a smaller --max-length")
    return len(epoch_batches(cfg, train_data, 0, world_size))


def epoch_batches(cfg: TrainConfig, train_data: EncodedTexts, epoch: int, world_size: int) -> list[np.ndarray]:
    """Global micro-batches of one epoch: each process trains on its share of every one."""
    budget = cfg.max_tokens_per_batch * world_size if cfg.max_tokens_per_batch else None
    return training_batches(train_data.lengths, cfg.per_device_train_batch_size * world_size, cfg.seed, epoch,
                            cfg.group_by_length, budget, train_data.pad_to_multiple_of)


def _make_plan(cfg: TrainConfig, splits: Splits, preprocessor: TextPreprocessor, max_length: int,
               device: torch.device, precision: str, world_size: int, preset: ScratchPreset | None,
               micro_batches: int | None) -> TrainingPlan:
    train_counts = class_distribution(splits.train.labels, splits.num_labels)
    alpha = cfg.focal_loss_alpha
    if alpha == "auto":
        alpha = auto_alpha(train_counts)
    elif alpha is not None and len(alpha) != splits.num_labels:
        raise UserError(f"--alpha: {len(alpha)} weights given, expected one per class ({splits.num_labels})")
    micro, per_epoch, total, warmup = step_counts(cfg, len(splits.train) + splits.distilled_rows, world_size,
                                                  micro_batches, from_scratch=preset is not None)
    if cfg.lr_scheduler_type == "constant" and warmup:
        log.warning("--lr-scheduler-type constant ignores warmup (as in transformers); "
                    "use constant_with_warmup to warm up")
    return TrainingPlan(
        num_labels=splits.num_labels, label_names=list(splits.label_names), train_class_counts=train_counts,
        val_class_counts=class_distribution(splits.val.labels, splits.num_labels), max_length=max_length,
        learning_rate=default_learning_rate(cfg, preset), focal_alpha=list(alpha) if alpha else None,
        special_tokens=preprocessor.special_tokens, device=str(device), precision=precision,
        world_size=world_size, micro_batches_per_epoch=micro, steps_per_epoch=per_epoch, total_steps=total,
        warmup_steps=warmup, distilled_rows=splits.distilled_rows)


def _model_limit(model: PreTrainedModel) -> int:
    return getattr(model.config, "max_position_embeddings", None) or 512


def _tokenized_limit(cfg: TrainConfig, model_limit: int) -> int | None:
    """Where the tokenizer itself cuts: at the model's limit, or nowhere when a text keeps its tail."""
    return model_limit if cfg.truncation == "head" else None


def _tokenize_splits(cache: DiskCache, tokenizer: PreTrainedTokenizerBase, train_texts: list[str],
                     val_texts: list[str], limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids of both splits at the model's limit, from the cache when the same texts were seen."""
    def build(folder: Path) -> None:
        started = time.perf_counter()
        save_ids(folder / "train.npz", tokenize(tokenizer, train_texts, limit))
        save_ids(folder / "val.npz", tokenize(tokenizer, val_texts, limit))
        log.info("tokenised %d texts in %.1f s", len(train_texts) + len(val_texts), time.perf_counter() - started)

    description = {"train": texts_digest(train_texts), "val": texts_digest(val_texts),
                   "tokenizer": tokenizer_digest(tokenizer), "limit": limit}
    return cache.load_or_build("tokenized", description, build,
                               lambda folder: (load_ids(folder / "train.npz"), load_ids(folder / "val.npz")))


def _truncated_splits(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, splits: Splits,
                      train_ids: list[np.ndarray], val_ids: list[np.ndarray], max_length: int,
                      multiple: int) -> tuple[EncodedTexts, EncodedTexts]:
    cut = lambda ids: truncate(ids, max_length, trailing_special_tokens(tokenizer), cfg.truncation, cfg.head_tokens,
                               leading_special_tokens(tokenizer))
    return (EncodedTexts(cut(train_ids), splits.training_labels, tokenizer.pad_token_id, multiple,
                         splits.training_targets),
            EncodedTexts(cut(val_ids), splits.val.labels, tokenizer.pad_token_id, multiple))


def _resolve_max_length(cfg: TrainConfig, train_ids: list[np.ndarray], limit: int) -> int:
    if cfg.max_length != "auto":
        if cfg.max_length > limit:
            raise UserError(f"--max-length {cfg.max_length}: the model accepts at most {limit} tokens")
        return int(cfg.max_length)
    lengths = np.array([len(ids) for ids in train_ids])
    length = int(math.ceil(np.percentile(lengths, cfg.max_length_percentile) / 8) * 8)
    length = max(8, min(length, limit))
    log.info("max length %d tokens (p%g of training lengths; mean %.1f, longest %d)",
             length, cfg.max_length_percentile, float(lengths.mean()), lengths.max())
    return length
