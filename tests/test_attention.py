"""On a CPU, training steps run eager attention and everything else the model's SDPA."""

import pytest
import torch

from lib.finetune import trainer
from lib.finetune.trainer import train_new
from lib.model.attention import attention_implementation, training_attention
from tests.conftest import tiny_config
from tests.tiny_encoders import tiny_bert


def test_only_a_cpu_model_that_runs_sdpa_trains_with_eager_attention():
    model = tiny_bert()
    assert model.config._attn_implementation == "sdpa"
    assert training_attention(model, torch.device("cpu")) == "eager"
    assert training_attention(model, torch.device("cuda", 0)) is None
    model.set_attn_implementation("eager")
    assert training_attention(model, torch.device("cpu")) is None


def test_eager_attention_computes_what_sdpa_does_and_the_model_gets_its_own_back():
    model = tiny_bert(layers=2).eval()
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
        with attention_implementation(model, "eager"):
            assert model.config._attn_implementation == "eager"
            eager = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError), attention_implementation(model, "eager"):
        raise RuntimeError("a failed step")
    assert model.config._attn_implementation == "sdpa"


def test_a_cpu_run_trains_with_eager_attention_and_evaluates_with_sdpa(toy_data, tmp_path, monkeypatch):
    seen = {"train": set(), "eval": set()}

    def recorded(name, function):
        def call(model, *args, **kwargs):
            seen[name].add(getattr(model, "module", model).config._attn_implementation)
            return function(model, *args, **kwargs)
        return call

    monkeypatch.setattr(trainer, "accumulate_window", recorded("train", trainer.accumulate_window))
    monkeypatch.setattr(trainer, "gathered_logits", recorded("eval", trainer.gathered_logits))
    run = train_new(tiny_config(toy_data, tmp_path, num_train_epochs=1.0))
    assert seen == {"train": {"eager"}, "eval": {"sdpa"}}
    assert "_attn_implementation" not in (run.path / "best" / "config.json").read_text()
