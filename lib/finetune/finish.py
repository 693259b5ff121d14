"""The end of a fine-tuning run, after the loop: average, choose the kept model, report, predict the
test file, write result.json and rename the folder.

Under torchrun only rank 0 does this; the others wait and return the same folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from transformers import PreTrainedModel

from lib.core.distributed import Distributed
from lib.core.errors import UserError
from lib.core.files import atomic_directory, existing_directory
from lib.core.metrics_logger import MetricsLogger
from lib.data.tables import class_distribution
from lib.finetune.checkpoints import CheckpointStore
from lib.finetune.evaluate import gathered_logits
from lib.finetune.losses import FocalLoss
from lib.finetune.metrics import classification_metrics, classification_report, format_report
from lib.finetune.predict import predict_table, write_predictions
from lib.finetune.prepare import Session
from lib.finetune.run_folder import RunFolder, finish
from lib.finetune.selection import CheckpointSelector
from lib.loop import swa
from lib.loop.state import LoopPosition
from lib.model.backbone import load_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedRun:
    """What the end of a run needs from its loop."""

    loop: LoopPosition  # the fine-tuning LoopState
    selector: CheckpointSelector
    store: CheckpointStore
    val_loss: FocalLoss
    logger: MetricsLogger | None  # None on ranks other than 0
    averages: dict[str, tuple[PreTrainedModel, int]]  # kept during training, by name: (model, updates)
    padding_efficiency: float
    release: Callable[[], None]  # closes the logs and the progress bar before the folder is renamed


def finish_run(s: Session, trained: TrainedRun, overwrite: bool) -> RunFolder:
    """Finish the run in `s.run`; returns the renamed folder (on every rank)."""
    ctx = s.ctx
    if not ctx.is_main:
        return RunFolder(Path(ctx.broadcast(None)))
    run = _finish_main(s, trained, overwrite)
    return RunFolder(Path(ctx.broadcast(str(run.path))))


def _finish_main(s: Session, trained: TrainedRun, overwrite: bool) -> RunFolder:
    cfg, plan, loop, selector = s.cfg, s.plan, trained.loop, trained.selector
    chosen = selector.selected()
    if chosen is None:
        raise UserError(f"{s.run.path}: every evaluation gave NaN; no checkpoint to select "
                        "(lower --learning-rate?)")
    models = {"best": {"step": chosen["step"], "epoch": chosen["epoch"], **chosen["metrics"]}}
    logits = {"best": trained.store.logits(chosen["step"])}
    averaged = {"swa": _averaged_model(s, trained, models, logits), "ema": _ema_model(s, trained, models, logits)}
    kept = _choose_kept(cfg.keep, selector, models)
    kept_logits = logits[kept]
    s.run.save_val_logits(s.splits.val.ids, s.splits.val.labels, kept_logits)
    report = classification_report(kept_logits, s.splits.val.labels, plan.label_names)
    table = format_report(report)
    trained.logger.text("val/report", table, loop.global_step)
    result = {
        "kept": kept,
        "selection_metric": selector.metric,
        "max_loss_increase": cfg.max_loss_increase,
        "best_step": chosen["step"],
        "best": models[kept],
        "models": models,
        "report": report,
        "stopped_early": loop.stop_training and loop.global_step < plan.total_steps,
        "pruned": loop.pruned,
        "global_step": loop.global_step,
        "epochs_completed": round(loop.global_step / plan.steps_per_epoch, 4),
        "train_seconds": round(loop.train_seconds, 2),
        "train_samples_per_second": round(loop.samples_seen / max(loop.train_seconds, 1e-9), 1),
        "eval_samples_per_second": round(loop.eval_rows / max(loop.eval_seconds, 1e-9), 1),
        "padding_efficiency": round(trained.padding_efficiency, 4),
    }
    if cfg.test_file:
        model = averaged[kept] if kept in averaged else load_classifier(s.run.best, plan.num_labels, plan.label_names,
                                                                         None)
        ids, test_logits = predict_table(cfg, plan, s.preprocessor, s.tokenizer, model.to(s.device), cfg.test_file,
                                         s.device, s.show_progress)
        write_predictions(s.run.submission, ids, test_logits, cfg.id_column)
        result["test_predicted_counts"] = class_distribution(test_logits.argmax(axis=1), plan.num_labels)
    trained.logger.summary(result)
    s.run.write_json(s.run.result, result)
    trained.store.remove()
    (existing_directory(s.run.last) / "training_state.pt").unlink(missing_ok=True)
    log.info("kept %s/ (selected by %s); on validation:\n%s", kept, selector.metric, table)
    trained.release()
    return finish(s.run, overwrite)


def _averaged_model(s: Session, trained: TrainedRun, models: dict, logits: dict) -> PreTrainedModel | None:
    """Build, evaluate and save swa/: with --swa-last-k K the epoch ends --swa-select picks, with
    --swa-start the average kept during training."""
    cfg = s.cfg
    if cfg.swa_last_k:
        order = _epoch_ends_to_average(cfg.swa_last_k, cfg.swa_select, trained)
        if not order:
            log.warning("--swa-last-k %d: no epoch end to average; no swa/", cfg.swa_last_k)
            return None
        average = _greedy_average if cfg.swa_select == "greedy" else _average_each_k
        averaged, logits["swa"] = average(s, trained, order, models)
    elif "swa" in trained.averages:
        averaged, updates = trained.averages["swa"]
        metrics, logits["swa"] = _evaluate(s, trained, averaged)
        models["swa"] = {"averaged_steps": None, **metrics}
        log.info("SWA of %d epoch end(s) during training: val loss %.4f  accuracy %.4f  macro_f1 %.4f",
                 updates, metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
    else:
        return None
    with atomic_directory(s.run.path / "swa") as folder:
        averaged.save_pretrained(folder)
        s.tokenizer.save_pretrained(folder)
    return averaged


def _epoch_ends_to_average(k: int, select: str, trained: TrainedRun) -> list[int]:
    """Up to `k` epoch-end steps in the order they join the average: the latest first (`last`), or the
    best eligible first by the selection metric (`best`, `greedy`)."""
    ends = trained.loop.epoch_end_steps
    order = ends[::-1][:k] if select == "last" else trained.selector.ranked(ends)[:k]
    if len(order) < k:
        log.warning("--swa-last-k %d: only %d %sepoch end(s) to average", k, len(order),
                    "" if select == "last" else "eligible ")
    return order


def _average_each_k(s: Session, trained: TrainedRun, order: list[int],
                    models: dict) -> tuple[PreTrainedModel, np.ndarray]:
    """Average the first k of `order` for every k, reported as swa_k; the average of all of them is swa."""
    for k in range(1, len(order) + 1):
        steps = sorted(order[:k])
        averaged = swa.average_checkpoints([trained.store.folder(step) for step in steps], _loader(s))
        metrics, k_logits = _evaluate(s, trained, averaged)
        models[f"swa_{k}"] = {"averaged_steps": steps, **metrics}
        log.info("SWA of %d epoch end(s) %s: val loss %.4f  accuracy %.4f  macro_f1 %.4f", k, steps,
                 metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
    models["swa"] = models.pop(f"swa_{k}")
    return averaged, k_logits


def _greedy_average(s: Session, trained: TrainedRun, order: list[int],
                    models: dict) -> tuple[PreTrainedModel, np.ndarray]:
    """A greedy soup of the run's checkpoints: from the best epoch end, each next best joins only if the
    average then scores strictly better on the selection metric and stays inside --max-loss-increase.

    swa_k reports the k-th average tried (`joined`: whether its last step stayed); swa is the soup.
    """
    selector = trained.selector
    trials: list[tuple[list[int], int, dict]] = []  # (steps averaged, the step that was added, metrics)

    def evaluate(steps: list[int]) -> tuple[dict, np.ndarray, PreTrainedModel]:
        averaged = swa.average_checkpoints([trained.store.folder(step) for step in sorted(steps)], _loader(s))
        metrics, val_logits = _evaluate(s, trained, averaged)
        trials.append((sorted(steps), steps[-1], metrics))
        log.info("greedy SWA, trying steps %s: val loss %.4f  accuracy %.4f  macro_f1 %.4f", sorted(steps),
                 metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
        return metrics, val_logits, averaged

    keeps = lambda trial, current: selector.eligible(trial[0]) and selector.better(trial[0], current[0])
    soup, (metrics, val_logits, averaged) = swa.greedy_soup(order, evaluate, keeps)
    for k, (steps, added, trial_metrics) in enumerate(trials, start=1):
        models[f"swa_{k}"] = {"averaged_steps": steps, "joined": added in soup, **trial_metrics}
    models["swa"] = {"averaged_steps": sorted(soup), "tried_steps": order, **metrics}
    log.info("greedy SWA kept steps %s of %s (by %s)", sorted(soup), order, selector.metric)
    return averaged, val_logits


def _evaluate(s: Session, trained: TrainedRun, model: PreTrainedModel) -> tuple[dict, np.ndarray]:
    """Validation metrics and logits of an average, on the run's device (rank 0 alone)."""
    model.to(s.device)
    val_logits = gathered_logits(model, s.val_data, s.cfg.per_device_eval_batch_size, s.plan.precision, s.device,
                                 s.show_progress, Distributed())
    return classification_metrics(val_logits, s.splits.val.labels, trained.val_loss, s.plan.label_names), val_logits


def _loader(s: Session) -> Callable[[Path], PreTrainedModel]:
    return lambda folder: load_classifier(folder, s.plan.num_labels, s.plan.label_names, None)


def _ema_model(s: Session, trained: TrainedRun, models: dict, logits: dict) -> PreTrainedModel | None:
    """Evaluate and save ema/: the moving average of the weights at the end of training."""
    if "ema" not in trained.averages:
        return None
    model, updates = trained.averages["ema"]
    logits["ema"] = gathered_logits(model, s.val_data, s.cfg.per_device_eval_batch_size, s.plan.precision, s.device,
                                    s.show_progress, Distributed())
    metrics = classification_metrics(logits["ema"], s.splits.val.labels, trained.val_loss, s.plan.label_names)
    models["ema"] = {"updates": updates, **metrics}
    log.info("EMA of the weights (%d updates): val loss %.4f  accuracy %.4f  macro_f1 %.4f", updates,
             metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
    with atomic_directory(s.run.path / "ema") as folder:
        model.save_pretrained(folder)
        s.tokenizer.save_pretrained(folder)
    return model


def _choose_kept(keep: str, selector: CheckpointSelector, models: dict) -> str:
    """The asked-for model, or (auto) the best of best/swa/ema by the selection metric among eligible ones.

    Ties keep the earlier candidate in that order, so an average must beat best/ to be kept.
    """
    if keep != "auto":
        return keep if keep in models else "best"
    kept = "best"
    for name in ("swa", "ema"):
        if name not in models or not selector.eligible(models[name]):
            continue
        candidate, current = models[name][selector.metric], models[kept][selector.metric]
        if (candidate > current) if selector.greater_is_better else (candidate < current):
            kept = name
    return kept
