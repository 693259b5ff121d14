"""Pre-tokenised texts, length-grouped batch order and dynamic padding.

Texts are tokenised once into integer arrays; a batch is padded only to its own longest row.
Training order is a pure function of (seed, epoch), so a resumed run can rebuild an epoch's
batches and skip the ones already done instead of storing sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

# HF's get_length_grouped_indices sorts within "megabatches" of this many batches.
MEGABATCH_BATCHES = 50
# On a CPU a prediction batch also closes at a token budget (rows x its padded width): at most
# CPU_PREDICTION_TOKENS, and fewer where the batch's widest activation (tokens x the widest layer output
# x bytes per value) would pass CPU_ACTIVATION_BYTES. Larger activations fall out of the caches and,
# above glibc's mmap threshold, are mapped afresh and page-faulted in at every batch. bench/levers.py
# predict-batching and interleaved passes in one process, fp32, against 8,192 tokens: scratch mini
# (4,096) 1.00x-1.11x, small (2,048) 1.10x, base (1,024) 1.35x-1.41x (once 0.87x in its noisiest
# cell); against 256-row batches, tiny and mini in fp32 and bf16 at 8,192: 1.02x-1.09x (16,384:
# 0.81x-0.89x). docs/results.md has the figures.
CPU_PREDICTION_TOKENS = 8192
CPU_ACTIVATION_BYTES = 16 * 2**20


@dataclass(frozen=True)
class EncodedTexts:
    """Token ids per row (without padding), with the labels when known, and how batches pad.

    `targets` (rows x classes probabilities) replaces the labels in training batches when some
    rows are distilled from a teacher (one-hot for the labelled rows).
    """

    input_ids: list[np.ndarray]
    labels: np.ndarray | None
    pad_token_id: int
    pad_to_multiple_of: int = 8  # see pad_multiple()
    targets: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)

    def retokenized(self, rows: np.ndarray, input_ids: list[np.ndarray]) -> "EncodedTexts":
        """`rows` with new token ids (of augmented texts) and their own labels and targets."""
        return EncodedTexts(input_ids, None if self.labels is None else self.labels[rows], self.pad_token_id,
                            self.pad_to_multiple_of, None if self.targets is None else self.targets[rows])


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], limit: int | None) -> list[np.ndarray]:
    """Token ids with special tokens, cut by the tokenizer at `limit` (the model's own maximum; None: whole).

    Texts are tokenised once at the model's limit; `truncate` then applies any shorter max length
    in numpy, so choosing `--max-length auto` and changing --max-length never tokenise again. Tail
    truncation needs the whole text, so it tokenises with no limit.
    """
    encoded = tokenizer(list(texts), truncation=limit is not None, max_length=limit, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    return [np.asarray(ids, dtype=np.int32) for ids in encoded]


def encode_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, truncation: str = "head",
               head_tokens: int | None = None) -> list[np.ndarray]:
    """Token ids of `texts`, each cut to `max_length` the way --truncation says."""
    if truncation == "head":
        return tokenize(tokenizer, texts, max_length)
    return truncate(tokenize(tokenizer, texts, None), max_length, trailing_special_tokens(tokenizer), truncation,
                    head_tokens, leading_special_tokens(tokenizer))


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
           labels: np.ndarray | None = None, pad_to_multiple_of: int = 8, truncation: str = "head",
           head_tokens: int | None = None) -> EncodedTexts:
    return EncodedTexts(encode_ids(tokenizer, texts, max_length, truncation, head_tokens), labels,
                        tokenizer.pad_token_id, pad_to_multiple_of)


def pad_multiple(device: torch.device, precision: str, compiled: bool) -> int:
    """What batch widths are rounded up to on this device.

    On CUDA tensor cores want multiples of 8; torch.compile and the CPU's bf16 (oneDNN) kernels pay a
    set-up cost per new shape, which rounding bounds. Eager fp32 on a CPU only pays for the extra
    tokens: with reviews of ~18 tokens, rounding to 8 made training 16% slower (bench/throughput.py),
    so there a batch pads to its longest row.
    """
    return 1 if device.type == "cpu" and precision == "fp32" and not compiled else 8


def _special_tokens_around_text(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(content)] == content)
    return start, len(full) - start - len(content)


def leading_special_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many special tokens the tokenizer puts before the text ([CLS] for BERT: 1)."""
    return _special_tokens_around_text(tokenizer)[0]


def trailing_special_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many special tokens the tokenizer appends after the text ([SEP] for BERT: 1)."""
    return _special_tokens_around_text(tokenizer)[1]


def truncate(ids: list[np.ndarray], max_length: int, trailing: int, how: str = "head",
             head_tokens: int | None = None, leading: int = 1) -> list[np.ndarray]:
    """Cut each row to `max_length` tokens, keeping its special tokens: `head` keeps the first text
    tokens (as the tokenizer would), `tail` the last ones, `head+tail` the first `head_tokens` (default
    a quarter of the text budget) and as many of the last as still fit (Sun et al. 2019)."""
    budget = max_length - leading - trailing
    head = {"head": budget, "tail": 0}.get(how, min(budget, head_tokens if head_tokens is not None else budget // 4))
    tail = budget - head

    def cut(row: np.ndarray) -> np.ndarray:
        end = len(row) - trailing
        return np.concatenate([row[:leading + head], row[end - tail:end], row[end:]])

    return [row if len(row) <= max_length else cut(row) for row in ids]


def save_ids(path: Path, ids: list[np.ndarray]) -> None:
    offsets = np.cumsum([0] + [len(row) for row in ids])
    np.savez(path, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)


def load_ids(path: Path) -> list[np.ndarray]:
    stored = np.load(path, allow_pickle=False)
    flat, offsets = stored["flat"], stored["offsets"]
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def collate(data: EncodedTexts, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Pad `rows` to their longest member, rounded up to `data.pad_to_multiple_of`.

    `rows` is returned too, to restore order after length-sorted evaluation.
    """
    width = padded_width(max(len(data.input_ids[i]) for i in rows), data.pad_to_multiple_of)
    input_ids = np.full((len(rows), width), data.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for out_row, i in enumerate(rows):
        ids = data.input_ids[i]
        input_ids[out_row, :len(ids)] = ids
        attention_mask[out_row, :len(ids)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
             "rows": torch.from_numpy(np.asarray(rows, dtype=np.int64))}
    if data.targets is not None:
        batch["labels"] = torch.from_numpy(data.targets[rows].astype(np.float32))
    elif data.labels is not None:
        batch["labels"] = torch.from_numpy(data.labels[rows].astype(np.int64))
    return batch


def padded_width(length: int, multiple: int) -> int:
    return -(-int(length) // multiple) * multiple


def training_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool,
                     max_tokens: int | None = None, pad_to_multiple_of: int = 8,
                     megabatch_batches: int = MEGABATCH_BATCHES) -> list[np.ndarray]:
    """The batches of one epoch, deterministic in (seed, epoch).

    With grouping: shuffle, sort by length within megabatches, cut into batches, shuffle the batch
    order (so neighbouring batches are not all long or all short) and put the longest batch first,
    so an out-of-memory error shows up at the first step rather than hours in. `max_tokens` also
    closes a batch before its padded size (rows x padded width) would exceed the budget, so short
    texts travel in larger batches.
    """
    generator = np.random.default_rng([seed, epoch])
    order = generator.permutation(len(lengths))
    if not group_by_length:
        return _cut(order, lengths, batch_size, max_tokens, pad_to_multiple_of)
    mega = batch_size * megabatch_batches
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        batches.extend(_cut(chunk[np.argsort(-lengths[chunk], kind="stable")], lengths, batch_size, max_tokens,
                            pad_to_multiple_of))
    batches = [batches[i] for i in generator.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda i: lengths[batches[i]].max())
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def _cut(order: np.ndarray, lengths: np.ndarray, batch_size: int, max_tokens: int | None,
         multiple: int) -> list[np.ndarray]:
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start, width = [], 0, 0
    for i, row in enumerate(order):
        new_width = max(width, padded_width(lengths[row], multiple))
        if i > start and (i - start >= batch_size or (i - start + 1) * new_width > max_tokens):
            batches.append(order[start:i])
            start, new_width = i, padded_width(lengths[row], multiple)
        width = new_width
    if start < len(order):
        batches.append(order[start:])
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None,
                   pad_to_multiple_of: int = 1) -> list[np.ndarray]:
    """Evaluation order: longest first, so padding is minimal and memory peaks at once. `max_tokens`
    also closes a batch before its rows x its longest (first) row, rounded up as `collate` pads it,
    would pass that many tokens."""
    order = np.argsort(-lengths, kind="stable")
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        width = max(1, padded_width(lengths[order[start]], pad_to_multiple_of))
        rows = min(batch_size, max(1, max_tokens // width))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def prediction_token_budget(device: torch.device, bytes_per_token: int) -> int | None:
    """Tokens per prediction batch on this device. On a CPU: the largest power of two up to
    CPU_PREDICTION_TOKENS whose widest activation (`bytes_per_token` each) fits CPU_ACTIVATION_BYTES;
    none on a GPU, where the row cap alone keeps the device busy."""
    if device.type != "cpu":
        return None
    fitting = max(1, CPU_ACTIVATION_BYTES // max(1, bytes_per_token))
    return min(CPU_PREDICTION_TOKENS, 1 << (fitting.bit_length() - 1))


def padding_efficiency(lengths: np.ndarray, batches: Sequence[np.ndarray]) -> float:
    """Real tokens / padded tokens over `batches`."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return real / padded if padded else 1.0
