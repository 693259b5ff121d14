"""Tokenizer and classification model: from the hub, from a local folder, or built here offline.

Every model goes through `AutoTokenizer` and `load_classifier`, which asks a head
(`lib.model.heads`) for the classifier: the model's own `AutoModelForSequenceClassification`, or a
pooling head read back from a saved folder's config. A `scratch:` preset is a small BERT whose
WordPiece tokenizer is trained on the training split; it is saved with `save_pretrained` and loaded
back through the same path, so a scratch run and a `klue/bert-base` run differ only in where the
folder came from.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoConfig, AutoTokenizer, BertConfig, BertForSequenceClassification, PreTrainedModel,
                          PreTrainedTokenizerBase, PreTrainedTokenizerFast)

from lib.core.cache import DiskCache, texts_digest, tokenizer_digest
from lib.core.errors import UserError
from lib.core.hub import first_line, hub_endpoint, loadable
from lib.model.heads import ClassifierHead, ModelOwnHead, PooledHead, saved_head

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "scratch:"


@dataclass(frozen=True)
class ScratchPreset:
    """BERT sizes named as in Google's BERT miniatures (Turc et al. 2019)."""

    layers: int
    hidden: int
    heads: int
    learning_rate: float  # fine-tuning default from random weights; larger models need smaller steps

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


SCRATCH_PRESETS = {
    # tiny and mini measured on NSMC-4 (mini stalls at the class prior with 1e-3); the larger ones scaled down.
    # base has BERT-base's shape (klue/bert-base's too): what a GPU benchmark measures without a hub.
    "tiny": ScratchPreset(layers=2, hidden=128, heads=2, learning_rate=1e-3),
    "mini": ScratchPreset(layers=4, hidden=256, heads=4, learning_rate=3e-4),
    "small": ScratchPreset(layers=4, hidden=512, heads=8, learning_rate=2e-4),
    "medium": ScratchPreset(layers=8, hidden=512, heads=8, learning_rate=1e-4),
    "base": ScratchPreset(layers=12, hidden=768, heads=12, learning_rate=5e-5),
}
# Peak learning rates when none is given. Weights that exist (a hub or local model) get the HF
# Trainer's default; random weights get a preset's own for fine-tuning, and one rate for MLM pretraining.
PRETRAINED_LEARNING_RATE = 5e-5
SCRATCH_MLM_LEARNING_RATE = 5e-4
SCRATCH_VOCAB_SIZE = 12000  # WordPiece vocabulary of a scratch preset, for fine-tuning and pretraining
BASE_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Config keys that hold dropout probabilities in the common encoder families.
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def scratch_preset(model: str) -> ScratchPreset | None:
    if not model.startswith(SCRATCH_PREFIX):
        return None
    name = model[len(SCRATCH_PREFIX):]
    if name not in SCRATCH_PRESETS:
        raise UserError(f"--model {model}: unknown preset; expected one of "
                        + ", ".join(SCRATCH_PREFIX + p for p in SCRATCH_PRESETS))
    return SCRATCH_PRESETS[name]


def learning_rate_for(preset: ScratchPreset | None, *, mlm: bool = False) -> float:
    """The default peak learning rate of weights that start from `preset` (None: a pretrained model),
    for fine-tuning or for masked-language-model pretraining (`mlm`)."""
    if preset is None:
        return PRETRAINED_LEARNING_RATE
    return SCRATCH_MLM_LEARNING_RATE if mlm else preset.learning_rate


def learning_rate_defaults(mlm: bool = False) -> str:
    """The defaults of `learning_rate_for` in words, for --help."""
    if mlm:
        return f"{_short(SCRATCH_MLM_LEARNING_RATE)} with --preset, {_short(PRETRAINED_LEARNING_RATE)} with --init"
    presets = ", ".join(f"{name} {_short(preset.learning_rate)}" for name, preset in SCRATCH_PRESETS.items())
    return f"{_short(PRETRAINED_LEARNING_RATE)} for pretrained models; a scratch: preset's own: {presets}"


def _short(rate: float) -> str:
    """1e-3, 2.5e-4: a learning rate as people write it."""
    mantissa, exponent = f"{rate:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def train_wordpiece(texts: Sequence[str], vocab_size: int, extra_special_tokens: Sequence[str],
                    model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A cased WordPiece tokenizer (no accent stripping, which would split Hangul into jamo).

    The `tokenizers` trainer numbers tokens in hash-map order, so two trainings on the same texts
    give the same tokens under different ids; the vocabulary is renumbered (special tokens first,
    then sorted) so that ids depend only on the tokens. Ties in merge counts at the very end of a
    large vocabulary can still differ between trainings; the cache reuses the first one.
    """
    special = BASE_SPECIAL_TOKENS + [t for t in extra_special_tokens if t not in BASE_SPECIAL_TOKENS]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special,
                                        show_progress=False)
    tokenizer = _wordpiece_pipeline(models.WordPiece(unk_token="[UNK]"))
    tokenizer.train_from_iterator(texts, trainer)
    learned = sorted(set(tokenizer.get_vocab()) - set(special))
    tokenizer = _wordpiece_pipeline(models.WordPiece(
        vocab={token: i for i, token in enumerate(special + learned)}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(special)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length)


def _wordpiece_pipeline(model: models.WordPiece) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def scratch_config(preset: ScratchPreset, tokenizer: PreTrainedTokenizerBase, **extra) -> BertConfig:
    """The BERT config of `preset` for `tokenizer`: one shape for scratch classifiers and MLM models."""
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden, num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads, intermediate_size=preset.intermediate,
        max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id, **extra)


def cached_wordpiece(cache: DiskCache, kind: str, texts: Sequence[str], vocab_size: int,
                     special_tokens: Sequence[str]) -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer trained on `texts`, or the cached one trained on the same texts before.

    The cache also keeps processes alike: the trainer breaks ties between equally frequent merges
    differently in each process, so a tokenizer is trained once and loaded everywhere else.
    """
    def build(folder: Path) -> None:
        started = time.perf_counter()
        train_wordpiece(texts, vocab_size, special_tokens).save_pretrained(folder)
        log.info("trained a %d-token WordPiece vocabulary on %d texts in %.1f s", vocab_size, len(texts),
                 time.perf_counter() - started)

    description = {"texts": texts_digest(texts), "vocab_size": vocab_size, "special_tokens": list(special_tokens)}
    return cache.load_or_build(kind, description, build, AutoTokenizer.from_pretrained)


def build_scratch_folder(preset: ScratchPreset, tokenizer: PreTrainedTokenizerBase, folder: Path, num_labels: int,
                         seed: int) -> None:
    """Save a BERT of `preset`, initialised from `seed`, and its tokenizer, laid out as a hub model is."""
    config = scratch_config(preset, tokenizer, num_labels=num_labels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer; offline and uncached hub ids fail at once with one line."""
    check_reachable(str(name_or_path))
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {name_or_path}: cannot load its tokenizer ({first_line(error)})") from None


def load_classifier(name_or_path: str | Path, num_labels: int, label_names: Sequence[str],
                    dropout: float | None, head: ClassifierHead = ModelOwnHead()) -> PreTrainedModel:
    """Load a sequence classifier with our label maps, optional dropout override and `head`.

    A folder saved from a pooling head (`PooledClassifier`) says so in its config and loads with that
    head whatever `head` is: prediction, averaging and resume pass none.
    """
    check_reachable(str(name_or_path))
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {name_or_path}: cannot load its config ({first_line(error)})") from None
    saved = saved_head(config)
    if saved is not None:
        if isinstance(head, PooledHead) and head != saved:
            log.warning("%s was saved with --pooling %s --multi-sample-dropout %d; loading it with that head",
                        name_or_path, saved.pooling, saved.dropout_samples)
        head = saved
    config.num_labels = num_labels
    config.id2label = {i: name for i, name in enumerate(label_names)}
    config.label2id = {name: i for i, name in enumerate(label_names)}
    if dropout is not None:
        keys = [key for key in _DROPOUT_KEYS if hasattr(config, key)]
        if not keys:
            raise UserError(f"--dropout-rate: model {name_or_path} has no known dropout setting")
        for key in keys:
            setattr(config, key, dropout)
    try:
        return head.from_pretrained(name_or_path, config)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {name_or_path}: cannot load its weights ({first_line(error)})") from None


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, tokens: Sequence[str]) -> int:
    """Register the preprocessor's tokens as atomic and grow the embeddings if the vocabulary grew.

    New rows start at the mean of the existing ones, drawn from no seed: every run of one model with
    one preprocessor starts from the same weights, whatever its --seed (what a model soup needs).
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)}) if tokens else 0
    known = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > known:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            rows = model.get_input_embeddings().weight
            rows[known:] = rows[:known].mean(dim=0)
    return added


def prepare_backbone(model_name: str, train_texts: Sequence[str], special_tokens: Sequence[str],
                     num_labels: int, label_names: Sequence[str], dropout: float | None,
                     scratch_vocab_size: int, seed: int, cache: DiskCache, head: ClassifierHead = ModelOwnHead()
                     ) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and model for a new run.

    A scratch model's tokenizer and initial weights are cache entries (keyed by the training texts,
    the preset and the seed), loaded through `from_pretrained` like a hub model; under torchrun every
    process loads the same folder, which rank 0 wrote.
    """
    preset = scratch_preset(model_name)
    if preset is None:
        tokenizer = load_tokenizer(model_name)
        model = load_classifier(model_name, num_labels, label_names, dropout, head)
    else:
        wordpiece = cached_wordpiece(cache, "wordpiece", train_texts, scratch_vocab_size, special_tokens)
        tokenizer, model = cache.load_or_build(
            "scratch-init", {"tokenizer": tokenizer_digest(wordpiece), "preset": model_name,
                             "num_labels": num_labels, "seed": seed},
            lambda folder: build_scratch_folder(preset, wordpiece, folder, num_labels, seed),
            lambda folder: (load_tokenizer(folder), load_classifier(folder, num_labels, label_names, dropout, head)))
    add_special_tokens(tokenizer, model, special_tokens)
    return tokenizer, model


def weight_digests(model: PreTrainedModel) -> dict[str, str]:
    """sha256 of the backbone's weights and of the rest (the classification head), apart.

    Two runs whose backbones start from the same digest started from the same model, whatever seed
    drew their new head: their fine-tuned weights can be averaged (a model soup). The backbone is the
    model's `base_model_prefix` module (`bert.`, `backbone.` of a pooling head); its buffers count.
    """
    prefix = model.base_model_prefix + "."
    digests = {"backbone": hashlib.sha256(), "head": hashlib.sha256()}
    for name, tensor in sorted(model.state_dict().items()):
        part = digests["backbone" if name.startswith(prefix) else "head"]
        part.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        part.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {f"{part}_sha256": digest.hexdigest() for part, digest in digests.items()}


def check_reachable(name_or_path: str) -> None:
    """Fail fast, without the hub client's minute of retries, when a hub id cannot be fetched."""
    if not loadable(name_or_path):
        raise UserError(f"--model {name_or_path}: not a local folder, not in the Hugging Face cache, and "
                        f"{hub_endpoint()} cannot be reached; pass a local model folder or a scratch preset "
                        f"({', '.join(SCRATCH_PREFIX + p for p in SCRATCH_PRESETS)})")
