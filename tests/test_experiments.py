"""The shipped experiment files parse: a typo in a key or a value fails here, not in a user's sweep."""

from pathlib import Path

import pytest

from lib.finetune.config import option_names, parse_train_args
from lib.search import load_sweep_config
from lib.search.sweep import check_space

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_training_configs_parse(path):
    assert parse_train_args(["--config", str(path)]).config.model


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("sweep*.json")), ids=lambda p: p.name)
def test_sweep_configs_name_train_options(path):
    space = load_sweep_config(path, known_parameters=option_names())
    assert "learning_rate" in space.to_dict()["parameters"]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("sweep*.json")), ids=lambda p: p.name)
def test_sweep_configs_hold_only_values_train_options_accept(path):
    check_space(load_sweep_config(path, known_parameters=option_names()), f"sweep config {path}")
