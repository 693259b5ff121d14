"""Everything before the first pretraining step: texts, tokenizer and model, packed sequences, the plan.

The texts are normalised with fine-tuning's `TextPreprocessor`, exact duplicates are dropped (so
no held-out text is also trained on) and a seeded slice is held out. A new run trains a WordPiece
vocabulary and builds a scratch BERT (--preset) or loads --init; a resumed one loads both from its
folder. Under torchrun, rank 0 goes first through the cache, so every process gets the same
tokenizer (the WordPiece trainer breaks ties differently from one process to the next).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lib.core.cache import DiskCache, texts_digest, tokenizer_digest
from lib.core.device import training_precision
from lib.core.distributed import Distributed
from lib.core.errors import UserError
from lib.data.batching import EncodedTexts, load_ids, save_ids
from lib.data.mlm import IGNORE_INDEX, DynamicMasker, collate_mlm, encode_for_packing, pack_sequences, read_texts
from lib.data.preprocess import TextPreprocessor
from lib.model.backbone import SCRATCH_PRESETS, add_special_tokens, cached_wordpiece, load_tokenizer
from lib.model.mlm import load_mlm_model, scratch_mlm_model
from lib.pretrain.config import PretrainConfig
from lib.pretrain.plan import PretrainPlan, budgeted_steps, warmup_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Texts:
    train: list[str]  # in packing order, shuffled with the seed
    held_out: list[str]
    read: int
    duplicates: int


@dataclass
class Corpus:
    """The in-memory inputs of a pretraining run."""

    preprocessor: TextPreprocessor
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train: EncodedTexts
    held_out: list[dict[str, torch.Tensor]]  # masked once: every evaluation scores the same tokens
    masker: DynamicMasker


def prepare_new(cfg: PretrainConfig, ctx: Distributed, device: torch.device) -> tuple[Corpus, PretrainPlan]:
    """Read, normalise, split and tokenise the texts, build the model and choose the precision for it;
    raises UserError."""
    if ctx.enabled and not cfg.cache_dir:
        raise UserError("--no-cache: under torchrun the processes share the tokenizer through the cache; "
                        "give a --cache-dir")
    init_tokenizer = _init_tokenizer(cfg.init) if cfg.init is not None else None  # an unreachable hub id fails now
    raw = read_texts(cfg.texts, cfg.text_column)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns).fit(raw)
    texts = split_texts(preprocessor.transform(raw), cfg.eval_texts, cfg.seed)
    cache = DiskCache(Path(cfg.cache_dir) if cfg.cache_dir else None)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 fills the cache first
    tokenizer = init_tokenizer if init_tokenizer is not None else cached_wordpiece(
        cache, "mlm-wordpiece", texts.train, cfg.scratch_vocab_size, preprocessor.special_tokens)
    model = _build_model(cfg, tokenizer, preprocessor.special_tokens)
    corpus = _corpus(cfg, cache, preprocessor, tokenizer, model, texts)
    if ctx.is_main:
        ctx.barrier()
    return corpus, _make_plan(cfg, texts, corpus, device, training_precision(cfg.precision, device, model),
                              ctx.world_size)


def prepare_resumed(cfg: PretrainConfig, work: Path, checkpoint: Path, plan: PretrainPlan,
                    ctx: Distributed) -> Corpus:
    """The same inputs rebuilt from the folder: saved preprocessor and tokenizer, checkpointed weights."""
    preprocessor = TextPreprocessor.load(work / "preprocessor.json")
    texts = split_texts(preprocessor.transform(read_texts(cfg.texts, cfg.text_column)), cfg.eval_texts, cfg.seed)
    if texts_digest(texts.train) != plan.train_texts_sha256:
        raise UserError(f"--resume: the texts behind --texts changed since {work} started")
    cache = DiskCache(Path(cfg.cache_dir) if cfg.cache_dir else None)
    if not ctx.is_main:
        ctx.barrier()
    corpus = _corpus(cfg, cache, preprocessor, AutoTokenizer.from_pretrained(work), load_mlm_model(checkpoint), texts)
    if ctx.is_main:
        ctx.barrier()
    return corpus


def split_texts(texts: list[str], eval_texts: int, seed: int) -> Texts:
    """Drop exact duplicates (so no held-out text is also trained on), then hold out a seeded slice."""
    unique = list(dict.fromkeys(texts))
    if eval_texts >= len(unique):
        raise UserError(f"--eval-texts {eval_texts}: the texts hold only {len(unique)} distinct ones; "
                        "hold out fewer")
    order = np.random.default_rng(seed).permutation(len(unique))
    log.info("%d texts, %d exact duplicates dropped, %d held out", len(texts), len(texts) - len(unique), eval_texts)
    return Texts([unique[i] for i in order[eval_texts:]], [unique[i] for i in order[:eval_texts]],
                 len(texts), len(texts) - len(unique))


def _init_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = load_tokenizer(name_or_path)
    except UserError as error:  # its message names train.py's flag
        raise UserError(str(error).replace("--model", "--init", 1)) from None
    if tokenizer.mask_token_id is None:
        raise UserError(f"--init {name_or_path}: its tokenizer has no mask token; not a masked-language model")
    return tokenizer


def _build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase,
                 special_tokens: list[str]) -> PreTrainedModel:
    """The MLM model with the preprocessor's special tokens registered; initial weights from the seed."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = scratch_mlm_model(SCRATCH_PRESETS[cfg.preset], tokenizer) if cfg.init is None \
            else load_mlm_model(cfg.init)
        add_special_tokens(tokenizer, model, special_tokens)
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    if cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length}: {cfg.model_source} accepts at most {limit} tokens")
    return model


def _corpus(cfg: PretrainConfig, cache: DiskCache, preprocessor: TextPreprocessor,
            tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, texts: Texts) -> Corpus:
    masker = DynamicMasker.from_tokenizer(tokenizer, cfg.mlm_probability, cfg.whole_word_masking)
    train, held_out = _pack(cache, tokenizer, texts, cfg.max_length)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = cfg.per_device_eval_batch_size
    held_out_batches = [collate_mlm(held_out, np.arange(start, min(start + batch, len(held_out))), masker, generator)
                        for start in range(0, len(held_out), batch)]
    return Corpus(preprocessor, tokenizer, model, train, held_out_batches, masker)


def _pack(cache: DiskCache, tokenizer: PreTrainedTokenizerBase, texts: Texts,
          max_length: int) -> tuple[EncodedTexts, EncodedTexts]:
    """Token ids (from the cache when these texts met this tokenizer before), packed into sequences."""
    everything = texts.train + texts.held_out

    def build(folder: Path) -> None:
        started = time.perf_counter()
        save_ids(folder / "ids.npz", encode_for_packing(tokenizer, everything))
        log.info("tokenised %d texts in %.1f s", len(everything), time.perf_counter() - started)

    ids = cache.load_or_build("mlm-ids", {"texts": texts_digest(everything), "tokenizer": tokenizer_digest(tokenizer)},
                              build, lambda folder: load_ids(folder / "ids.npz"))
    split = len(texts.train)
    ends = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    return pack_sequences(ids[:split], max_length, *ends), pack_sequences(ids[split:], max_length, *ends)


def _make_plan(cfg: PretrainConfig, texts: Texts, corpus: Corpus, device: torch.device, precision: str,
               world_size: int) -> PretrainPlan:
    steps_per_epoch, total, budget = budgeted_steps(cfg, len(corpus.train), world_size)
    held_out = corpus.held_out
    return PretrainPlan(
        model_source=cfg.model_source, vocab_size=len(corpus.tokenizer),
        special_tokens=corpus.preprocessor.special_tokens, texts_read=texts.read, duplicates_removed=texts.duplicates,
        train_texts=len(texts.train), held_out_texts=len(texts.held_out), train_texts_sha256=texts_digest(texts.train),
        train_sequences=len(corpus.train), train_tokens_per_epoch=int(corpus.train.lengths.sum()),
        held_out_sequences=sum(len(batch["input_ids"]) for batch in held_out),
        held_out_masked_tokens=sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in held_out),
        learning_rate=cfg.peak_learning_rate, precision=precision, device=str(device),
        steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warmup_steps(cfg, total), budget=budget,
        seconds_per_step=None, world_size=world_size)
