"""Predictions from a finished run folder, with the run's own preprocessor, tokenizer and model.

A `--model tfidf` run (lib.finetune.classical) has no tokenizer: `load_run` gives its preprocessor
and TF-IDF model, and `predict_table` scores the preprocessed texts with it. Both branch on the run's
config (`model == "tfidf"`); everything else reads both kinds of run alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lib.core.device import resolve_device
from lib.core.errors import UserError
from lib.data.batching import encode, pad_multiple
from lib.data.preprocess import TextPreprocessor
from lib.data.tables import Columns, class_distribution, read_table
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig
from lib.finetune.evaluate import predict_logits
from lib.finetune.metrics import format_distribution
from lib.finetune.plan import ClassicalPlan, TrainingPlan
from lib.finetune.run_folder import INCOMPLETE_SUFFIX, RunFolder
from lib.model.backbone import load_classifier
from lib.model.tfidf import TfidfClassifier

log = logging.getLogger(__name__)


INFERENCE_PRECISIONS = ("run", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Inference:
    """How saved models score a file. `precision` "run" is each run's own training precision (fp32 where
    the device lacks it); bf16 predicts about 1.8-2x faster on CPUs with AMX (bench/levers.py), so it
    may be asked for a run trained in fp32. `compile` scores through `lib.model.compiled`: faster
    batches after seconds of compiling each model, for large files."""

    device: str = "auto"
    batch_size: int | None = None  # None: each run's own eval batch size
    precision: str = "run"
    show_progress: bool = False
    compile: bool = False


@dataclass(frozen=True)
class LoadedRun:
    """A finished run, ready to predict (a tfidf run: ClassicalPlan, no tokenizer, TfidfClassifier, CPU)."""

    run: RunFolder
    cfg: TrainConfig
    plan: TrainingPlan | ClassicalPlan
    preprocessor: TextPreprocessor
    tokenizer: PreTrainedTokenizerBase | None
    model: PreTrainedModel | TfidfClassifier
    device: torch.device


def load_run(path: Path, which: str | None = None, device: str = "auto") -> LoadedRun:
    """Open `path` and load the model in its `which/` subfolder (best, last, swa).

    By default: the model the run kept for prediction (`kept` in result.json), else best/.
    """
    run = RunFolder(Path(path))
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run folder")
    if run.path.name.endswith(INCOMPLETE_SUFFIX) or not run.result.is_file():
        raise UserError(f"{run.path}: unfinished run (no result.json); resume it with "
                        f"python train.py --resume {run.path}")
    cfg = TrainConfig.load(run.config)
    if cfg.model == CLASSICAL_MODEL:
        return _load_classical(run, cfg, which)
    plan = TrainingPlan.load(run.plan)
    which = which or run.read_json(run.result).get("kept", "best")
    model_dir = run.path / which
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{run.path}: has no {which}/ model")
    resolved = resolve_device(device)
    model = load_classifier(model_dir, plan.num_labels, plan.label_names, None).to(resolved)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return LoadedRun(run, cfg, plan, TextPreprocessor.load(run.preprocessor), tokenizer, model, resolved)


def _load_classical(run: RunFolder, cfg: TrainConfig, which: str | None) -> LoadedRun:
    """A tfidf run keeps one model, best/; it runs on the CPU whatever the device asked for."""
    which = which or run.read_json(run.result).get("kept", "best")
    if which != "best":
        raise UserError(f"--model {which}: a {CLASSICAL_MODEL} run has only best/ (no last/, swa/ or ema/)")
    return LoadedRun(run, cfg, ClassicalPlan.load(run.plan), TextPreprocessor.load(run.preprocessor), None,
                     TfidfClassifier.load(run.best), torch.device("cpu"))


def inference_precision(trained_with: str, device: torch.device, requested: str = "run") -> str:
    """`requested`, or with "run" the run's precision where this device supports it, else fp32."""
    if requested not in INFERENCE_PRECISIONS:
        raise UserError(f"--precision {requested}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise UserError(f"--precision fp16: needs a CUDA device (this one is {device})")
    if requested != "run":
        return requested
    if trained_with == "fp16" and device.type != "cuda":
        return "fp32"
    return trained_with


def predict_table(cfg: TrainConfig, plan: TrainingPlan | ClassicalPlan, preprocessor: TextPreprocessor,
                  tokenizer: PreTrainedTokenizerBase | None, model: PreTrainedModel | TfidfClassifier,
                  path: str | Path, device: torch.device, show_progress: bool,
                  batch_size: int | None = None, precision: str = "run",
                  compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids, fp32 logits) for every row of the CSV at `path`, in file order; `precision` and `compiled`
    (a TF-IDF run has nothing to compile) as in `Inference`."""
    columns = Columns(cfg.id_column, cfg.text_column, cfg.label_column)
    table = read_table(path, columns, labelled=False, flag="--test")
    if cfg.model == CLASSICAL_MODEL:  # the features read the preprocessed texts: no tokens, batches or device
        return table.ids, model.logits(preprocessor.transform(table.texts))
    precision = inference_precision(plan.precision, device, precision)
    data = encode(tokenizer, preprocessor.transform(table.texts), plan.max_length,
                  pad_to_multiple_of=pad_multiple(device, precision, compiled=False), truncation=cfg.truncation,
                  head_tokens=cfg.head_tokens)
    logits = predict_logits(model, data, batch_size or cfg.per_device_eval_batch_size, precision, device, "predict",
                            show_progress, compiled=compiled)
    return table.ids, logits


def predict_run_table(loaded: LoadedRun, path: str | Path, inference: Inference) -> tuple[np.ndarray, np.ndarray]:
    """`predict_table` with a loaded run's own parts, as `inference` says."""
    return predict_table(loaded.cfg, loaded.plan, loaded.preprocessor, loaded.tokenizer, loaded.model, path,
                         loaded.device, inference.show_progress, inference.batch_size, inference.precision,
                         inference.compile)


def write_predictions(path: Path, ids: np.ndarray, logits: np.ndarray, id_column: str,
                      pred_column: str = "pred") -> None:
    """`ID,pred` CSV, written to a temporary name first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame({id_column: ids, pred_column: logits.argmax(axis=1)}).to_csv(tmp, index=False)
    os.replace(tmp, path)


def save_logits(path: Path, ids: np.ndarray, logits: np.ndarray) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
    np.savez(tmp, ids=ids.astype(str), logits=logits.astype(np.float32))
    os.replace(tmp, path)


def distribution_table(plan: TrainingPlan | ClassicalPlan, predicted: np.ndarray) -> str:
    """Predicted class counts beside the training distribution, as users inspect them."""
    return format_distribution("class", {
        "predicted": class_distribution(predicted, plan.num_labels),
        "training": plan.train_class_counts,
    }, plan.label_names)
