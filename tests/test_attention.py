"""On a CPU, training steps run our eager attention (integer-mask dropout) and everything else the model's SDPA;
on CUDA they run SDPA with a mask that needs no host read."""

import copy

import numpy as np
import pytest
import torch

from lib.finetune import trainer
from lib.finetune.trainer import train_new
from lib.data.batching import collate
from lib.finetune.losses import FocalLoss
from lib.loop.step import ClassifierObjective, WindowShare, accumulate_window, optimizer_step
from lib.finetune import evaluate
from lib.model.attention import (INTEGER_DROPOUT_ATTENTION, SDPA_WITHOUT_MASK_CHECK, attention_implementation,
                                 shares_one_config, training_attention, unchecked_attention)
from lib.model.dropout import plain_dropouts
from lib.model.step_kernels import TrainingKernels
from tests.conftest import tiny_config
from tests.host_reads import fail_on_host_reads
from tests.tiny_encoders import random_encoded, tiny_bert, tiny_classifier


def test_a_cpu_model_trains_with_our_eager_kernel_where_it_dispatches_through_the_attention_interface():
    model = tiny_bert()
    assert model.config._attn_implementation == "sdpa"
    assert training_attention(model, torch.device("cpu")) == INTEGER_DROPOUT_ATTENTION
    assert training_attention(model, torch.device("cuda", 0)) == SDPA_WITHOUT_MASK_CHECK
    assert training_attention(model, torch.device("cuda", 0), compiled=True) is None  # a traced mask is not read
    assert training_attention(model, torch.device("cuda", 0), packed=True) is None  # pretraining: mostly unpadded
    assert training_attention(model, torch.device("cpu"), packed=True) == INTEGER_DROPOUT_ATTENTION
    assert training_attention(model, torch.device("mps")) is None
    assert training_attention(model, torch.device("cpu"), compiled=True) == "eager"  # torch's dropout compiles
    model.set_attn_implementation("eager")
    assert training_attention(model, torch.device("cpu")) == INTEGER_DROPOUT_ATTENTION
    assert training_attention(model, torch.device("cuda", 0)) is None  # eager on CUDA asked for: kept
    model.set_attn_implementation("sdpa")
    model._supports_attention_backend = False  # a family with SDPA but its own attention classes
    assert training_attention(model, torch.device("cpu")) == "eager"
    assert training_attention(model, torch.device("cuda", 0)) is None
    assert training_attention(tiny_classifier("deberta-v2"), torch.device("cpu")) is None  # eager, its own


def test_a_model_that_cannot_switch_its_attention_keeps_its_own():
    model = tiny_bert()
    model._can_set_attn_implementation = lambda: False  # what transformers finds for older attention classes
    assert training_attention(model, torch.device("cpu")) is None


def test_a_classifier_switches_by_its_one_config_and_a_model_with_a_sub_config_does_not():
    model = tiny_bert()
    assert shares_one_config(model)
    model.bert.config = copy.deepcopy(model.config)  # a sub-model reading a config of its own
    assert not shares_one_config(model)


def _calls_of(monkeypatch, model, name):
    calls = []
    original = getattr(model, name)
    monkeypatch.setattr(model, name, lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    return calls


@pytest.mark.parametrize("one_config", [False, True])
@pytest.mark.parametrize("implementation", ["eager", INTEGER_DROPOUT_ATTENTION, SDPA_WITHOUT_MASK_CHECK])
def test_each_kernel_computes_what_sdpa_does_and_the_model_gets_its_own_back(implementation, one_config,
                                                                                  monkeypatch):
    model = tiny_bert(layers=2).eval()
    walks = _calls_of(monkeypatch, model, "set_attn_implementation")
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[1, 2:] = 0
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
        with attention_implementation(model, implementation, one_config):
            assert model.config._attn_implementation == implementation
            eager = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    assert len(walks) == (0 if one_config else 2)  # the config field alone, or transformers' walk both ways
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError), attention_implementation(model, implementation, one_config):
        raise RuntimeError("a failed step")
    assert model.config._attn_implementation == "sdpa"


def test_the_steps_kernels_are_looked_up_once_per_model():
    model = tiny_bert(layers=2, dropout=0.2)
    kernels = TrainingKernels.choose(model, torch.device("cpu"))
    assert kernels == TrainingKernels(model, INTEGER_DROPOUT_ATTENTION, plain_dropouts(model), one_config=True)
    assert len(kernels.dropouts) == 2 * 3 + 2  # 3 a layer (attention probabilities, its output, feed-forward),
    # the embeddings' and the classifier's
    assert TrainingKernels.choose(model, torch.device("cuda", 0)) == TrainingKernels(model, SDPA_WITHOUT_MASK_CHECK,
                                                                                     one_config=True)
    compiled = TrainingKernels.choose(model, torch.device("cpu"), compiled=True)
    assert (compiled.attention, compiled.dropouts) == ("eager", ())


def test_our_kernel_drops_attention_probabilities_in_training_only():
    model = tiny_bert(layers=1)
    model.config.attention_probs_dropout_prob = model.bert.encoder.layer[0].attention.self.dropout.p = 0.5
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad(), attention_implementation(model, INTEGER_DROPOUT_ATTENTION):
        reference = model.eval()(input_ids=ids, attention_mask=mask).logits
        model.train()  # no other dropout in this model: only the attention probabilities can differ
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, reference)


def test_a_cpu_run_trains_with_our_kernel_and_dropout_and_evaluates_with_sdpa(toy_data, tmp_path, monkeypatch):
    seen = {"train": set(), "eval": set()}

    def recorded(name, function):
        def call(model, *args, **kwargs):
            plain = getattr(model, "module", model)
            switched = any("forward" in vars(m) for m in plain.modules() if isinstance(m, torch.nn.Dropout))
            seen[name].add((plain.config._attn_implementation, switched))
            return function(model, *args, **kwargs)
        return call

    monkeypatch.setattr(trainer, "accumulate_window", recorded("train", trainer.accumulate_window))
    monkeypatch.setattr(trainer, "gathered_logits", recorded("eval", trainer.gathered_logits))
    run = train_new(tiny_config(toy_data, tmp_path, num_train_epochs=1.0))
    assert seen == {"train": {(INTEGER_DROPOUT_ATTENTION, True)}, "eval": {("sdpa", False)}}
    assert "_attn_implementation" not in (run.path / "best" / "config.json").read_text()


@pytest.mark.parametrize("padded", [True, False])
def test_a_training_step_with_the_unchecked_sdpa_mask_reads_nothing_back_and_gets_sdpas_gradients(padded, monkeypatch):
    """What a CUDA step runs, on the CPU: transformers' own SDPA asks `bool(padding_mask.all())` at
    every forward (a host sync on a GPU); with the mask always built, a whole step (forward, loss,
    backward, clipping, fused AdamW) reads no tensor value on the host, and computes the same."""
    rows = np.arange(11)
    batch = collate(random_encoded(), rows)
    if not padded:  # every position a real token: the mask transformers would have left out
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    assert bool((batch["attention_mask"] == 0).any()) == padded

    def step(model, reads=None):
        parameters = list(model.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=1e-2, fused=True)
        share = WindowShare(len(rows), torch.amp.GradScaler("cpu", enabled=False))
        objective = ClassifierObjective(FocalLoss(3, gamma=1.0), "fp32", torch.device("cpu"))
        with monkeypatch.context() as patch:
            if reads:
                fail_on_host_reads(patch)
            with TrainingKernels.of(model, SDPA_WITHOUT_MASK_CHECK if reads else None, False).step():
                accumulate_window(model, [batch], objective, share)
                optimizer_step(parameters, optimizer, share.scaler, max_grad_norm=1.0)
        return model

    reference = tiny_bert(layers=2, dropout=0.0)
    unchecked = step(copy.deepcopy(reference), reads=True)
    step(reference)
    assert reference.config._attn_implementation == unchecked.config._attn_implementation == "sdpa"
    for (name, p), q in zip(reference.named_parameters(), unchecked.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_eager_prediction_on_cuda_runs_the_unchecked_mask_and_a_compiled_one_its_own():
    model = tiny_bert()
    assert unchecked_attention(model, torch.device("cuda", 0)) == SDPA_WITHOUT_MASK_CHECK
    assert unchecked_attention(model, torch.device("cpu")) is None
    model.set_attn_implementation("eager")
    assert unchecked_attention(model, torch.device("cuda", 0)) is None


def test_a_prediction_with_the_unchecked_mask_reads_nothing_back_in_its_batches(monkeypatch):
    """predict_logits as on CUDA (the choice faked on the CPU): the batches' forwards read no tensor value,
    the logits are SDPA's, and the model has its own attention back afterwards."""
    model = tiny_bert(layers=2)
    data = random_encoded()
    expected = evaluate.predict_logits(model, data, 4, "fp32", torch.device("cpu"), "eval", False)
    seen = []
    forward = evaluate.classifier_logits
    monkeypatch.setattr(evaluate, "unchecked_attention", lambda model, device: SDPA_WITHOUT_MASK_CHECK)
    monkeypatch.setattr(evaluate, "classifier_logits", lambda model, *args: seen.append(
        model.config._attn_implementation) or forward(model, *args))
    with monkeypatch.context() as patch:
        fail_on_host_reads(patch)
        got = evaluate.predict_logits(model, data, 4, "fp32", torch.device("cpu"), "eval", False)
    assert set(seen) == {SDPA_WITHOUT_MASK_CHECK} and len(seen) == 3
    assert model.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
