"""Masked-LM data: packing keeps every token within the length, masking statistics, whole words, collate."""

import gzip

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lib.core.errors import UserError
from lib.data.mlm import (IGNORE_INDEX, DynamicMasker, collate_mlm, encode_for_packing, masking_generator,
                          pack_sequences, read_texts)
from lib.model.backbone import train_wordpiece

PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB = 1000


def random_packed_batch(rows: int, seed: int) -> torch.Tensor:
    """Rows of [CLS] ordinary tokens [SEP] ... with padding at the end, as collate_mlm sees them."""
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(5, VOCAB, size=(rows, 256)))
    ids[:, 0] = CLS
    ids[torch.from_numpy(rng.random((rows, 256)) < 0.05)] = SEP
    ids[:, 200:] = PAD
    return ids


def test_masking_rate_and_80_10_10_split():
    ids = random_packed_batch(128, seed=0)
    masker = DynamicMasker(VOCAB, MASK, [PAD, UNK, CLS, SEP, MASK])
    masked, labels = masker(ids, torch.Generator().manual_seed(0))
    special = ids < 5
    picked = labels != IGNORE_INDEX
    assert not (picked & special).any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(masked[~picked], ids[~picked])
    assert abs(picked.sum().item() / (~special).sum().item() - 0.15) < 0.01
    as_mask = (masked[picked] == MASK).float().mean().item()
    unchanged = (masked[picked] == ids[picked]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015
    assert abs(1 - as_mask - unchanged - 0.1) < 0.015  # random replacements (a few hit the same id by chance)
    assert (masked[picked & (masked != MASK)] >= 5).all()  # a random token is never a special one
    again, _ = masker(ids, torch.Generator().manual_seed(0))
    other, _ = masker(ids, torch.Generator().manual_seed(1))
    assert torch.equal(again, masked) and not torch.equal(other, masked)


def test_whole_word_masking_takes_every_piece_of_a_word():
    continuation = np.zeros(VOCAB, dtype=bool)
    continuation[500:] = True  # ids 500.. play the "##" pieces
    ids = random_packed_batch(128, seed=1)
    masker = DynamicMasker(VOCAB, MASK, [PAD, UNK, CLS, SEP, MASK], continuation=continuation)
    masked, labels = masker(ids, torch.Generator().manual_seed(2))
    picked = (labels != IGNORE_INDEX).numpy()
    is_piece = continuation[ids.numpy()] & (ids.numpy() >= 5)
    follows_word = np.zeros_like(is_piece)
    follows_word[:, 1:] = ids.numpy()[:, :-1] >= 5
    inner = is_piece & follows_word  # a piece whose word starts earlier in the row
    rows, cols = np.nonzero(inner)
    assert len(rows) > 1000
    assert (picked[rows, cols] == picked[rows, cols - 1]).all()
    assert ((masked.numpy()[rows, cols] == MASK) == (masked.numpy()[rows, cols - 1] == MASK)).all()
    ordinary = ids.numpy() >= 5
    assert abs(picked.sum() / ordinary.sum() - 0.15) < 0.015
    assert not picked[~ordinary].any()


def test_packing_keeps_every_token_and_respects_the_length():
    rng = np.random.default_rng(0)
    sizes = np.where(rng.random(400) < 0.05, rng.integers(60, 200, size=400), rng.integers(0, 30, size=400))
    reviews = [rng.integers(5, VOCAB, size=n).astype(np.int32) for n in sizes]
    packed = pack_sequences(reviews, max_length=64, cls_id=CLS, sep_id=SEP, pad_token_id=PAD)
    assert packed.lengths.max() <= 64 and len(packed) < len(reviews)
    assert all(seq[0] == CLS and seq[-1] == SEP for seq in packed.input_ids)
    kept = np.concatenate([seq[seq >= 5] for seq in packed.input_ids])
    assert np.array_equal(kept, np.concatenate(reviews))
    # Greedy: the next sequence's first segment would not have fitted in the previous one.
    for before, after in zip(packed.input_ids, packed.input_ids[1:]):
        first_segment = np.nonzero(after == SEP)[0][0]  # [CLS] + tokens
        assert len(before) + first_segment > 64
    with pytest.raises(UserError, match="--max-length"):
        pack_sequences(reviews, max_length=2, cls_id=CLS, sep_id=SEP, pad_token_id=PAD)


def test_collate_pads_and_masks_packed_sequences():
    reviews = [np.arange(5, 5 + n, dtype=np.int32) for n in (3, 40, 7, 12, 60, 2)]
    packed = pack_sequences(reviews, max_length=32, cls_id=CLS, sep_id=SEP, pad_token_id=PAD)
    masker = DynamicMasker(VOCAB, MASK, [PAD, UNK, CLS, SEP, MASK], probability=0.5)
    rows = np.arange(len(packed))
    batch = collate_mlm(packed, rows, masker, masking_generator(0, 0, 0))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["attention_mask"].sum(1).tolist() == packed.lengths.tolist()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["labels"] != IGNORE_INDEX).any()
    again = collate_mlm(packed, rows, masker, masking_generator(0, 0, 0))
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert not torch.equal(collate_mlm(packed, rows, masker, masking_generator(0, 0, 1))["labels"], batch["labels"])


def test_a_wordpiece_tokenizer_gives_specials_and_word_pieces():
    texts = ["진짜 재밌다 최고의 영화", "스토리가 너무 뻔해요", "배우들 연기는 좋았는데"] * 30
    tokenizer = train_wordpiece(texts, vocab_size=120, extra_special_tokens=["[URL]"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["[URL]"]})  # as lib.model.backbone does
    masker = DynamicMasker.from_tokenizer(tokenizer, whole_word=True)
    url = tokenizer.convert_tokens_to_ids("[URL]")
    assert masker.is_special[[tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, url]].all()
    assert masker.is_continuation.any() and url not in masker.replacements.tolist()
    encoded = encode_for_packing(tokenizer, texts[:3] + ["[URL] 재밌다"])
    assert all(CLS not in ids and tokenizer.cls_token_id not in ids for ids in encoded)
    assert encoded[3][0] == url
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "재밌다", "영화"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    no_pieces = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert DynamicMasker.from_tokenizer(no_pieces).is_continuation is None
    with pytest.raises(UserError, match="--whole-word-masking"):
        DynamicMasker.from_tokenizer(no_pieces, whole_word=True)


def test_read_texts_from_csv_and_gzip(tmp_path):
    plain = tmp_path / "a.csv"
    plain.write_text("ID,review\n1,좋다\n2,\n3,  별로  \n", encoding="utf-8")
    packed = tmp_path / "b.csv.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("ID,review,label\n9,최고,3\n")
    assert read_texts([plain, packed]) == ["좋다", "별로", "최고"]
    with pytest.raises(UserError, match="no column 'text'"):
        read_texts([plain], column="text")
    with pytest.raises(UserError, match="not found"):
        read_texts([tmp_path / "missing.csv"])
