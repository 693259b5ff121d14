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
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from lib.core.device import make_grad_scaler, resolve_device, resolve_precision
from lib.core.distributed import Distributed, init_distributed, shard
from lib.core.errors import UserError
from lib.core.files import atomic_directory, existing_directory
from lib.core.metrics_logger import MetricsLogger, attach_log_file, detach_log_file
from lib.core.progress import progress_bar
from lib.data.augment import augment_rows, parse_augment_spec
from lib.data.batching import collate, padding_efficiency, tokenize
from lib.data.tables import class_distribution
from lib.finetune.checkpoints import CheckpointStore
from lib.finetune.config import TrainConfig
from lib.finetune.evaluate import predict_logits
from lib.finetune.losses import FocalLoss
from lib.finetune.metrics import classification_metrics, classification_report, format_report
from lib.finetune.plan import TrainingPlan
from lib.finetune.predict import predict_table, write_predictions
from lib.finetune.prepare import Prepared, epoch_batches, prepare_new, prepare_resumed
from lib.finetune.run_folder import RunFolder, environment_record, finish, new_run_folder, open_unfinished
from lib.finetune.selection import CheckpointSelector, EarlyStopping
from lib.loop import swa
from lib.loop.optim import build_adamw
from lib.loop.schedule import lr_multiplier, set_learning_rate, swa_lr_multiplier
from lib.loop.state import LoopPosition, load_state, rng_state, save_state, set_rng_state
from lib.loop.step import accumulate_window, optimizer_step
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.model.backbone import load_classifier

log = logging.getLogger(__name__)


@dataclass
class LoopState(LoopPosition):
    """Counters and trackers saved with each checkpoint; everything else is rebuilt from config."""

    samples_seen: int = 0
    train_seconds: float = 0.0
    stop_training: bool = False
    pruned: bool = False
    loss_since_log: float = 0.0
    windows_since_log: int = 0
    last_eval_step: int = -1
    eval_seconds: float = 0.0
    eval_rows: int = 0
    selected_step: int | None = None  # the evaluation best/ holds
    epoch_end_steps: list[int] = field(default_factory=list)
    swa_n_averaged: int = 0
    early_stopping: dict = field(default_factory=dict)
    selector: dict = field(default_factory=dict)


@dataclass
class Session(Prepared):
    """Everything one run needs in memory: the prepared inputs, where they go, how to run."""

    cfg: TrainConfig
    run: RunFolder
    device: torch.device
    show_progress: bool
    ctx: Distributed

    @classmethod
    def of(cls, cfg: TrainConfig, run: RunFolder, prepared: Prepared, device: torch.device, show_progress: bool,
           ctx: Distributed) -> "Session":
        inputs = {f.name: getattr(prepared, f.name) for f in fields(Prepared)}
        inputs["model"] = prepared.model.to(device)
        return cls(cfg=cfg, run=run, device=device, show_progress=show_progress, ctx=ctx, **inputs)


def train_new(cfg: TrainConfig, *, overwrite: bool = False, show_progress: bool = False,
              argv: list[str] | None = None, stop: StopRequest | None = None) -> RunFolder:
    """Train a new run from `cfg`; returns the finished run folder (on every rank under torchrun).

    Everything is read, checked and built in memory before the run folder exists, so bad input
    leaves nothing behind.
    """
    ctx, ddp_device = init_distributed(cfg.device, cfg.ddp_backend)
    device = ddp_device or resolve_device(cfg.device)
    prepared = prepare_new(cfg, ctx, device, resolve_precision(cfg.precision, device))
    run = new_run_folder(cfg.output_dir, cfg.run_name, cfg.model, overwrite) if ctx.is_main else None
    try:
        if ctx.is_main:
            cfg.save(run.config)
            run.write_json(run.plan, prepared.plan.to_dict())
            run.write_json(run.environment, environment_record(device, argv or [], ctx.world_size))
            prepared.preprocessor.save(run.preprocessor)
            prepared.tokenizer.save_pretrained(run.tokenizer)
        run = RunFolder(Path(ctx.broadcast(str(run.path) if run else None)))
        session = Session.of(cfg, run, prepared, device, show_progress and ctx.is_main, ctx)
        return _fit(session, LoopState(), optimizer_state=None, scaler_state=None, overwrite=overwrite,
                    stop=stop or StopRequest())
    except BaseException:
        if ctx.is_main and existing_directory(run.last) is None:  # nothing to resume from: leave nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def resume(path: Path, *, show_progress: bool = False, stop: StopRequest | None = None) -> RunFolder:
    """Continue an unfinished run from its last saved state, with the config it was started with."""
    run = open_unfinished(path)
    cfg = TrainConfig.load(run.config)
    state = load_state(run.training_state)
    ctx, ddp_device = init_distributed(cfg.device, cfg.ddp_backend)
    if len(state["rng"]) != ctx.world_size:
        raise UserError(f"--resume: {run.path} was trained by {len(state['rng'])} process(es); "
                        f"resume it with the same number (this launch has {ctx.world_size})")
    device = ddp_device or resolve_device(cfg.device)
    prepared = prepare_resumed(cfg, run, ctx)
    set_rng_state(state["rng"][ctx.rank])
    session = Session.of(cfg, run, prepared, device, show_progress and ctx.is_main, ctx)
    return _fit(session, LoopState(**state["loop"]), state["optimizer"], state["scaler"], overwrite=False,
                stop=stop or StopRequest())


def _fit(s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None,
         overwrite: bool, stop: StopRequest) -> RunFolder:
    runner = _RunLoop(s, loop, optimizer_state, scaler_state, stop)
    try:
        runner.train()
        return runner.finish(overwrite)
    finally:
        runner.close()


class _RunLoop:
    """The training machinery of one run: optimizer, scaler, trackers, logger, checkpoint store."""

    def __init__(self, s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None,
                 stop: StopRequest):
        cfg, plan = s.cfg, s.plan
        self.stop = stop
        self.s, self.cfg, self.plan, self.model, self.loop, self.ctx = s, cfg, plan, s.model, loop, s.ctx
        # forward/backward go through the DDP wrapper; evaluation and saving use the plain model
        self.trained_model = (DistributedDataParallel(s.model, device_ids=[s.device.index] if s.device.type == "cuda"
                                                      else None) if s.ctx.enabled else s.model)
        if cfg.compile:
            self.trained_model = torch.compile(self.trained_model, dynamic=True)
        self.augment = parse_augment_spec(cfg.augment)
        self.optimizer = build_adamw(self.model, plan.learning_rate, cfg.weight_decay,
                                     (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon,
                                     fused=s.device.type in ("cpu", "cuda"))
        self.scaler = make_grad_scaler(plan.precision, s.device)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            self.scaler.load_state_dict(scaler_state)
        self.train_loss = _make_loss(cfg, plan).to(s.device)
        self.val_loss = _make_loss(cfg, plan)
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_threshold)
        self.selector = CheckpointSelector(cfg.selection_metric, cfg.max_loss_increase)
        if loop.early_stopping:
            self.early_stopping.load_state_dict(loop.early_stopping)
            self.selector.load_state_dict(loop.selector)
        self.store = CheckpointStore(s.run.path / "checkpoints")
        self.running_average = None
        if cfg.swa_start is not None:
            self.swa_start_epoch = swa.start_epoch(cfg.swa_start, math.ceil(cfg.num_train_epochs))
            running = existing_directory(s.run.last)
            if loop.swa_n_averaged and running is not None:
                module = load_classifier(running / "swa_running", plan.num_labels, plan.label_names, None)
                self.running_average = swa.restore_running_average(module, loop.swa_n_averaged)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        lengths = s.train_data.lengths
        self.padding_efficiency = padding_efficiency(lengths, epoch_batches(cfg, s.train_data, 0, 1))
        self.logger = MetricsLogger(s.run.path, resume_step=loop.global_step or None) if s.ctx.is_main else None
        self.log_file = attach_log_file(s.run.path / "train.log") if s.ctx.is_main else None
        self.pending_loss = torch.zeros((), device=s.device)  # summed on the device; read when logging
        self.bar = progress_bar(plan.total_steps, "train", s.show_progress, unit="step", initial=loop.global_step)

    def close(self) -> None:
        self.bar.close()
        if self.logger is not None:
            self.logger.close()
            detach_log_file(self.log_file)

    # --- training -------------------------------------------------------------------------------

    def train(self) -> None:
        s, cfg, plan, loop = self.s, self.cfg, self.plan, self.loop
        if loop.global_step:
            log.info("resuming %s at epoch %d, step %d", s.run.path, loop.epoch, loop.global_step)
        log.info("%s: %d train / %d val rows, %d classes, max length %d, %d steps (%d per epoch, %d warmup), "
                 "lr %g, %s on %s, padding efficiency %.1f%%", s.run.path, len(s.train_data), len(s.val_data),
                 plan.num_labels, plan.max_length, plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
                 plan.learning_rate, plan.precision, s.device, 100 * self.padding_efficiency)
        self.model.train()
        epochs = math.ceil(cfg.num_train_epochs)
        while loop.global_step < plan.total_steps and loop.epoch < epochs and not loop.stop_training:
            batches = epoch_batches(cfg, s.train_data, loop.epoch, self.ctx.world_size)
            windows = [batches[i:i + cfg.gradient_accumulation_steps]
                       for i in range(0, len(batches), cfg.gradient_accumulation_steps)]
            for window in windows[loop.windows_done:]:
                self._step(window)
                if cfg.eval_steps is not None and loop.global_step % cfg.eval_steps == 0:
                    self._evaluate()
                    self._checkpoint()
                if loop.stop_training or loop.global_step >= plan.total_steps:
                    break
                if self.ctx.any(self.stop.should_stop(loop.global_step)):
                    self._checkpoint()
                    raise TrainingInterrupted(s.run.path)
            else:
                loop.epoch, loop.windows_done = loop.epoch + 1, 0
            if loop.last_eval_step != loop.global_step:
                self._evaluate()
            finished = loop.stop_training or loop.global_step >= plan.total_steps or loop.epoch >= epochs
            if loop.windows_done == 0 or finished:  # an epoch end; the end of training counts as one
                self._end_of_epoch(loop.epoch - 1 if loop.windows_done == 0 else loop.epoch)
            self._checkpoint()

    def _step(self, window: list[np.ndarray]) -> None:
        """One optimizer step over a window of global micro-batches, each shared among the processes."""
        s, cfg, loop = self.s, self.cfg, self.loop
        started = time.perf_counter()
        self.pending_loss += accumulate_window(
            self.trained_model, [self._local_batch(rows) for rows in window], self.train_loss, self.scaler,
            self.plan.precision, s.device, window_samples=sum(len(rows) for rows in window),
            world_size=self.ctx.world_size)
        lr = set_learning_rate(self.optimizer, self._lr_multiplier())
        outcome = optimizer_step(self.parameters, self.optimizer, self.scaler, cfg.max_grad_norm)
        loop.schedule_step += int(outcome.applied)
        loop.global_step += 1
        loop.windows_done += 1
        loop.windows_since_log += 1
        loop.samples_seen += sum(len(rows) for rows in window)
        loop.train_seconds += time.perf_counter() - started
        self.bar.update(1)
        if loop.global_step % cfg.logging_steps == 0:
            self._fold_pending_loss()
            if self.logger is not None:
                _log_train(self.logger, loop, self.plan, lr, outcome.grad_norm, self.bar)
            else:
                loop.loss_since_log, loop.windows_since_log = 0.0, 0

    def _local_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        mine = shard(rows, self.ctx)
        if not len(mine):  # DDP needs a forward on every rank: a placeholder row that weighs nothing
            return {**self._collate_train(rows[:1]), "weight": 0.0}
        return self._collate_train(mine)

    def _collate_train(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Training rows as tensors; with --augment, re-tokenised from freshly noised raw texts."""
        s = self.s
        if not self.augment.enabled:
            return collate(s.train_data, rows)
        noisy = augment_rows(s.splits.training_texts, rows, self.augment, self.cfg.seed, self.loop.epoch)
        encoded = s.train_data.retokenized(rows, tokenize(s.tokenizer, s.preprocessor.transform(noisy),
                                                          self.plan.max_length))
        return collate(encoded, np.arange(len(rows)))

    def _lr_multiplier(self) -> float:
        """The schedule's multiplier, replaced by SWALR's annealing once averaging has started."""
        cfg, plan, step = self.cfg, self.plan, self.loop.schedule_step
        schedule = lambda at: lr_multiplier(cfg.lr_scheduler_type, at, plan.warmup_steps, plan.total_steps)
        if cfg.swa_lr is None:
            return schedule(step)
        start = self.swa_start_epoch * plan.steps_per_epoch
        if step < start:
            return schedule(step)
        anneal = cfg.swa_anneal_steps if cfg.swa_anneal_steps is not None else plan.steps_per_epoch
        return swa_lr_multiplier(step, start, anneal, cfg.swa_lr / plan.learning_rate, schedule(start))

    def _fold_pending_loss(self) -> None:
        if self.ctx.enabled:
            torch.distributed.all_reduce(self.pending_loss)  # each process holds its share of the mean
        self.loop.loss_since_log += float(self.pending_loss)
        self.pending_loss.zero_()

    def _evaluate(self) -> None:
        s, loop = self.s, self.loop
        started = time.perf_counter()
        logits = self._val_logits(self.model, distributed=True)
        loop.eval_seconds += time.perf_counter() - started
        loop.eval_rows += len(s.val_data)
        metrics = classification_metrics(logits, s.splits.val.labels, self.val_loss, self.plan.label_names)
        epoch = loop.global_step / self.plan.steps_per_epoch
        self.selector.record(loop.global_step, epoch, metrics)
        chosen = self.selector.selected()
        selected_now = chosen is not None and chosen["step"] != loop.selected_step
        if self.ctx.is_main:
            self.logger.log("val", loop.global_step, epoch, metrics)
            self.store.save(loop.global_step, self.model, logits)
            if selected_now:
                self._materialise_best(chosen["step"])
        if selected_now:
            loop.selected_step = chosen["step"]
        loop.stop_training = self.early_stopping.update(metrics["loss"])
        if self.ctx.any(self.ctx.is_main and self.stop.prune_after(loop.global_step, epoch, metrics)):
            loop.stop_training = loop.pruned = True
        loop.last_eval_step = loop.global_step
        log.info("step %d (epoch %.2f): val loss %.4f  nll %.4f  accuracy %.4f  macro_f1 %.4f%s%s",
                 loop.global_step, epoch, metrics["loss"], metrics["nll"], metrics["accuracy"], metrics["macro_f1"],
                 f"  [selected: step {chosen['step']}]" if selected_now else "",
                 "  [pruned]" if loop.pruned else "  [early stop]" if loop.stop_training else "")

    def _val_logits(self, model: PreTrainedModel, distributed: bool = False) -> np.ndarray:
        """Validation logits; `distributed`: each process scores its share and all gather the whole."""
        ctx = self.ctx if distributed else Distributed()
        logits = predict_logits(model, self.s.val_data, self.cfg.per_device_eval_batch_size, self.plan.precision,
                                self.s.device, "eval", self.s.show_progress, part=(ctx.rank, ctx.world_size))
        parts = ctx.all_gather(logits)
        for part in parts[1:]:  # each row was scored by exactly one process; the others hold NaN there
            parts[0] = np.where(np.isnan(parts[0]), part, parts[0])
        return parts[0]

    def _materialise_best(self, step: int) -> None:
        with atomic_directory(self.s.run.best) as folder:
            shutil.copytree(self.store.folder(step), folder, dirs_exist_ok=True)
            (folder / "val_logits.npy").unlink()
            self.s.tokenizer.save_pretrained(folder)

    def _end_of_epoch(self, epoch: int) -> None:
        loop = self.loop
        if loop.global_step not in loop.epoch_end_steps:
            loop.epoch_end_steps.append(loop.global_step)
        if self.cfg.swa_start is not None and epoch >= self.swa_start_epoch and self.ctx.is_main:
            if self.running_average is None:
                self.running_average = swa.new_running_average(self.model)
            self.running_average.update_parameters(self.model)
            loop.swa_n_averaged = int(self.running_average.n_averaged)
            log.info("SWA: averaged %d epoch end(s)", loop.swa_n_averaged)

    def _checkpoint(self) -> None:
        loop = self.loop
        self._fold_pending_loss()
        rng_states = self.ctx.all_gather(rng_state())
        if not self.ctx.is_main:
            return
        loop.early_stopping, loop.selector = self.early_stopping.state_dict(), self.selector.state_dict()
        keep = self.selector.may_be_selected_later() | set(loop.epoch_end_steps[-self.cfg.swa_last_k:]
                                                          if self.cfg.swa_last_k else [])
        self.store.prune(keep)
        with atomic_directory(self.s.run.last) as folder:
            self.model.save_pretrained(folder)
            if self.running_average is not None:
                self.running_average.module.save_pretrained(folder / "swa_running")
            save_state({"loop": vars(loop).copy(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng_states}, folder / "training_state.pt")

    # --- the end of the run ---------------------------------------------------------------------

    def finish(self, overwrite: bool) -> RunFolder:
        """Average if asked, choose the kept model, report, predict the test file, rename the folder.

        Under torchrun only rank 0 does this; the others wait and return the same folder.
        """
        if not self.ctx.is_main:
            return RunFolder(Path(self.ctx.broadcast(None)))
        run = self._finish_main(overwrite)
        return RunFolder(Path(self.ctx.broadcast(str(run.path))))

    def _finish_main(self, overwrite: bool) -> RunFolder:
        s, cfg, plan, loop = self.s, self.cfg, self.plan, self.loop
        chosen = self.selector.selected()
        if chosen is None:
            raise UserError(f"{s.run.path}: every evaluation gave NaN; no checkpoint to select "
                            "(lower --learning-rate?)")
        models = {"best": {"step": chosen["step"], "epoch": chosen["epoch"], **chosen["metrics"]}}
        logits = {"best": self.store.logits(chosen["step"])}
        swa_model = self._averaged_model(models, logits)
        kept = self._choose_kept(models)
        kept_logits = logits[kept]
        s.run.save_val_logits(s.splits.val.ids, s.splits.val.labels, kept_logits)
        report = classification_report(kept_logits, s.splits.val.labels, plan.label_names)
        table = format_report(report)
        self.logger.text("val/report", table, loop.global_step)
        result = {
            "kept": kept,
            "selection_metric": self.selector.metric,
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
            "padding_efficiency": round(self.padding_efficiency, 4),
        }
        if cfg.test_file:
            model = swa_model if kept == "swa" else load_classifier(
                s.run.best, plan.num_labels, plan.label_names, None)
            ids, test_logits = predict_table(cfg, plan, s.preprocessor, s.tokenizer,
                                             model.to(s.device), cfg.test_file, s.device, s.show_progress)
            write_predictions(s.run.submission, ids, test_logits, cfg.id_column)
            result["test_predicted_counts"] = class_distribution(test_logits.argmax(axis=1), plan.num_labels)
        s.run.write_json(s.run.result, result)
        self.store.remove()
        (existing_directory(s.run.last) / "training_state.pt").unlink(missing_ok=True)
        log.info("kept %s/ (selected by %s); on validation:\n%s", kept, self.selector.metric, table)
        self.close()
        return finish(s.run, overwrite)

    def _averaged_model(self, models: dict, logits: dict) -> PreTrainedModel | None:
        """Build, evaluate and save swa/; with --swa-last-k K also report the averages of k < K."""
        s, cfg, plan, loop = self.s, self.cfg, self.plan, self.loop
        load = lambda folder: load_classifier(folder, plan.num_labels, plan.label_names, None)
        if cfg.swa_last_k:
            ends = loop.epoch_end_steps
            if len(ends) < cfg.swa_last_k:
                log.warning("--swa-last-k %d: only %d epoch end(s) to average", cfg.swa_last_k, len(ends))
            candidates = {k: ends[-k:] for k in range(1, min(cfg.swa_last_k, len(ends)) + 1)}
        elif self.running_average is not None:
            candidates = {loop.swa_n_averaged: None}
        else:
            return None
        averaged = None
        for k, steps in candidates.items():
            averaged = (self.running_average.module if steps is None
                        else swa.average_checkpoints([self.store.folder(step) for step in steps], load))
            averaged.to(s.device)
            k_logits = self._val_logits(averaged)
            metrics = classification_metrics(k_logits, s.splits.val.labels, self.val_loss, plan.label_names)
            models[f"swa_{k}"] = {"averaged_steps": steps, **metrics}
            log.info("SWA of the last %d epoch end(s): val loss %.4f  accuracy %.4f  macro_f1 %.4f",
                     k, metrics["loss"], metrics["accuracy"], metrics["macro_f1"])
        models["swa"] = models.pop(f"swa_{k}")
        logits["swa"] = k_logits
        with atomic_directory(s.run.path / "swa") as folder:
            averaged.save_pretrained(folder)
            s.tokenizer.save_pretrained(folder)
        return averaged

    def _choose_kept(self, models: dict) -> str:
        if "swa" not in models or self.cfg.keep == "best":
            return "best"
        if self.cfg.keep == "swa":
            return "swa"
        metric, swa_metrics, best = self.selector.metric, models["swa"], models["best"]
        better = (swa_metrics[metric] > best[metric]) if self.selector.greater_is_better \
            else (swa_metrics[metric] < best[metric])
        return "swa" if better and self.selector.eligible(swa_metrics) else "best"


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
