"""pretrain.py: a tiny MLM run learns, its folder fine-tunes through train.py, resume is exact, bad input is refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM

import pretrain
from lib.core.cli import run_cli
from lib.data.mlm import DynamicMasker, collate_mlm, pack_sequences, read_texts
from lib.finetune.trainer import train_new
from lib.loop.schedule import lr_multiplier
from lib.loop.stop import TrainingInterrupted
from lib.model.attention import INTEGER_DROPOUT_ATTENTION
from lib.model.backbone import add_special_tokens, train_wordpiece
from lib.model.mlm import masked_logits
from lib.pretrain import trainer as pretrainer
from lib.pretrain.config import PretrainConfig
from lib.pretrain.plan import steps_for_budget
from lib.pretrain.trainer import pretrain_new, resume_pretraining
from tests.conftest import StopAtStep, tiny_config, tiny_pretrain_config

@pytest.fixture(scope="module")
def tiny_init(corpus, toy_data, tmp_path_factory) -> Path:
    """A tiny BERT with an MLM head, built here and saved as a hub model would be: the --init path."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_wordpiece(read_texts([corpus["reviews"], toy_data["train"]]), 300, [], model_max_length=64)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(corpus, tiny_init, tmp_path_factory) -> Path:
    return pretrain_new(tiny_pretrain_config(corpus, tiny_init, tmp_path_factory.mktemp("models") / "tapt"))


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_tiny_mlm_run_lowers_its_held_out_loss(pretrained):
    result = json.loads((pretrained / "result.json").read_text())
    assert result["global_step"] == 40 and result["stopped_by"] == "max_steps"
    assert result["held_out"]["loss"] < result["initial_held_out"]["loss"] - 1.0
    assert result["held_out"]["accuracy"] > result["initial_held_out"]["accuracy"]
    held_out = [r for r in _records(pretrained) if r["split"] == "val"]
    assert [r["step"] for r in held_out] == [0, 20, 40]
    assert held_out[0]["loss"] > held_out[1]["loss"] > held_out[2]["loss"]
    assert result["tokens_seen"] > 0 and result["tokens_per_second"] > 0


def test_the_output_folder_is_a_model_folder_with_its_run_records(pretrained, corpus, tiny_init):
    names = {p.name for p in pretrained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "pretrain_config.json",
            "plan.json", "environment.json", "preprocessor.json", "metrics.jsonl", "tensorboard", "result.json",
            "pretrain.log"} <= names
    assert "checkpoint" not in names and not pretrained.with_name("tapt.incomplete").exists()
    assert PretrainConfig.load(pretrained / "pretrain_config.json") == tiny_pretrain_config(corpus, tiny_init,
                                                                                            pretrained)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(pretrained / "tensorboard")).Reload().Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "val/loss",
            "val/accuracy"} <= tags


def test_only_the_classifier_is_new_when_loaded_for_sequence_classification(pretrained):
    model, info = AutoModelForSequenceClassification.from_pretrained(pretrained, num_labels=4,
                                                                     output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["mismatched_keys"]
    saved = load_file(str(pretrained / "model.safetensors"))
    for name, tensor in model.bert.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"bert.{name}"], rtol=0, atol=0)


def test_train_py_fine_tunes_the_pretrained_folder(pretrained, toy_data, tmp_path):
    run = train_new(tiny_config(toy_data, tmp_path, model=str(pretrained)))
    result = json.loads(run.result.read_text())
    assert result["global_step"] == 92
    assert result["best"]["accuracy"] >= 0.45 and result["best"]["loss"] < 1.2  # chance: 0.25 and ln 4 = 1.39


def test_a_cpu_pretraining_run_trains_with_our_eager_kernel_and_evaluates_with_sdpa(corpus, tiny_init, tmp_path,
                                                                                   monkeypatch):
    seen = {"train": set(), "eval": set()}

    def recorded(name, function, model_of):
        def call(model, *args, **kwargs):
            seen[name].add(model_of(model).config._attn_implementation)
            return function(model, *args, **kwargs)
        return call

    monkeypatch.setattr(pretrainer, "accumulate_window",
                        recorded("train", pretrainer.accumulate_window, lambda wrapped: wrapped.model))
    monkeypatch.setattr(pretrainer, "evaluate_mlm", recorded("eval", pretrainer.evaluate_mlm, lambda model: model))
    choices, choose = [], pretrainer.TrainingKernels.choose  # packed: on CUDA, SDPA keeps its own mask check
    monkeypatch.setattr(pretrainer.TrainingKernels, "choose",
                        classmethod(lambda cls, *args, **kwargs: choices.append(kwargs) or choose(*args, **kwargs)))
    folder = pretrain_new(tiny_pretrain_config(corpus, tiny_init, tmp_path / "tapt", max_steps=4, eval_steps=2))
    assert seen == {"train": {INTEGER_DROPOUT_ATTENTION}, "eval": {"sdpa"}} and choices == [{"packed": True}]
    assert "_attn_implementation" not in (folder / "config.json").read_text()


def test_masked_logits_equal_the_full_forward_at_the_masked_positions(tiny_init):
    tokenizer = AutoTokenizer.from_pretrained(tiny_init)
    model = BertForMaskedLM.from_pretrained(tiny_init).eval()
    ids = tokenizer(["영화 정말 최고 감동 명작 ㅋㅋ", "그냥 별로 지루 결말 장면"] * 8, add_special_tokens=False)["input_ids"]
    packed = pack_sequences([torch.tensor(row).numpy() for row in ids], 32, tokenizer.cls_token_id,
                            tokenizer.sep_token_id, tokenizer.pad_token_id)
    batch = collate_mlm(packed, list(range(len(packed))), DynamicMasker.from_tokenizer(tokenizer),
                        torch.Generator().manual_seed(0))
    picked = batch["labels"] != -100
    with torch.no_grad():
        logits, labels = masked_logits(model, batch, torch.device("cpu"))
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert picked.sum() > 5 and torch.equal(labels, batch["labels"][picked])
    torch.testing.assert_close(logits, full[picked], rtol=1e-5, atol=1e-5)


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(corpus, tiny_init, tmp_path):
    overrides = dict(max_steps=12, eval_steps=4, logging_steps=3, gradient_accumulation_steps=2)
    straight = pretrain_new(tiny_pretrain_config(corpus, tiny_init, tmp_path / "a" / "m", **overrides))

    with pytest.raises(TrainingInterrupted) as interrupted:
        pretrain_new(tiny_pretrain_config(corpus, tiny_init, tmp_path / "b" / "m", **overrides), stop=StopAtStep(6))
    assert interrupted.value.run_path == tmp_path / "b" / "m.incomplete"
    assert not (tmp_path / "b" / "m").exists()
    torch.manual_seed(12345)  # a new process would start from another RNG state
    resumed = resume_pretraining(tmp_path / "b" / "m")

    assert resumed == tmp_path / "b" / "m"
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    lines, straight_lines = _records(resumed), _records(straight)
    assert [(r["split"], r["step"]) for r in lines] == [(r["split"], r["step"]) for r in straight_lines]
    assert [r["loss"] for r in lines] == pytest.approx([r["loss"] for r in straight_lines], rel=1e-5)
    result, straight_result = (json.loads((f / "result.json").read_text()) for f in (resumed, straight))
    for key in ("global_step", "tokens_seen", "masked_tokens_seen", "held_out"):
        assert result[key] == pytest.approx(straight_result[key], rel=1e-5)


def test_from_scratch_on_the_command_line_with_special_tokens(corpus, tmp_path, capsys):
    out = tmp_path / "scratch"
    code = run_cli(pretrain.main, ["--texts", str(corpus["reviews"]), str(corpus["extra"]), "--preset", "tiny",
                                   "--vocab-size", "200", "--whole-word-masking", "--max-steps", "3",
                                   "--eval-texts", "20", "--max-length", "64", "--batch-size", "4",
                                   "--out", str(out), "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "held-out MLM loss" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["special_tokens"] == ["[URL]", "[REDACTED]"] and plan["texts_read"] == 606
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert {"[URL]", "[REDACTED]"} <= set(tokenizer.all_special_tokens)
    assert tokenizer.tokenize("[REDACTED] 영화") [0] == "[REDACTED]"
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=4)
    assert add_special_tokens(tokenizer, model, ["[URL]", "[REDACTED]"]) == 0  # train.py adds nothing new
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2


def test_max_minutes_fixes_the_schedule_from_measured_speed(corpus, tiny_init, tmp_path):
    assert steps_for_budget(100.0, 0.5, 10.0, 50) == 128  # (100 - 10) / (0.5 + 10 / 50)
    assert steps_for_budget(5.0, 0.5, 10.0, 50) == 0
    folder = pretrain_new(tiny_pretrain_config(corpus, tiny_init, tmp_path / "timed", max_steps=None,
                                               max_minutes=0.2, eval_steps=50, logging_steps=1))
    plan = json.loads((folder / "plan.json").read_text())
    result = json.loads((folder / "result.json").read_text())
    assert plan["budget"] == "max_minutes" and plan["seconds_per_step"] > 0 and plan["total_steps"] >= 1
    assert result["global_step"] <= plan["total_steps"] and result["wall_seconds"] < 12 + 5
    # From the first step on, the schedule ran towards the length fixed by the measured speed.
    train = [r for r in _records(folder) if r["split"] == "train"]
    assert train and all(r["lr"] == pytest.approx(3e-3 * lr_multiplier("linear", r["step"] - 1, plan["warmup_steps"],
                                                                       plan["total_steps"])) for r in train)


def _refused(argv: list[str], tmp_path: Path, capsys, *needles: str) -> None:
    out = tmp_path / "models"
    code = run_cli(pretrain.main, argv + ["--out", str(out / "m"), "--no-cache", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: ") and all(n in err[-1] for n in needles), err
    assert not any(line.startswith("Traceback") for line in err)
    assert not out.exists() or not any(out.iterdir()), "a bad input left a folder behind"


def test_missing_text_file(tmp_path, capsys):
    _refused(["--texts", str(tmp_path / "nope.csv"), "--preset", "tiny"], tmp_path, capsys, "--texts", "nope.csv")


def test_missing_text_column(corpus, tmp_path, capsys):
    _refused(["--texts", str(corpus["reviews"]), "--text-column", "document"], tmp_path, capsys,
             "'document'", "--text-column", "'review'")


@pytest.mark.parametrize("flags, needles", [
    (["--preset", "huge"], ("--preset", "huge")),
    (["--preset", "tiny", "--init", "some/model"], ("--preset", "--init")),
    (["--max-minutes", "0"], ("--max-minutes",)),
    (["--eval-texts", "5000"], ("--eval-texts", "distinct")),
])
def test_bad_options(corpus, tmp_path, capsys, flags, needles):
    _refused(["--texts", str(corpus["reviews"]), str(corpus["extra"])] + flags, tmp_path, capsys, *needles)


def test_an_uncached_hub_id_fails_at_once_offline(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refused(["--texts", str(corpus["reviews"]), "--init", "nobody/no-such-model", "--eval-texts", "5000"], tmp_path,
             capsys,
             "--init nobody/no-such-model", "cannot be reached")


def test_an_existing_output_folder_is_not_replaced(corpus, tmp_path, capsys):
    (tmp_path / "models" / "m").mkdir(parents=True)
    code = run_cli(pretrain.main, ["--texts", str(corpus["reviews"]), "--out", str(tmp_path / "models" / "m")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err.strip().splitlines()[-1]
