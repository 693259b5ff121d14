"""Pretraining under torchrun: two CPU processes with gloo against one process with the same global batch."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

from lib.core.distributed import leave_process_group
from lib.data.mlm import read_texts
from lib.model.backbone import train_wordpiece
from lib.pretrain.trainer import pretrain_new, resume_pretraining
from tests.conftest import StopAtStep, tiny_pretrain_config
from tests.ranks import run_ranks

OVERRIDES = dict(max_steps=12, eval_steps=4, logging_steps=3, gradient_accumulation_steps=2)


@pytest.fixture(scope="module")
def still_init(tmp_path_factory, corpus) -> Path:
    """A tiny MLM without dropout: each process draws its own dropout masks, so only then are the runs equal."""
    folder = tmp_path_factory.mktemp("still-bert")
    tokenizer = train_wordpiece(read_texts([corpus["reviews"]]), 300, [], model_max_length=64)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(corpus, init, out, batch):
    return tiny_pretrain_config(corpus, init, out, per_device_train_batch_size=batch,
                                cache_dir=str(out.parent / "cache"), **OVERRIDES)


def _rank_main(rank: int, cfg, stop_step, resume_path) -> None:
    try:
        if resume_path is not None:
            resume_pretraining(resume_path)
        else:
            pretrain_new(cfg, stop=StopAtStep(stop_step) if stop_step else None)
    except Exception as error:
        if type(error).__name__ != "TrainingInterrupted":
            raise
    finally:
        leave_process_group()


def _launch(cfg=None, stop_step=None, resume_path=None) -> None:
    run_ranks(_rank_main, cfg, stop_step, resume_path)


def test_two_processes_pretrain_like_one_with_the_same_global_batch(corpus, still_init, tmp_path):
    single = pretrain_new(_config(corpus, still_init, tmp_path / "one" / "m", batch=8))
    _launch(_config(corpus, still_init, tmp_path / "two" / "m", batch=4))
    two = tmp_path / "two" / "m"
    one_result, two_result = (json.loads((f / "result.json").read_text()) for f in (single, two))
    assert two_result["world_size"] == 2 and one_result["world_size"] == 1
    for key in ("global_step", "tokens_seen", "masked_tokens_seen"):  # the same masks over the same rows
        assert two_result[key] == one_result[key]
    assert two_result["held_out"]["loss"] == pytest.approx(one_result["held_out"]["loss"], rel=1e-4)
    a, b = load_file(str(single / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)
    records = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (single, two)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]
    # the norm catches a gradient scaled by the number of processes, the loss a share counted twice
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in records[1] if key in r] == pytest.approx([r[key] for r in records[0] if key in r],
                                                                          rel=1e-3)


def test_an_interrupted_two_process_pretraining_resumes_to_the_same_weights(corpus, still_init, tmp_path):
    _launch(_config(corpus, still_init, tmp_path / "a" / "m", batch=4))
    _launch(_config(corpus, still_init, tmp_path / "b" / "m", batch=4), stop_step=6)
    unfinished = tmp_path / "b" / "m.incomplete"
    assert json.loads((unfinished / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    _launch(resume_path=unfinished)
    a, b = (load_file(str(tmp_path / run / "m" / "model.safetensors")) for run in ("a", "b"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
