"""W&B sweep config parsing: every distribution round-trips, bad input gives one clear line."""

import json
import math
from pathlib import Path

import pytest

from lib.core.errors import UserError
from lib.search import load_sweep_config, parse_sweep_config
from lib.search.pruners import SuccessiveHalvingPruner, pruner_for

SEED = Path(__file__).resolve().parent.parent / "experiments" / "sweep_seed.json"
TRAIN_FIELDS = {
    "learning_rate", "num_train_epochs", "weight_decay", "per_device_train_batch_size",
    "warmup_steps", "warmup_ratio", "focal_loss_gamma", "focal_loss_alpha",
    "label_smoothing_factor", "dropout_rate", "lr_scheduler_type", "gradient_accumulation_steps",
    "num_rare_words_to_remove", "swa_last_k", "model", "train_file", "max_train_samples", "seed",
    "max_length", "precision",
}  # fmt: skip

SPECS = {
    "constant": {"distribution": "constant", "value": "klue/bert-base"},
    "categorical": {"distribution": "categorical", "values": [16, 32, 64]},
    "categorical_w_probabilities": {
        "distribution": "categorical_w_probabilities",
        "values": ["linear", "cosine"],
        "probabilities": [0.25, 0.75],
    },
    "int_uniform": {"distribution": "int_uniform", "min": 2, "max": 5},
    "uniform": {"distribution": "uniform", "min": 0.0, "max": 0.3},
    "log_uniform_values": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-4},
    "log_uniform": {"distribution": "log_uniform", "min": -11.5, "max": -9.2},
    "q_uniform": {"distribution": "q_uniform", "min": 0, "max": 500, "q": 50},
    "q_log_uniform_values": {"distribution": "q_log_uniform_values", "min": 8, "max": 256, "q": 8},
    "q_log_uniform": {"distribution": "q_log_uniform", "min": 0.0, "max": 5.0, "q": 2},
}


def config(**parameters):
    return {"method": "bayes", "metric": {"name": "eval_loss", "goal": "minimize"}, "parameters": parameters}


@pytest.mark.parametrize("dist", sorted(SPECS))
def test_every_distribution_round_trips(dist):
    space = parse_sweep_config(config(x=SPECS[dist]))
    again = parse_sweep_config(space.to_dict())
    assert again == space
    assert again.to_dict() == space.to_dict()
    assert space.parameters[0].distribution == dist


def test_log_uniform_bounds_are_natural_log_exponents():
    param = parse_sweep_config(config(x=SPECS["log_uniform"])).parameters[0]
    assert param.low == pytest.approx(math.exp(-11.5))
    assert param.high == pytest.approx(math.exp(-9.2))
    values = parse_sweep_config(config(x=SPECS["log_uniform_values"])).parameters[0]
    assert (values.low, values.high) == (1e-5, 1e-4)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"value": 3}, "constant"),
        ({"values": [1, 2]}, "categorical"),
        ({"values": [1, 2], "probabilities": [0.5, 0.5]}, "categorical_w_probabilities"),
        ({"min": 2, "max": 5}, "int_uniform"),
        ({"min": 0.0, "max": 1}, "uniform"),
    ],
)
def test_distribution_is_inferred_as_wandb_does(spec, expected):
    assert parse_sweep_config(config(x=spec)).parameters[0].distribution == expected


def test_inferred_and_explicit_configs_hash_alike_and_a_changed_bound_does_not():
    inferred = parse_sweep_config(config(lr={"min": 0.0, "max": 1.0}, bs={"values": [8, 16]}))
    explicit = parse_sweep_config(
        config(
            lr={"distribution": "uniform", "min": 0.0, "max": 1.0},
            bs={"distribution": "categorical", "values": [8, 16]},
        )
    )
    changed = parse_sweep_config(config(lr={"min": 0.0, "max": 0.5}, bs={"values": [8, 16]}))
    assert inferred.config_hash() == explicit.config_hash()
    assert inferred.config_hash() != changed.config_hash()


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        (config(x={"distribution": "normal", "min": 0, "max": 1}), ["'x'", "unknown distribution 'normal'"]),
        (config(x={"min": 5, "max": 2}), ["'x'", "min must be <= max"]),
        (config(x={"min": 0.5, "max": 0.5}), ["'x'", "min must be < max"]),
        (
            config(x={"distribution": "q_uniform", "min": 0, "max": 1, "q": 0}),
            ["'x'", "q must be a number > 0"],
        ),
        (config(x={"distribution": "q_uniform", "min": 0, "max": 1, "q": -1}), ["'x'", "q must be"]),
        (config(x={"distribution": "log_uniform_values", "min": 0, "max": 1}), ["'x'", "min > 0"]),
        (config(x={"distribution": "q_log_uniform_values", "min": -1, "max": 8, "q": 1}), ["min > 0"]),
        (config(x={"distribution": "uniform", "min": 0.1}), ["'x'", "needs `min` and `max`"]),
        (config(x={"distribution": "uniform", "max": 0.1}), ["'x'", "needs `min` and `max`"]),
        (config(x={"distribution": "uniform", "min": "1e-5", "max": 0.1}), ["'x'", "min must be a number"]),
        (config(x={"distribution": "int_uniform", "min": 0.5, "max": 3}), ["'x'", "integer min and max"]),
        (config(x={"distribution": "q_uniform", "min": 0.1, "max": 0.2, "q": 1}), ["'x'", "no multiple"]),
        (config(x={"values": []}), ["'x'", "non-empty list"]),
        (config(x={"values": [1, 1]}), ["'x'", "must not repeat"]),
        (config(x={"values": [1, 2], "probabilities": [0.5, 0.6]}), ["'x'", "summing to 1"]),
        (config(x={"distribution": "uniform", "min": 0, "max": 1, "q": 0.1}), ["'x'", "'q' does not apply"]),
        (config(x={"min": 0, "max": 1, "step": 1}), ["'x'", "unknown key 'step'"]),
        (config(x={"q": 1, "min": 0, "max": 1}), ["'x'", "q_* distribution"]),
        (config(x={"parameters": {"y": {"value": 1}}}), ["'x'", "unknown key 'parameters'"]),
        ({**config(x={"value": 1}), "metrics": {}}, ["unknown key 'metrics'"]),
        ({**config(x={"value": 1}), "method": "bayesian"}, ["method must be one of"]),
        ({"method": "random", "parameters": {"x": {"value": 1}}}, ["`metric`"]),
        ({**config(x={"value": 1}), "metric": {"name": "l", "goal": "max"}}, ["goal"]),
        ({**config(x={"value": 1}), "run_cap": 0}, ["run_cap"]),
        ({**config(x={"value": 1}), "early_terminate": {"type": "envelope"}}, ["hyperband"]),
        ({**config(x={"value": 1}), "early_terminate": {"type": "hyperband", "eta": 3}}, ["min_iter"]),
        (
            {**config(x={"value": 1}), "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1}},
            ["eta"],
        ),
        ({**config(x={"min": 0.0, "max": 1.0}), "method": "grid"}, ["'x'", "grid search needs"]),
    ],
)
def test_bad_configs_give_one_line_naming_the_culprit(raw, fragments):
    with pytest.raises(UserError) as err:
        parse_sweep_config(raw)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_parameter_names_are_refused_with_a_suggestion():
    with pytest.raises(
        UserError, match=r"'learning_rat' is not a train.py option \(did you mean 'learning_rate'\?\)"
    ):
        parse_sweep_config(config(learning_rat={"value": 1e-5}), known_parameters=TRAIN_FIELDS)
    parse_sweep_config(config(learning_rate={"value": 1e-5}), known_parameters=TRAIN_FIELDS)


def test_the_users_seed_sweep_parses_against_the_training_fields():
    space = load_sweep_config(SEED, known_parameters=TRAIN_FIELDS)
    assert len(space.searched) == 11 and space.constants == {"model": "klue/bert-base"}
    assert space.method == "bayes"
    assert (space.metric.name, space.metric.goal) == ("eval_loss", "minimize")
    assert dict(space.extra) == {"program": "train.py"}
    pruner = pruner_for(space)
    assert isinstance(pruner, SuccessiveHalvingPruner)
    assert (pruner.min_resource, pruner.reduction_factor) == (2, 3)
    assert parse_sweep_config(json.loads(SEED.read_text())).to_dict() == space.to_dict()


def test_hyperband_given_as_max_iter_and_s_starts_at_the_lowest_band():
    raw = {**config(x={"value": 1}), "early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2}}
    assert pruner_for(parse_sweep_config(raw)).rungs(30) == [3, 9, 27]


def test_yaml_files_load_and_a_yaml_text_exponent_is_explained(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text(
        "method: random\nmetric: {name: eval_loss}\nparameters:\n  lr: {min: 1.0e-5, max: 1.0e-4}\n"
    )
    assert load_sweep_config(good).parameters[0].distribution == "uniform"
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: random\nmetric: {name: eval_loss}\nparameters:\n  lr: {min: 1e-5, max: 1.0e-4}\n")
    with pytest.raises(UserError, match="write 1.0e-5"):
        load_sweep_config(bad)
    with pytest.raises(UserError, match="cannot read"):
        load_sweep_config(tmp_path / "missing.yaml")
