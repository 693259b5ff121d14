"""backtranslate.py: a tiny random seq2seq model built here drives the whole pipeline; bad input is refused in one line."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

import backtranslate
from lib.core.cli import run_cli
from lib.data.backtranslate import select_paraphrases
from tests.conftest import CUES, FILLER, write_reviews

ROWS = 24


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Step-by-step decoding of a tiny model is all thread overhead: 40x slower with 2 threads on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translator(tmp_path_factory) -> Path:
    """A one-layer BART over the toy reviews' words, saved as a hub model is. Its output is junk, but junk
    whose words come from the reviews' vocabulary, which is all the pipeline needs."""
    folder = tmp_path_factory.mktemp("tiny-bart")
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    words = FILLER + [word for cue in CUES.values() for word in cue]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(special + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    config = BartConfig(vocab_size=len(special + words), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                        decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("bt-data") / "train.csv", ROWS, seed=5)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = run_cli(backtranslate.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _translate(capsys, translator: Path, reviews: Path, out: Path, *extra) -> tuple[int, int, int]:
    """Run a sampled back translation; return (rows in, rows written, dropped) from the summary line."""
    code, stdout, err = _run(capsys, "--train", reviews, "--forward", translator, "--backward", translator,
                             "--out", out, "--sample", "--max-new-tokens", 8, "--batch-size", 5, "--quiet", *extra)
    assert code == 0, err
    rows_in, written, dropped = re.search(r"(\d+) rows in, (\d+) rows written, (\d+) dropped", stdout).groups()
    return int(rows_in), int(written), int(dropped)


def test_paraphrases_keep_ids_and_labels(capsys, translator, reviews, tmp_path):
    source = pd.read_csv(reviews, dtype=str)
    rows_in, written, dropped = _translate(capsys, translator, reviews, tmp_path / "bt.csv", "--seed", 1)
    result = pd.read_csv(tmp_path / "bt.csv", dtype=str, keep_default_na=False)
    assert (rows_in, written) == (ROWS, len(result))
    assert 0 < written and written + dropped == ROWS
    assert list(result.columns) == ["ID", "review", "label"]
    assert result["ID"].str.endswith("_bt").all()
    by_id = source.set_index("ID")
    originals = by_id.loc[result["ID"].str.removesuffix("_bt")]
    assert (originals["label"].to_numpy() == result["label"].to_numpy()).all()
    assert (originals["review"].to_numpy() != result["review"].to_numpy()).all()
    assert (result["review"].str.strip() != "").all()


def test_seed_fixes_the_paraphrases(capsys, translator, reviews, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        torch.rand(7)  # the global random state differs between runs; only --seed may matter
        _translate(capsys, translator, reviews, tmp_path / f"{name}.csv", "--seed", seed)
        runs[name] = (tmp_path / f"{name}.csv").read_text(encoding="utf-8")
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    rows_in, written, dropped = _translate(capsys, translator, reviews, tmp_path / "d.csv", "--max-rows", 7)
    assert rows_in == 7 and written + dropped == 7


def test_select_paraphrases_drops_empty_and_unchanged():
    originals = ["좋은 영화", "최고", "", "별로 였다", "지루"]
    paraphrases = ["좋은  영화 ", "", "명작", "별로 였다 ㅋㅋ", "지루"]
    assert select_paraphrases(originals, paraphrases) == ([3], 2, 2)


def test_unreachable_model_fails_in_one_line(capsys, monkeypatch, translator, reviews, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bt.csv"
    code, stdout, err = _run(capsys, "--train", reviews, "--forward", translator,
                             "--backward", "no-such-org/no-such-translator", "--out", out)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: --backward no-such-org/no-such-translator: not a local folder")
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--text-column", "text"], "missing column 'text' (set --text-column)"),
    (["--max-rows", "0"], "--max-rows 0: must be at least 1"),
    (["--num-beams", "0"], "--num-beams 0: must be at least 1"),
    (["--train", "missing.csv"], "--train: file not found: missing.csv"),
])
def test_bad_input_fails_in_one_line(capsys, translator, reviews, tmp_path, extra, message):
    out = tmp_path / "bt.csv"
    code, stdout, err = _run(capsys, "--train", reviews, "--forward", translator, "--backward", translator,
                             "--out", out, *extra)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()


def test_output_cannot_replace_the_input(capsys, translator, reviews):
    before = reviews.read_bytes()
    code, _, err = _run(capsys, "--train", reviews, "--forward", translator, "--backward", translator,
                        "--out", reviews)
    assert code == 2 and "is the input file" in err and len(err.strip().splitlines()) == 1
    assert reviews.read_bytes() == before
