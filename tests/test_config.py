"""The typed config: flags, aliases, experiment files, precedence, and the documented help."""

import dataclasses
import json

import pytest

from lib.core.errors import UserError
from lib.finetune.config import TrainConfig, build_train_parser, parse_train_args


def test_user_names_and_aliases_fill_the_config():
    cfg = parse_train_args(["--model", "klue/bert-base", "--gamma", "2.96", "--lr", "3e-5", "--epochs", "4",
                            "--alpha", "0.11,0.45,0.12,0.32", "--label-smoothing-factor", "0.1"]).config
    assert cfg.model == "klue/bert-base" and cfg.focal_loss_gamma == 2.96 and cfg.learning_rate == 3e-5
    assert cfg.num_train_epochs == 4 and cfg.focal_loss_alpha == (0.11, 0.45, 0.12, 0.32)
    assert cfg.uses_focal_loss


def test_gamma_zero_and_no_alpha_is_plain_cross_entropy():
    assert not TrainConfig().uses_focal_loss
    assert TrainConfig(focal_loss_alpha="auto").uses_focal_loss


def test_flags_win_over_the_experiment_file(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"learning-rate": 2e-5, "num_train_epochs": 5, "label_names": ["a", "b"],
                                "max_length": 64, "focal_loss_alpha": [1, 2]}))
    cfg = parse_train_args(["--config", str(path), "--epochs", "2"]).config
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.label_names) == (2e-5, 2.0, ("a", "b"))
    assert cfg.max_length == 64 and cfg.focal_loss_alpha == (1.0, 2.0)


def test_yaml_experiment_files_work(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("learning_rate: 1.0e-4\ngroup_by_length: false\n")
    cfg = parse_train_args(["--config", str(path)]).config
    assert cfg.learning_rate == 1e-4 and cfg.group_by_length is False


def test_unknown_key_in_the_experiment_file_is_named(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"learning_rat": 1e-4}))
    with pytest.raises(UserError, match="learning_rat"):
        parse_train_args(["--config", str(path)])


def test_config_round_trips_through_json(tmp_path):
    cfg = TrainConfig(focal_loss_alpha=(0.1, 0.9), label_names=("x", "y"), max_length=96, eval_steps=10)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg


def test_resume_takes_no_other_options():
    assert parse_train_args(["--resume", "runs/x"]).resume is not None
    with pytest.raises(UserError, match="--resume"):
        parse_train_args(["--resume", "runs/x", "--lr", "1e-3"])


def test_help_documents_every_option_with_its_default():
    help_text = build_train_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
    assert help_text.count("(default:") >= len(dataclasses.fields(TrainConfig))


@pytest.mark.parametrize("metric, greater", [("eval_loss", False), ("accuracy", True), ("eval_macro_f1", True)])
def test_metric_for_best_model_accepts_the_eval_prefix(metric, greater):
    from lib.finetune.selection import CheckpointSelector

    cfg = TrainConfig(metric_for_best_model=metric)
    assert CheckpointSelector(cfg.selection_metric).greater_is_better is greater


def test_unknown_selection_metric_is_refused():
    with pytest.raises(UserError, match="--metric-for-best-model"):
        TrainConfig(metric_for_best_model="bleu")
