"""Masked-language-model data: pretraining texts, packed sequences, dynamic masking and its collate.

Reviews average under 20 tokens, so one review per sequence would spend most of a batch on padding;
`pack_sequences` puts several reviews into one `[CLS] a [SEP] b [SEP] ...` sequence instead. Masks
are drawn anew for every batch (dynamic masking, as RoBERTa) from an explicit `torch.Generator`;
`masking_generator(seed, epoch, batch)` makes them a pure function of those numbers, so a resumed
run masks exactly as an uninterrupted one. Nothing here knows about a training loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lib.core.errors import UserError
from lib.data.batching import EncodedTexts, collate
from lib.data.tables import read_frame

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross_entropy default)
CONTINUATION_PREFIX = "##"  # WordPiece marks a piece that continues the previous one
_ENCODE_CHUNK = 10_000  # texts per tokenizer call: bounds memory on half a million reviews


def read_texts(paths: Sequence[str | Path], column: str = "review") -> list[str]:
    """Non-empty texts of `column` from tables (any format `read_frame` reads), in file order, for pretraining."""
    texts: list[str] = []
    for path in map(Path, paths):
        frame, described = read_frame(path, "--texts")
        if column not in frame.columns:
            raise UserError(f"--texts {path}: no column {column!r} (set --text-column); the file has "
                            + ", ".join(map(repr, frame.columns)))
        column_texts = frame[column].fillna("").str.strip()
        kept = column_texts[column_texts != ""].tolist()
        log.info("%s: %s, %d texts (%d empty skipped)", path, described, len(kept), len(column_texts) - len(kept))
        texts.extend(kept)
    return texts


def encode_for_packing(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text without [CLS]/[SEP] and without truncation: packing adds and cuts."""
    encoded: list[np.ndarray] = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
        batch = tokenizer(list(texts[start:start + _ENCODE_CHUNK]), add_special_tokens=False,
                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        encoded.extend(np.asarray(ids, dtype=np.int32) for ids in batch)
    return encoded


def pack_sequences(token_ids: Sequence[np.ndarray], max_length: int, cls_id: int, sep_id: int,
                   pad_token_id: int) -> EncodedTexts:
    """Greedily pack reviews, in the given order, into `[CLS] a [SEP] b [SEP] ...` of at most `max_length`.

    Every token is kept: a review longer than `max_length - 2` becomes several segments of that size.
    A segment that does not fit in the current sequence starts the next one. Shuffle the reviews
    first if neighbours in the input are related (e.g. grouped by movie).
    """
    if max_length < 3:
        raise UserError(f"--max-length {max_length}: packing needs room for [CLS], a token and [SEP]")
    room = max_length - 2
    head, tail = np.asarray([cls_id], dtype=np.int32), np.asarray([sep_id], dtype=np.int32)
    sequences: list[np.ndarray] = []
    pieces, length = [head], 1
    for ids in token_ids:
        for start in range(0, len(ids), room):
            segment = np.asarray(ids[start:start + room], dtype=np.int32)
            if length + len(segment) + 1 > max_length:
                sequences.append(np.concatenate(pieces))
                pieces, length = [head], 1
            pieces += [segment, tail]
            length += len(segment) + 1
    if length > 1:
        sequences.append(np.concatenate(pieces))
    return EncodedTexts(sequences, None, pad_token_id)


def masking_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator for one batch's masks, derived from (seed, epoch, batch index) alone."""
    state = np.random.SeedSequence([seed, epoch, batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class DynamicMasker:
    """Pick `probability` of the ordinary tokens as targets: 80% become [MASK], 10% a random token, 10% stay.

    Special tokens ([CLS], [SEP], [PAD], added ones such as [URL]) are never picked nor used as random
    replacements. With a continuation table (whole-word masking) the pieces of one word are picked,
    and replaced, together: a word is a token plus the `##` pieces that follow it. Works on CPU
    tensors, inside the collate.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, special_ids: Sequence[int],
                 continuation: np.ndarray | None = None, probability: float = 0.15,
                 mask_fraction: float = 0.8, random_fraction: float = 0.1) -> None:
        if not 0 < probability < 1:
            raise UserError(f"--mlm-probability: expected a fraction in (0, 1), got {probability!r}")
        if not (0 <= mask_fraction and 0 <= random_fraction and mask_fraction + random_fraction <= 1):
            raise UserError(f"masking split {mask_fraction}/{random_fraction}: fractions must be >= 0 "
                            "and add up to at most 1")
        self.probability = probability
        self.mask_fraction = mask_fraction
        self.random_fraction = random_fraction
        self.mask_token_id = mask_token_id
        self.is_special = torch.zeros(vocab_size, dtype=torch.bool)
        self.is_special[list(special_ids)] = True
        self.replacements = torch.nonzero(~self.is_special).flatten()
        self.is_continuation = None if continuation is None else torch.as_tensor(continuation, dtype=torch.bool)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, probability: float = 0.15,
                       whole_word: bool = False) -> "DynamicMasker":
        continuation = None
        if whole_word:
            tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            continuation = np.array([str(t).startswith(CONTINUATION_PREFIX) for t in tokens], dtype=bool)
            if not continuation.any():
                raise UserError(f"--whole-word-masking: the tokenizer marks no word pieces with "
                                f"{CONTINUATION_PREFIX!r} (it is not WordPiece), so words cannot be found")
        return cls(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids, continuation, probability)

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked copy of `input_ids` and the labels: the original id where picked, -100 elsewhere."""
        special = self.is_special[input_ids]
        pick = torch.rand(input_ids.shape, generator=generator)
        how = torch.rand(input_ids.shape, generator=generator)
        random_ids = self.replacements[torch.randint(len(self.replacements), input_ids.shape, generator=generator)]
        if self.is_continuation is not None:
            # Every position reads the draws of its word's first token.
            starts = ~(self.is_continuation[input_ids] & ~special)
            word = torch.cumsum(starts.long(), dim=1) - 1
            pick, how = pick.gather(1, word), how.gather(1, word)
        picked = (pick < self.probability) & ~special
        labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        to_mask = picked & (how < self.mask_fraction)
        to_random = picked & (how >= self.mask_fraction) & (how < self.mask_fraction + self.random_fraction)
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
        return masked, labels


def collate_mlm(data: EncodedTexts, rows: np.ndarray, masker: DynamicMasker,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad packed sequences `rows` (to a multiple of 8) and mask them: `model(**batch)` returns the MLM loss."""
    batch = collate(data, rows)
    input_ids, labels = masker(batch["input_ids"], generator)
    return {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "labels": labels}
