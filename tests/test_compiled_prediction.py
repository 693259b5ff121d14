"""predict.py --compile: the frozen, compiled forward gives the eager logits, compiles one graph for
batches of every shape, and a compiler that cannot build is one line naming the flag."""

import functools
import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import predict
from lib.core.cli import run_cli
from lib.core.errors import UserError
from lib.finetune.trainer import train_new
from lib.model.cls_only import classifier_logits
from lib.model.compiled import frozen_classifier
from tests.conftest import tiny_config
from tests.tiny_encoders import tiny_bert

needs_compiler = pytest.mark.skipif(not any(shutil.which(name) for name in ("g++", "c++", "clang++")),
                                    reason="inductor's CPU kernels need a C++ compiler")


@needs_compiler
def test_compiled_prediction_gives_the_eager_logits_with_one_graph_for_every_batch_shape(toy_data, tmp_path):
    run = train_new(tiny_config(toy_data, tmp_path, num_train_epochs=1))
    logits = {}
    counters.clear()
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        # 40 test rows in batches of 3: widths that differ from batch to batch, and a last batch of 1 row
        assert run_cli(predict.main, [str(run.path), "--test", str(toy_data["test"]), "--out",
                                      str(tmp_path / f"{name}.csv"), "--logits-out", str(tmp_path / f"{name}.npz"),
                                      "--batch-size", "3", "--device", "cpu", "--quiet"] + flags) == 0
        logits[name] = np.load(tmp_path / f"{name}.npz")["logits"]
    assert counters["frames"]["ok"] == 1
    np.testing.assert_allclose(logits["compiled"], logits["eager"], atol=1e-5)
    assert (tmp_path / "compiled.csv").read_text() == (tmp_path / "eager.csv").read_text()


def test_each_model_compiles_its_own_graph_whatever_the_recompile_limit(monkeypatch):
    """Dynamo compiles one code object at most `recompile_limit` times; an ensemble's members each get theirs.
    The limit is dynamo's, whatever the backend: its eager backend skips inductor's seconds of C++ builds."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    input_ids, attention_mask = torch.randint(5, 50, (4, 9)), torch.ones(4, 9, dtype=torch.long)
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1), torch.inference_mode():
        for seed in (0, 1):
            model = tiny_bert(seed=seed).eval()
            torch.testing.assert_close(frozen_classifier(model)(input_ids, attention_mask),
                                       classifier_logits(model, input_ids, attention_mask), atol=1e-5, rtol=0)
    assert counters["frames"]["ok"] == 2


def test_a_compiler_that_cannot_build_is_one_line_naming_the_flag():
    forward = frozen_classifier(tiny_bert().eval())
    with inductor_config.patch({"fx_graph_cache": False, "cpp.cxx": (None, "/no/such/compiler")}), \
            torch.inference_mode(), pytest.raises(UserError) as error:
        forward(torch.randint(5, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    message = str(error.value)
    assert message.startswith("--compile: torch.compile could not build") and "\n" not in message
    assert "/no/such/compiler" in message
