"""The end of a fine-tuning run, after the loop: average, choose the kept model, report, predict the
test file, write result.json and rename the folder.

Under torchrun only rank 0 does this; the others wait and return the same folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    s.run.write_json(s.run.result, result)
    trained.store.remove()
    (existing_directory(s.run.last) / "training_state.pt").unlink(missing_ok=True)
    log.info("kept %s/ (selected by %s); on validation:\n%s", kept, selector.metric, table)
    trained.release()
    return finish(s.run, overwrite)


def _averaged_model(s: Session, trained: TrainedRun, models: dict, logits: dict) -> PreTrainedModel | None:
    """Build, evaluate and save swa/; with --swa-last-k K also report the averages of k < K."""
    cfg, plan, loop = s.cfg, s.plan, trained.loop
    load = lambda folder: load_classifier(folder, plan.num_labels, plan.label_names, None)
    if cfg.swa_last_k:
        ends = loop.epoch_end_steps
        if len(ends) < cfg.swa_last_k:
            log.warning("--swa-last-k %d: only %d epoch end(s) to average", cfg.swa_last_k, len(ends))
        candidates = {k: ends[-k:] for k in range(1, min(cfg.swa_last_k, len(ends)) + 1)}
    elif "swa" in trained.averages:
        candidates = {trained.averages["swa"][1]: None}
    else:
        return None
    averaged = k_logits = None
    for k, steps in candidates.items():
        averaged = (trained.averages["swa"][0] if steps is None
                    else swa.average_checkpoints([trained.store.folder(step) for step in steps], load))
        averaged.to(s.device)
        k_logits = gathered_logits(averaged, s.val_data, cfg.per_device_eval_batch_size, plan.precision, s.device,
                                   s.show_progress, Distributed())
        metrics = classification_metrics(k_logits, s.splits.val.labels, trained.val_loss, plan.label_names)
        models[f"swa_{k}"] = {"averaged_steps": steps, **metrics}
        log.info("SWA of the last %d epoch end(s): val loss %.4f  accuracy %.4f  macro_f1 %.4f",
                 k, metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
    models["swa"] = models.pop(f"swa_{k}")
    logits["swa"] = k_logits
    with atomic_directory(s.run.path / "swa") as folder:
        averaged.save_pretrained(folder)
        s.tokenizer.save_pretrained(folder)
    return averaged


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
