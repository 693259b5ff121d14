"""Reading and splitting data, length-grouped batches, dynamic padding, AdamW groups."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lib.core.errors import UserError
from lib.data.batching import (CPU_ACTIVATION_BYTES, CPU_PREDICTION_TOKENS, EncodedTexts, collate,
                               padding_efficiency, prediction_token_budget, sorted_batches, training_batches)
from lib.finetune.evaluate import predict_logits, prediction_batches
from lib.model.layers import widest_linear
from lib.data.tables import Columns, read_table, stratified_sample, stratified_split
from lib.loop.optim import DecayByShape, build_adamw
from tests.conftest import write_reviews

COLUMNS = Columns("ID", "review", "label")


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    table = read_table(write_reviews(tmp_path / "t.csv", 400, seed=0), COLUMNS, labelled=True, flag="--train-file")
    train, val = stratified_split(table, 0.25, seed=3)
    again_train, again_val = stratified_split(table, 0.25, seed=3)
    assert list(val.ids) == list(again_val.ids)
    assert set(train.ids).isdisjoint(val.ids) and len(train) + len(val) == 400
    assert np.bincount(val.labels).tolist() == [25, 25, 25, 25]
    assert list(stratified_split(table, 0.25, seed=4)[1].ids) != list(val.ids)
    small = stratified_sample(train, 40, seed=0, flag="--max-train-samples")
    assert np.bincount(small.labels).tolist() == [10, 10, 10, 10]


def test_folds_cover_every_row_once(tmp_path):
    from lib.data.tables import stratified_fold

    table = read_table(write_reviews(tmp_path / "t.csv", 100, seed=0), COLUMNS, labelled=True, flag="--train-file")
    folds = [stratified_fold(table, 5, k, seed=1) for k in range(5)]
    val_ids = [i for _, val in folds for i in val.ids]
    assert sorted(val_ids) == sorted(table.ids)
    assert all(set(train.ids).isdisjoint(val.ids) for train, val in folds)
    assert all(np.bincount(val.labels).tolist() == [5, 5, 5, 5] for _, val in folds)


def test_test_file_without_id_column_is_refused(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("review\n좋다\n")
    with pytest.raises(UserError, match="missing column 'ID'.*--id-column"):
        read_table(path, COLUMNS, labelled=False, flag="--test")


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ID,review,label\na,x,0\na,y,1\n")
    with pytest.raises(UserError, match="repeats ids"):
        read_table(path, COLUMNS, labelled=True, flag="--train-file")


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).lognormal(3.0, 0.6, size=n).astype(np.int64) + 2


def test_training_batches_cover_every_row_once_and_depend_only_on_seed_and_epoch():
    lengths = _lengths()
    for group in (True, False):
        batches = training_batches(lengths, 32, seed=1, epoch=0, group_by_length=group)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        assert all(len(b) <= 32 for b in batches)
        again = training_batches(lengths, 32, seed=1, epoch=0, group_by_length=group)
        assert all((a == b).all() for a, b in zip(batches, again))
        other = training_batches(lengths, 32, seed=1, epoch=1, group_by_length=group)
        assert any((a != b).any() for a, b in zip(batches, other) if len(a) == len(b))


def test_grouping_by_length_cuts_padding_and_puts_the_longest_batch_first():
    lengths = _lengths()
    grouped = training_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    shuffled = training_batches(lengths, 32, seed=1, epoch=0, group_by_length=False)
    assert padding_efficiency(lengths, grouped) > 0.9 > padding_efficiency(lengths, shuffled)
    assert lengths[grouped[0]].max() == lengths.max()
    assert padding_efficiency(lengths, sorted_batches(lengths, 32)) >= padding_efficiency(lengths, grouped)


def test_prediction_batches_by_a_token_budget_hold_every_row_once_longest_first_within_both_caps():
    lengths = np.random.default_rng(0).integers(3, 90, size=500)
    batches = sorted_batches(lengths, 64, max_tokens=1000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(rows) <= 64 and len(rows) * lengths[rows].max() <= 1000 for rows in batches)
    assert max(len(rows) for rows in batches) == 64  # short rows reach the row cap
    widths = [lengths[rows].max() for rows in batches]
    assert widths == sorted(widths, reverse=True)
    assert len(sorted_batches(np.array([5000, 3]), 64, max_tokens=1000)[0]) == 1  # a row above the budget alone


def test_a_token_budget_counts_each_batch_at_its_padded_width():
    lengths = np.array([33, 33, 33, 33, 9])
    assert [len(b) for b in sorted_batches(lengths, 64, max_tokens=132)] == [4, 1]
    assert [len(b) for b in sorted_batches(lengths, 64, max_tokens=132, pad_to_multiple_of=8)] == [3, 2]  # 40 wide


@pytest.mark.parametrize("bytes_per_token, tokens", [
    (512 * 4, 8192),  # scratch:tiny in fp32: 16 MiB fit, the cap holds
    (1024 * 4, 4096),  # mini in fp32
    (1024 * 2, 8192),  # mini in bf16
    (3072 * 4, 1024),  # BERT-base in fp32: 1,365 fit, rounded down to a power of two
    (3072 * 2, 2048),
    (CPU_ACTIVATION_BYTES * 2, 1),  # wider than the whole budget: one token, so a row at a time
])
def test_a_cpu_budget_keeps_the_widest_activation_within_its_bytes_and_a_gpu_has_none(bytes_per_token, tokens):
    assert prediction_token_budget(torch.device("cpu"), bytes_per_token) == tokens
    assert tokens * bytes_per_token <= CPU_ACTIVATION_BYTES or tokens == 1
    assert tokens <= CPU_PREDICTION_TOKENS
    assert prediction_token_budget(torch.device("cuda", 0), bytes_per_token) is None


def test_prediction_batches_are_sized_by_the_models_widest_layer_and_precision():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=2 ** 18, num_labels=3))
    assert widest_linear(model) == 2 ** 18  # the feed-forward's inner layer, not the hidden size or the head
    data = EncodedTexts([np.arange(1, 2 + i % 7) for i in range(40)], np.zeros(40, dtype=int), pad_token_id=0,
                        pad_to_multiple_of=4)
    for precision, tokens in (("fp32", 16), ("bf16", 32)):  # 16 MiB over 1 MiB or 512 KiB per token
        batches = prediction_batches(model, data, 32, precision, torch.device("cpu"))
        assert sorted(np.concatenate(batches).tolist()) == list(range(40))
        assert all(len(b) * -(-data.lengths[b].max() // 4) * 4 <= tokens for b in batches)
        assert max(len(b) for b in batches) == tokens // 4  # the shortest rows fill it, at 4 wide
    assert [len(b) for b in prediction_batches(model, data, 32, "fp32", torch.device("cuda"))] == [32, 8]
    logits = predict_logits(model, data, 32, "fp32", torch.device("cpu"), "eval", False)  # many small batches
    model.eval()
    with torch.inference_mode():
        whole = model(**{k: v for k, v in collate(data, np.arange(40)).items() if k in ("input_ids", "attention_mask")})
    np.testing.assert_allclose(logits, whole.logits.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("multiple, width", [(8, 8), (1, 6)])
def test_collate_pads_to_the_longest_row_rounded_up_and_masks_the_padding(multiple, width):
    data = EncodedTexts([np.array([2, 5, 3]), np.array([2, 6, 7, 8, 9, 3])], np.array([1, 0]), pad_token_id=0,
                        pad_to_multiple_of=multiple)
    batch = collate(data, np.array([1, 0]))
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][1].tolist() == [2, 5, 3] + [0] * (width - 3)
    assert batch["attention_mask"].sum(1).tolist() == [6, 3]
    assert batch["labels"].tolist() == [0, 1] and batch["rows"].tolist() == [1, 0]


def test_only_eager_fp32_on_a_cpu_pads_to_the_exact_longest_row():
    import torch

    from lib.data.batching import pad_multiple

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pad_multiple(cpu, "fp32", compiled=False) == 1
    assert pad_multiple(cpu, "bf16", compiled=False) == pad_multiple(cpu, "fp32", compiled=True) == 8
    assert pad_multiple(cuda, "fp32", compiled=False) == pad_multiple(cuda, "bf16", compiled=False) == 8


def test_weight_decay_groups_match_the_hf_trainer():
    from transformers.trainer_pt_utils import get_parameter_names

    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16))
    optimizer = build_adamw(model, DecayByShape(1e-3, 0.01), (0.9, 0.999), 1e-8, fused=False)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in optimizer.param_groups[0]["params"]}
    import torch
    hf_decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    assert decayed == hf_decay
    assert "bert.embeddings.word_embeddings.weight" in decayed
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_token_budget_caps_padded_tokens_and_lets_short_texts_fill_larger_batches():
    from lib.data.batching import padded_width

    lengths = _lengths()
    batches = training_batches(lengths, 64, seed=2, epoch=0, group_by_length=True, max_tokens=512)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 64 and (len(b) == 1 or len(b) * padded_width(lengths[b].max(), 8) <= 512) for b in batches)
    sizes = {padded_width(lengths[b].max(), 8): len(b) for b in batches}
    assert sizes[min(sizes)] > sizes[max(sizes)]


def test_the_validation_split_follows_split_seed_not_seed(toy_data, tmp_path):
    from lib.finetune.splits import load_splits
    from tests.conftest import tiny_config

    ids = lambda **kw: list(load_splits(tiny_config(toy_data, tmp_path, **kw)).val.ids)
    assert ids(seed=1) == ids(seed=2)
    assert ids(split_seed=1) != ids(split_seed=2)


def test_augmented_rows_join_training_only_when_their_source_row_is_there(toy_data, tmp_path):
    """A paraphrase of a validation review must never reach training, and originals are not doubled."""
    import pandas as pd

    from lib.finetune.splits import load_splits
    from tests.conftest import tiny_config

    frame = pd.read_csv(toy_data["train"])
    derived = pd.concat([frame, frame.assign(ID=frame.ID + "_bt", review=frame.review + " 번역")])
    derived.to_csv(tmp_path / "bt.csv", index=False)
    plain = load_splits(tiny_config(toy_data, tmp_path))
    splits = load_splits(tiny_config(toy_data, tmp_path, augmented_train_file=str(tmp_path / "bt.csv")))

    assert list(splits.val.ids) == list(plain.val.ids)
    added = list(splits.train.ids[len(plain.train):])
    assert sorted(added) == sorted(f"{i}_bt" for i in plain.train.ids)
    by_id = dict(zip(frame.ID + "_bt", frame.label))
    assert [by_id[i] for i in added] == splits.train.labels[len(plain.train):].tolist()


def test_an_augmented_file_unrelated_to_the_training_rows_is_refused(toy_data, tmp_path):
    from lib.finetune.splits import load_splits
    from tests.conftest import tiny_config

    other = write_reviews(tmp_path / "other.csv", 20, seed=3, prefix="X")
    with pytest.raises(UserError, match="--augmented-train-file .*other.csv: no row"):
        load_splits(tiny_config(toy_data, tmp_path, augmented_train_file=str(other)))
