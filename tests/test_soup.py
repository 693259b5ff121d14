"""`ensemble.py soup`: model soups of tiny runs that share their initial weights (--init-seed), the
refusals, and the soup folder read back by predict.py, vote and a further soup. Three tiny runs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import ensemble
import predict
from lib.core.cli import run_cli
from lib.finetune.trainer import train_new
from lib.search.sweep import SweepFolder, create_sweep, open_sweep
from tests.conftest import tiny_config, write_reviews


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """a and b: one --init-seed, other --seed (so other dropout and batches); c: another --init-seed."""
    folder = tmp_path_factory.mktemp("soup")
    data = {"train": write_reviews(folder / "train.csv", 160, seed=1),
            "test": write_reviews(folder / "test.csv", 20, seed=2, labelled=False, prefix="T")}
    made = {}
    for name, seed, init_seed in (("a", 1, 5), ("b", 2, 5), ("c", 3, 6)):
        made[name] = train_new(tiny_config(data, folder / "runs", run_name=name, seed=seed, init_seed=init_seed,
                                           num_train_epochs=1, test_file=str(data["test"]))).path
    return {**made, "test": data["test"], "root": folder}


def _soup(args, capsys):
    code = run_cli(ensemble.main, ["soup", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def _kept(run):
    return run / json.loads((run / "result.json").read_text())["kept"]


def test_every_run_records_its_initial_weights(runs):
    a, b, c = (json.loads((runs[name] / "initial_weights.json").read_text()) for name in "abc")
    assert a["model"] == "scratch:tiny" and (a["init_seed"], b["init_seed"], c["init_seed"]) == (5, 5, 6)
    assert a["backbone_sha256"] == b["backbone_sha256"] != c["backbone_sha256"]
    assert a["head_sha256"] == b["head_sha256"]  # --init-seed draws the head too
    config = json.loads((runs["a"] / "config.json").read_text())
    assert (config["seed"], config["init_seed"]) == (1, 5)


def test_a_soup_of_one_run_equals_that_run(runs, capsys):
    saved = runs["root"] / "soup-one"
    code, out = _soup([runs["a"], "--save", saved], capsys)
    assert code == 0, out
    soup, run = _weights(saved / "best"), _weights(_kept(runs["a"]))
    assert soup.keys() == run.keys()
    for name in run:
        torch.testing.assert_close(soup[name], run[name], rtol=0, atol=0)
    ours, theirs = np.load(saved / "val_logits.npz"), np.load(runs["a"] / "val_logits.npz")
    assert list(ours["ids"]) == list(theirs["ids"])
    np.testing.assert_allclose(ours["logits"], theirs["logits"], atol=1e-5)
    assert "prediction cost: a soup runs 1 model" in out and "the vote runs 1" in out


def test_a_soup_of_two_identical_runs_equals_either(runs, capsys):
    twin = runs["root"] / "twin"
    shutil.copytree(runs["a"], twin)
    saved = runs["root"] / "soup-twins"
    code, out = _soup([runs["a"], twin, "--greedy", "--save", saved], capsys)
    assert code == 0, out
    soup, run = _weights(saved / "best"), _weights(_kept(runs["a"]))
    for name in run:
        torch.testing.assert_close(soup[name], run[name], rtol=0, atol=1e-7)
    result = json.loads((saved / "result.json").read_text())
    assert result["soup"]["kind"] == "greedy"
    assert [i["in_soup"] for i in result["soup"]["ingredients"]] == [True, True]  # equal scores do not drop


def test_runs_from_other_initial_weights_are_refused(runs, capsys):
    saved = runs["root"] / "soup-refused"
    code, out = _soup([runs["a"], runs["c"], "--save", saved], capsys)
    assert code == 2
    assert "starts from other initial weights" in out and "--init-seed 6" in out and "--init-seed 5" in out
    assert len(out.strip().splitlines()) == 1 and not saved.exists()


@pytest.mark.parametrize("change, refusal", [
    (lambda run: _edit_json(run / "preprocessor.json", lambda d: d.__setitem__("max_char_repeat", 9)),
     "another text preprocessor"),
    (lambda run: _edit_json(_kept(run) / "config.json", lambda d: d.__setitem__("architectures", ["Other"])),
     "another architecture"),
])
def test_runs_with_other_inputs_or_shapes_are_refused(runs, capsys, tmp_path, change, refusal):
    other = tmp_path / "other"
    shutil.copytree(runs["b"], other)
    change(other)
    code, out = _soup([runs["a"], other], capsys)
    assert code == 2 and refusal in out, out


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_the_soup_folder_round_trips_through_predict_vote_and_another_soup(runs, capsys, tmp_path):
    saved = runs["root"] / "soup-ab"
    code, out = _soup([runs["a"], runs["b"], "--save", saved], capsys)
    assert code == 0, out
    for needle in ("uniform soup of 2", "greedy soup of", "vote (logits, equal weights)", "macro_f1", "nll"):
        assert needle in out
    a, b, soup = _weights(_kept(runs["a"])), _weights(_kept(runs["b"])), _weights(saved / "best")
    for name in a:
        if a[name].is_floating_point():
            torch.testing.assert_close(soup[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)

    written = tmp_path / "submission.csv"
    assert run_cli(predict.main, [str(saved), "--test", str(runs["test"]), "--out", str(written), "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(written), pd.read_csv(saved / "submission.csv"))
    assert run_cli(ensemble.main, ["vote", str(saved), str(runs["a"]), "--quiet"]) == 0
    capsys.readouterr()
    code, out = _soup([saved, runs["b"]], capsys)
    assert code == 0, out


def test_top_k_of_a_sweep_folder_takes_its_best_trials(runs, capsys, tmp_path):
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"method": "grid", "metric": {"name": "eval_accuracy", "goal": "maximize"},
                                  "parameters": {"init_seed": {"value": 5}, "seed": {"values": [1, 2]}}}))
    folder = create_sweep(config, tmp_path, "sweep", seed=0, trials=None)
    _, journal, _ = open_sweep(folder.path)
    for value, run in ((0.1, runs["a"]), (0.9, runs["b"])):  # trial 1 (run b) is the better one
        trial = journal.claim("w", lambda number, trials: {"seed": number}, None, 60.0)
        shutil.copytree(run, folder.trials / SweepFolder(folder.path).trial_name(trial.number))
        journal.finish(trial.number, "w", value)
    code, out = _soup([folder.path, "--top", "1"], capsys)
    assert code == 0, out
    assert "trial-001" in out and "trial-000" not in out
    code, out = _soup([runs["a"], "--top", "1"], capsys)
    assert code == 2 and "--top: needs a sweep folder" in out



def test_added_token_rows_start_at_the_mean_whatever_the_seed(tmp_path):
    """A hub model's runs share their backbone whatever their --seed: rows for the preprocessor's new
    tokens are the mean of the existing rows, not a draw from the global generator."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from lib.model.backbone import add_special_tokens, weight_digests

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "영화", "최고"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    digests = []
    for seed in (1, 2):
        torch.manual_seed(0)  # the same "hub" weights for both runs
        model = BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=32))
        torch.manual_seed(seed)  # the run's own seed
        assert add_special_tokens(BertTokenizerFast(str(tmp_path / "vocab.txt")), model, ["[URL]", "[EMAIL]"]) == 2
        rows = model.get_input_embeddings().weight.detach()
        torch.testing.assert_close(rows[-2:], rows[:len(vocab)].mean(dim=0).expand(2, -1), rtol=0, atol=0)
        digests.append(weight_digests(model)["backbone_sha256"])
    assert digests[0] == digests[1]
