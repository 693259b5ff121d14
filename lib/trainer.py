"""One fine-tuning run, top to bottom: prepare, train with evaluation, select, finish the folder.

`train_new` checks every input before a run folder exists, so bad input leaves nothing behind;
`resume` rebuilds the same run from its folder and continues from the last saved state. Both end in
`_fit`, whose loop is: per epoch, per accumulation window, forward/backward each micro-batch, one
optimizer step, log, evaluate when due, checkpoint, and stop early or on request.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lib import amp
from lib.backbone import load_classifier, prepare_backbone, scratch_preset
from lib.batching import EncodedTexts, collate, encode, padding_efficiency, training_batches
from lib.checkpoint import atomic_directory, existing_directory, load_state, rng_state, save_state, set_rng_state
from lib.config import TrainConfig
from lib.data import Splits, class_distribution, load_splits
from lib.errors import UserError
from lib.evaluate import predict_logits
from lib.logger import MetricsLogger
from lib.losses import FocalLoss, auto_alpha
from lib.metrics import classification_metrics, classification_report, format_report
from lib.optim import build_adamw
from lib.plan import TrainingPlan, default_learning_rate, step_counts
from lib.predict import predict_table, write_predictions
from lib.preprocess import TextPreprocessor
from lib.progress import progress_bar
from lib.run_folder import RunFolder, environment_record, finish, new_run_folder, open_unfinished
from lib.schedule import lr_multiplier, set_learning_rate
from lib.selection import BestTracker, EarlyStopping

log = logging.getLogger(__name__)


class StopRequest:
    """Asks the loop to checkpoint and stop after the current optimizer step (Ctrl-C sets it)."""

    def __init__(self) -> None:
        self.requested = False

    def should_stop(self, global_step: int) -> bool:
        return self.requested

    @contextmanager
    def on_sigint(self) -> Iterator[None]:
        """First Ctrl-C: stop cleanly after this step. Second Ctrl-C: abort at once."""
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("Ctrl-C: saving state after this step (press again to abort without saving)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class TrainingInterrupted(Exception):
    """Raised after the state was saved on request; carries the folder to resume."""

    def __init__(self, run_path: Path) -> None:
        super().__init__(f"interrupted; resume with: python train.py --resume {run_path}")
        self.run_path = run_path


@dataclass
class LoopState:
    """Counters and trackers saved with each checkpoint; everything else is rebuilt from config."""

    epoch: int = 0
    windows_done: int = 0  # accumulation windows finished in `epoch`
    global_step: int = 0
    schedule_step: int = 0  # optimizer steps actually applied (fp16 overflow steps do not count)
    samples_seen: int = 0
    train_seconds: float = 0.0
    stop_training: bool = False
    loss_since_log: float = 0.0
    windows_since_log: int = 0
    last_eval_step: int = -1
    eval_seconds: float = 0.0
    eval_rows: int = 0
    early_stopping: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)


@dataclass
class Session:
    """Everything one run needs in memory, built by `train_new` or `resume`."""

    cfg: TrainConfig
    run: RunFolder
    plan: TrainingPlan
    splits: Splits
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train_data: EncodedTexts
    val_data: EncodedTexts
    device: torch.device
    show_progress: bool


def train_new(cfg: TrainConfig, *, overwrite: bool = False, show_progress: bool = False,
              argv: list[str] | None = None, stop: StopRequest | None = None) -> RunFolder:
    """Train a new run from `cfg`; returns the finished run folder."""
    device = amp.resolve_device(cfg.device)
    precision = amp.resolve_precision(cfg.precision, device)
    _seed_everything(cfg.seed)
    splits = load_splits(cfg)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns,
                                    cfg.special_pattern_min_count, cfg.num_rare_words_to_remove)
    train_texts = preprocessor.fit(splits.train.texts).transform(splits.train.texts)
    val_texts = preprocessor.transform(splits.val.texts)
    tokenizer, model = prepare_backbone(cfg.model, train_texts, preprocessor.special_tokens, splits.num_labels,
                                        splits.label_names, cfg.dropout_rate, cfg.scratch_vocab_size)
    max_length = _resolve_max_length(cfg, tokenizer, train_texts, model)
    train_data = encode(tokenizer, train_texts, max_length, splits.train.labels)
    val_data = encode(tokenizer, val_texts, max_length, splits.val.labels)
    plan = _make_plan(cfg, splits, tokenizer, preprocessor, max_length, device, precision,
                      from_scratch=scratch_preset(cfg.model) is not None)

    run = new_run_folder(cfg.output_dir, cfg.run_name, cfg.model, overwrite)
    try:
        cfg.save(run.config)
        run.write_json(run.plan, plan.to_dict())
        run.write_json(run.environment, environment_record(device, argv or []))
        preprocessor.save(run.preprocessor)
        tokenizer.save_pretrained(run.tokenizer)
        session = Session(cfg, run, plan, splits, tokenizer, model.to(device), train_data, val_data, device,
                          show_progress)
        return _fit(session, LoopState(), optimizer_state=None, scaler_state=None, overwrite=overwrite,
                    stop=stop or StopRequest())
    except BaseException:
        if existing_directory(run.last) is None:  # nothing to resume from: leave no folder behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def resume(path: Path, *, show_progress: bool = False, stop: StopRequest | None = None) -> RunFolder:
    """Continue an unfinished run from its last saved state, with the config it was started with."""
    run = open_unfinished(path)
    cfg = TrainConfig.load(run.config)
    state = load_state(run.training_state)
    plan = TrainingPlan.load(run.plan)
    device = amp.resolve_device(cfg.device)
    splits = load_splits(cfg)
    if splits.num_labels != plan.num_labels or len(splits.train) != sum(plan.train_class_counts):
        raise UserError(f"--resume: the data behind {cfg.train_file} changed since {run.path} started")
    preprocessor = TextPreprocessor.load(run.preprocessor)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    model = load_classifier(existing_directory(run.last), plan.num_labels, plan.label_names, None)
    train_data = encode(tokenizer, preprocessor.transform(splits.train.texts), plan.max_length, splits.train.labels)
    val_data = encode(tokenizer, preprocessor.transform(splits.val.texts), plan.max_length, splits.val.labels)
    loop = LoopState(**state["loop"])
    set_rng_state(state["rng"])
    log.info("resuming %s at epoch %d, step %d", run.path, loop.epoch, loop.global_step)
    session = Session(cfg, run, plan, splits, tokenizer, model.to(device), train_data, val_data, device,
                      show_progress)
    return _fit(session, loop, state["optimizer"], state["scaler"], overwrite=False, stop=stop or StopRequest())


def _fit(s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None,
         overwrite: bool, stop: StopRequest) -> RunFolder:
    cfg, plan, model = s.cfg, s.plan, s.model
    optimizer = build_adamw(model, plan.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                            cfg.adam_epsilon, fused=s.device.type in ("cpu", "cuda"))
    scaler = amp.make_grad_scaler(plan.precision, s.device)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        scaler.load_state_dict(scaler_state)
    train_loss = _make_loss(cfg, plan).to(s.device)
    val_loss = _make_loss(cfg, plan)
    early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_threshold)
    best = BestTracker(cfg.selection_metric)
    if loop.early_stopping:
        early_stopping.load_state_dict(loop.early_stopping)
        best.load_state_dict(loop.best)
    parameters = [p for p in model.parameters() if p.requires_grad]
    lengths = s.train_data.lengths
    efficiency = padding_efficiency(lengths, training_batches(lengths, cfg.per_device_train_batch_size, cfg.seed,
                                                              0, cfg.group_by_length))
    logger = MetricsLogger(s.run.path, resume_step=loop.global_step or None)
    log_file = _attach_log_file(s.run.path / "train.log")
    log.info("%s: %d train / %d val rows, %d classes, max length %d, %d steps (%d per epoch, %d warmup), "
             "lr %g, %s on %s, padding efficiency %.1f%%", s.run.path, len(s.train_data), len(s.val_data),
             plan.num_labels, plan.max_length, plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
             plan.learning_rate, plan.precision, s.device, 100 * efficiency)
    pending_loss = torch.zeros((), device=s.device)  # summed on the device; read only when logging

    def fold_pending_loss() -> None:
        loop.loss_since_log += float(pending_loss)
        pending_loss.zero_()

    def evaluate() -> None:
        started = time.perf_counter()
        logits = predict_logits(model, s.val_data, cfg.per_device_eval_batch_size, plan.precision, s.device,
                                "eval", s.show_progress)
        loop.eval_seconds += time.perf_counter() - started
        loop.eval_rows += len(s.val_data)
        metrics = classification_metrics(logits, s.splits.val.labels, val_loss, plan.label_names)
        epoch_float = loop.global_step / plan.steps_per_epoch
        logger.log("val", loop.global_step, epoch_float, metrics)
        improved = best.update(metrics, loop.global_step, epoch_float)
        if improved:
            _save_best(s, logits)
        loop.stop_training = early_stopping.update(metrics["loss"])
        loop.last_eval_step = loop.global_step
        log.info("step %d (epoch %.2f): val loss %.4f  nll %.4f  accuracy %.4f  macro_f1 %.4f%s%s",
                 loop.global_step, epoch_float, metrics["loss"], metrics["nll"], metrics["accuracy"],
                 metrics["macro_f1"], "  [best]" if improved else "",
                 "  [early stop]" if loop.stop_training else "")

    def checkpoint() -> None:
        fold_pending_loss()
        loop.early_stopping, loop.best = early_stopping.state_dict(), best.state_dict()
        with atomic_directory(s.run.last) as folder:
            model.save_pretrained(folder)
            save_state({"loop": vars(loop).copy(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state()}, folder / "training_state.pt")

    bar = progress_bar(plan.total_steps, "train", s.show_progress, unit="step", initial=loop.global_step)
    model.train()
    try:
        while loop.global_step < plan.total_steps and not loop.stop_training:
            batches = training_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, loop.epoch,
                                       cfg.group_by_length)
            windows = [batches[i:i + cfg.gradient_accumulation_steps]
                       for i in range(0, len(batches), cfg.gradient_accumulation_steps)]
            for window in windows[loop.windows_done:]:
                started = time.perf_counter()
                pending_loss += amp.accumulate_window(model, [collate(s.train_data, rows) for rows in window],
                                                      train_loss, scaler, plan.precision, s.device)
                lr = set_learning_rate(optimizer, lr_multiplier(cfg.lr_scheduler_type, loop.schedule_step,
                                                                plan.warmup_steps, plan.total_steps))
                outcome = amp.optimizer_step(parameters, optimizer, scaler, cfg.max_grad_norm)
                loop.schedule_step += int(outcome.applied)
                loop.global_step += 1
                loop.windows_done += 1
                loop.windows_since_log += 1
                loop.samples_seen += sum(len(rows) for rows in window)
                loop.train_seconds += time.perf_counter() - started
                bar.update(1)
                if loop.global_step % cfg.logging_steps == 0:
                    fold_pending_loss()
                    _log_train(logger, loop, plan, lr, outcome.grad_norm, bar)
                if cfg.eval_steps is not None and loop.global_step % cfg.eval_steps == 0:
                    evaluate()
                    checkpoint()
                if loop.stop_training or loop.global_step >= plan.total_steps:
                    break
                if stop.should_stop(loop.global_step):
                    checkpoint()
                    raise TrainingInterrupted(s.run.path)
            else:
                loop.epoch, loop.windows_done = loop.epoch + 1, 0
            if loop.last_eval_step != loop.global_step:
                evaluate()
                checkpoint()
        return _finish(s, best, loop, val_loss, efficiency, logger, overwrite)
    finally:
        bar.close()
        logger.close()
        _detach_log_file(log_file)


def _make_loss(cfg: TrainConfig, plan: TrainingPlan) -> FocalLoss:
    gamma = cfg.focal_loss_gamma if cfg.uses_focal_loss else 0.0
    return FocalLoss(plan.num_labels, gamma, plan.focal_alpha, cfg.label_smoothing_factor)


def _log_train(logger: MetricsLogger, loop: LoopState, plan: TrainingPlan, lr: float,
               grad_norm: torch.Tensor, bar) -> None:
    loss = loop.loss_since_log / max(1, loop.windows_since_log)
    speed = loop.samples_seen / max(loop.train_seconds, 1e-9)
    logger.log("train", loop.global_step, loop.global_step / plan.steps_per_epoch,
               {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "samples_per_second": speed})
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.0f}")
    loop.loss_since_log, loop.windows_since_log = 0.0, 0


def _save_best(s: Session, logits: np.ndarray) -> None:
    with atomic_directory(s.run.best) as folder:
        s.model.save_pretrained(folder)
        s.tokenizer.save_pretrained(folder)
    s.run.save_val_logits(s.splits.val.ids, s.splits.val.labels, logits)


def _finish(s: Session, best: BestTracker, loop: LoopState, val_loss: FocalLoss, efficiency: float,
            logger: MetricsLogger, overwrite: bool) -> RunFolder:
    """Report on best/, predict the test file if asked, write result.json, then rename the folder."""
    saved = np.load(s.run.val_logits)
    report = classification_report(saved["logits"], saved["labels"], s.plan.label_names)
    table = format_report(report)
    logger.text("val/report", table, best.best_step or 0)
    result = {
        "best_step": best.best_step,
        "best_epoch": best.best_epoch,
        "selection_metric": best.metric,
        "best_value": best.best_value,
        "best": classification_metrics(saved["logits"], saved["labels"], val_loss, s.plan.label_names),
        "report": report,
        "stopped_early": loop.stop_training and loop.global_step < s.plan.total_steps,
        "global_step": loop.global_step,
        "epochs_completed": round(loop.global_step / s.plan.steps_per_epoch, 4),
        "train_seconds": round(loop.train_seconds, 2),
        "train_samples_per_second": round(loop.samples_seen / max(loop.train_seconds, 1e-9), 1),
        "eval_samples_per_second": round(loop.eval_rows / max(loop.eval_seconds, 1e-9), 1),
        "padding_efficiency": round(efficiency, 4),
    }
    if s.cfg.test_file:
        best_model = load_classifier(s.run.best, s.plan.num_labels, s.plan.label_names, None).to(s.device)
        ids, test_logits = predict_table(s.cfg, s.plan, TextPreprocessor.load(s.run.preprocessor), s.tokenizer,
                                         best_model, s.cfg.test_file, s.device, s.show_progress)
        write_predictions(s.run.submission, ids, test_logits, s.cfg.id_column)
        result["test_predicted_counts"] = class_distribution(test_logits.argmax(axis=1), s.plan.num_labels)
    s.run.write_json(s.run.result, result)
    (existing_directory(s.run.last) / "training_state.pt").unlink(missing_ok=True)
    log.info("best checkpoint (step %s) on validation:\n%s", best.best_step, table)
    logger.close()
    return finish(s.run, overwrite)


def _make_plan(cfg: TrainConfig, splits: Splits, tokenizer: PreTrainedTokenizerBase, preprocessor: TextPreprocessor,
               max_length: int, device: torch.device, precision: str, from_scratch: bool) -> TrainingPlan:
    train_counts = class_distribution(splits.train.labels, splits.num_labels)
    alpha = cfg.focal_loss_alpha
    if alpha == "auto":
        alpha = auto_alpha(train_counts)
    elif alpha is not None and len(alpha) != splits.num_labels:
        raise UserError(f"--alpha: {len(alpha)} weights given, expected one per class ({splits.num_labels})")
    micro, per_epoch, total, warmup = step_counts(cfg, len(splits.train))
    if cfg.lr_scheduler_type == "constant" and warmup:
        log.warning("--lr-scheduler-type constant ignores warmup (as in transformers); "
                    "use constant_with_warmup to warm up")
    return TrainingPlan(
        num_labels=splits.num_labels, label_names=list(splits.label_names), train_class_counts=train_counts,
        val_class_counts=class_distribution(splits.val.labels, splits.num_labels), max_length=max_length,
        learning_rate=default_learning_rate(cfg, from_scratch), focal_alpha=list(alpha) if alpha else None,
        special_tokens=preprocessor.special_tokens, device=str(device), precision=precision,
        micro_batches_per_epoch=micro, steps_per_epoch=per_epoch, total_steps=total, warmup_steps=warmup)


def _resolve_max_length(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                        model: PreTrainedModel) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    if cfg.max_length != "auto":
        if cfg.max_length > limit:
            raise UserError(f"--max-length {cfg.max_length}: the model accepts at most {limit} tokens")
        return int(cfg.max_length)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
    length = int(math.ceil(np.percentile(lengths, cfg.max_length_percentile) / 8) * 8)
    length = max(8, min(length, limit))
    log.info("max length %d tokens (p%g of training lengths; mean %.1f, longest %d)",
             length, cfg.max_length_percentile, float(np.mean(lengths)), max(lengths))
    return length


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lib").addHandler(handler)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger("lib").removeHandler(handler)
    handler.close()
