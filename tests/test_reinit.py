"""Re-initialising the top encoder layers of tiny BERT, RoBERTa, ELECTRA and DeBERTa-v2 classifiers.

Each model is saved with every weight shifted by +1 and loaded back with `from_pretrained`, as a real
checkpoint is: transformers then marks the loaded tensors, which makes a plain `_init_weights` a no-op,
and the shift makes a LayerNorm at (1, 0) tell a re-initialised one from a kept one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from lib.core.errors import UserError
from lib.model.reinit import reinit_top_layers
from tests.tiny_encoders import ARCHITECTURES, tiny_classifier

LAYERS = 3
_LAYER = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
_POOLER = re.compile(r"(^|\.)pooler\.")


def _loaded(architecture: str, folder: Path) -> PreTrainedModel:
    model = tiny_classifier(architecture, layers=LAYERS)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model.save_pretrained(folder)
    return type(model).from_pretrained(folder)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _reinitialised(name: str, k: int) -> bool:
    match = _LAYER.search(name)
    return (match is not None and int(match.group(2)) >= LAYERS - k) or (k > 0 and _POOLER.search(name) is not None)


@pytest.mark.parametrize("k", [1, LAYERS])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_top_layers_and_pooler_start_afresh_and_nothing_else_moves(architecture, k, tmp_path):
    model = _loaded(architecture, tmp_path)
    before = _snapshot(model)
    reinit_top_layers(model, k)
    after = model.state_dict()
    fresh = [name for name in before if _reinitialised(name, k)]
    assert any(_POOLER.search(name) for name in fresh) == (architecture in ("bert", "deberta-v2"))
    for name, old in before.items():
        if name not in fresh:
            assert torch.equal(after[name], old), name
            continue
        new = after[name]
        assert not torch.equal(new, old), name
        if "LayerNorm" in name:  # the model's own initialiser: norms at (1, 0), matrices ~ N(0, 0.02)
            assert torch.equal(new, torch.ones_like(new) if name.endswith("weight") else torch.zeros_like(new)), name
        elif name.endswith("bias"):
            assert torch.equal(new, torch.zeros_like(new)), name
        else:
            assert 0.01 < new.std().item() < 0.03 and abs(new.mean().item()) < 0.01, name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zero_layers_changes_nothing(architecture, tmp_path):
    model = _loaded(architecture, tmp_path)
    before = _snapshot(model)
    reinit_top_layers(model, 0)
    assert all(torch.equal(model.state_dict()[name], old) for name, old in before.items())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_more_layers_than_the_model_has_is_refused_in_one_line(architecture):
    model = tiny_classifier(architecture, layers=LAYERS)
    before = _snapshot(model)
    with pytest.raises(UserError) as error:
        reinit_top_layers(model, LAYERS + 1)
    message = str(error.value)
    assert message.startswith(f"--reinit-top-layers {LAYERS + 1}:") and f"has {LAYERS} encoder layers" in message
    assert "\n" not in message
    assert all(torch.equal(model.state_dict()[name], old) for name, old in before.items())


def test_a_model_without_encoder_layers_is_refused_naming_the_option_and_class():
    with pytest.raises(UserError) as error:
        reinit_top_layers(torch.nn.Linear(4, 2), 1)
    assert "--reinit-top-layers" in str(error.value) and "Linear" in str(error.value)
