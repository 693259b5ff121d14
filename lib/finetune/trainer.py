"""One fine-tuning run, top to bottom: prepare, train with evaluation and selection, finish the folder.

`train_new` checks every input before a run folder exists, so bad input leaves nothing behind;
`resume` rebuilds the same run from its folder and continues from the last saved state. Both hand
a `FineTuning` task to the shared loop skeleton (`lib.loop.skeleton.run_loop`), then
`lib.finetune.finish` averages, reports, predicts and renames the folder. The task plugs its
techniques in at the loop's extension points: the parameter groups of the optimizer
(`lib.loop.optim`), the objective of a micro-batch (`lib.loop.step`) and weight averagers
(`lib.loop.averaging`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lib.core.device import make_grad_scaler, resolve_device
from lib.core.distributed import Distributed, init_distributed, shard, wrap_for_ddp
from lib.core.errors import UserError
from lib.core.files import atomic_directory, existing_directory
from lib.core.metrics_logger import MetricsLogger, attach_log_file, check_reporting, detach_log_file
from lib.core.progress import progress_bar
from lib.data.augment import augment_rows, parse_augment_spec
from lib.data.batching import collate, encode_ids, padding_efficiency
from lib.finetune.checkpoints import CheckpointStore
from lib.finetune.classical import train_classical
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig
from lib.finetune.evaluate import gathered_logits
from lib.finetune.finish import TrainedRun, finish_run
from lib.finetune.losses import FocalLoss
from lib.finetune.metrics import classification_metrics
from lib.finetune.plan import TrainingPlan
from lib.finetune.prepare import Session, epoch_batches, prepare_new, prepare_resumed
from lib.finetune.run_folder import RunFolder, new_run_folder, open_unfinished
from lib.finetune.selection import CheckpointSelector, EarlyStopping
from lib.finetune.techniques import adversarial_from_step, objectives, parameter_groups
from lib.loop import swa
from lib.loop.averaging import EMA, EpochSWA
from lib.loop.optim import build_adamw
from lib.loop.schedule import lr_multiplier, set_learning_rate, swa_lr_multiplier
from lib.loop.skeleton import run_loop
from lib.loop.state import LoopPosition, load_state, rng_state, save_state, set_rng_state
from lib.loop.step import AppliedSteps, WindowShare, accumulate_window, optimizer_step
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.loop.work_folder import environment_record
from lib.model.backbone import load_classifier
from lib.model.cls_only import cls_only_forward, reads_only_cls
from lib.model.step_kernels import TrainingKernels

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
    eval_seconds: float = 0.0
    eval_rows: int = 0
    selected_step: int | None = None  # the evaluation best/ holds
    epoch_end_steps: list[int] = field(default_factory=list)
    averagers: dict = field(default_factory=dict)  # each averager's state_dict, by name
    early_stopping: dict = field(default_factory=dict)
    selector: dict = field(default_factory=dict)


def train_new(cfg: TrainConfig, *, overwrite: bool = False, show_progress: bool = False,
              argv: list[str] | None = None, stop: StopRequest | None = None) -> RunFolder:
    """Train a new run from `cfg`; returns the finished run folder (on every rank under torchrun).

    Everything is read, checked and built in memory before the run folder exists, so bad input
    leaves nothing behind. `--model tfidf` trains the classical member instead (lib.finetune.classical).
    """
    if cfg.model == CLASSICAL_MODEL:
        return train_classical(cfg, overwrite=overwrite, argv=argv)
    check_reporting(cfg.report_to, cfg)
    ctx, ddp_device = init_distributed(cfg.device, cfg.ddp_backend)
    device = ddp_device or resolve_device(cfg.device)
    prepared = prepare_new(cfg, ctx, device)
    run = new_run_folder(cfg.output_dir, cfg.run_name, cfg.model, overwrite) if ctx.is_main else None
    try:
        if ctx.is_main:
            cfg.save(run.config)
            run.write_json(run.plan, prepared.plan.to_dict())
            run.write_json(run.initial_weights, prepared.initial_weights)
            run.write_json(run.environment, environment_record(device, argv or [], ctx.world_size))
            prepared.preprocessor.save(run.preprocessor)
            prepared.tokenizer.save_pretrained(run.tokenizer)
        run = RunFolder(Path(ctx.broadcast(str(run.path) if run else None)))
        session = Session.of(cfg, run, prepared, device, show_progress and ctx.is_main, ctx)
        torch.manual_seed(cfg.seed)  # dropout reads the global generator; preparation drew from forks of it
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
    check_reporting(cfg.report_to, cfg)
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
    task = FineTuning(s, loop, optimizer_state, scaler_state, stop)
    try:
        task.announce()
        s.model.train()
        run_loop(task, loop, stop, s.ctx, TrainingInterrupted(s.run.path))
        return finish_run(s, task.trained(), overwrite)
    finally:
        task.close()


class FineTuning:
    """The fine-tuning task the loop skeleton runs: its step, evaluation, epoch end and checkpoint."""

    def __init__(self, s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None,
                 stop: StopRequest):
        cfg, plan = s.cfg, s.plan
        self.s, self.cfg, self.plan, self.model, self.loop, self.ctx, self.stop = s, cfg, plan, s.model, loop, s.ctx, stop
        # the log file first, so that it records how the optimizer and the techniques were set up
        self.log_file = attach_log_file(s.run.path / "train.log") if s.ctx.is_main else None
        self.logger = (MetricsLogger(s.run.path, resume_step=loop.global_step or None, report_to=cfg.report_to,
                                     name=s.run.final_path.name, config=cfg, plan=plan.to_dict())
                       if s.ctx.is_main else None)
        if cfg.gradient_checkpointing:
            s.model.activation_checkpointing_enable({"use_reentrant": False})
        # forward/backward go through the DDP wrapper; evaluation and saving use the plain model
        self.trained_model = wrap_for_ddp(s.model, s.ctx, s.device)
        if cfg.compile:
            self.trained_model = torch.compile(self.trained_model, dynamic=True)
        self.augment = parse_augment_spec(cfg.augment)
        self.optimizer = build_adamw(self.model, parameter_groups(cfg, plan),
                                     (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon,
                                     fused=s.device.type in ("cpu", "cuda"))
        self.scaler = make_grad_scaler(plan.precision, s.device)
        self.applied_steps = AppliedSteps()
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            self.scaler.load_state_dict(scaler_state)
        self.objective, self.adversarial = objectives(cfg, plan, _make_loss(cfg, plan).to(s.device), s.device)
        self.adversarial_from = adversarial_from_step(cfg, plan)
        self.val_loss = _make_loss(cfg, plan)
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_threshold)
        self.selector = CheckpointSelector(cfg.selection_metric, cfg.max_loss_increase)
        if loop.early_stopping:
            self.early_stopping.load_state_dict(loop.early_stopping)
            self.selector.load_state_dict(loop.selector)
        self.store = CheckpointStore(s.run.path / "checkpoints", s.run.best, s.tokenizer, self.selector,
                                     cfg.swa_last_k, cfg.swa_select)
        self.averagers = self._averagers()
        self.swa_start_step = (swa.start_epoch(cfg.swa_start, math.ceil(cfg.num_train_epochs)) * plan.steps_per_epoch
                               if cfg.swa_start is not None else None)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.kernels = TrainingKernels.choose(s.model, s.device, cfg.compile)
        self.kernels.log_choice()
        if reads_only_cls(s.model):
            log.info("last layer: computed at [CLS] only, the one position the classifier reads")
        self.padding_efficiency = padding_efficiency(s.train_data.lengths, epoch_batches(cfg, s.train_data, 0, 1))
        self.pending_loss = torch.zeros((), device=s.device)  # summed on the device; read when logging
        self.bar = progress_bar(plan.total_steps, "train", s.show_progress, unit="step", initial=loop.global_step)
        self._windows: tuple[int, list] | None = None  # (epoch, its windows), built once per epoch

    def _averagers(self) -> list[EpochSWA | EMA]:
        """Weight averagers of this run, continued from the last checkpoint on resume (rank 0 only)."""
        cfg, plan = self.cfg, self.plan
        if not self.ctx.is_main:
            return []
        averagers: list[EpochSWA | EMA] = []
        if cfg.swa_start is not None:
            averagers.append(EpochSWA(swa.start_epoch(cfg.swa_start, math.ceil(cfg.num_train_epochs))))
        if cfg.ema_decay is not None:
            averagers.append(EMA(cfg.ema_decay))
        load = lambda folder: load_classifier(folder, plan.num_labels, plan.label_names, None)
        for averager in averagers:
            averager.restore(self.loop.averagers.get(averager.name, {}), existing_directory(self.s.run.last), load)
        return averagers

    def announce(self) -> None:
        s, plan, loop = self.s, self.plan, self.loop
        if loop.global_step:
            log.info("resuming %s at epoch %d, step %d", s.run.path, loop.epoch, loop.global_step)
        log.info("%s: %d train / %d val rows, %d classes, max length %d, %d steps (%d per epoch, %d warmup), "
                 "lr %g, %s on %s, padding efficiency %.1f%%", s.run.path, len(s.train_data), len(s.val_data),
                 plan.num_labels, plan.max_length, plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
                 plan.learning_rate, plan.precision, s.device, 100 * self.padding_efficiency)

    def close(self) -> None:
        self.bar.close()
        if self.logger is not None:
            self.logger.close()
            detach_log_file(self.log_file)
            self.logger = None

    # --- the task the skeleton runs --------------------------------------------------------------

    def windows(self, epoch: int) -> list[list[np.ndarray]]:
        if self._windows is None or self._windows[0] != epoch:
            batches = epoch_batches(self.cfg, self.s.train_data, epoch, self.ctx.world_size)
            accumulation = self.cfg.gradient_accumulation_steps
            self._windows = (epoch, [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)])
        return self._windows[1]

    def done(self) -> bool:
        loop = self.loop
        return (loop.stop_training or loop.global_step >= self.plan.total_steps
                or loop.epoch >= math.ceil(self.cfg.num_train_epochs))

    def evaluation_due(self, step: int, epoch_ended: bool) -> bool:
        return epoch_ended or (self.cfg.eval_steps is not None and step % self.cfg.eval_steps == 0)

    def train_step(self, window: list[np.ndarray]) -> None:
        """One optimizer step over a window of global micro-batches, each shared among the processes."""
        cfg, loop = self.cfg, self.loop
        started = time.perf_counter()
        samples = sum(len(rows) for rows in window)
        share = WindowShare(samples, self.scaler, self.ctx.world_size)
        objective = self.adversarial if self.adversarial and loop.global_step >= self.adversarial_from \
            else self.objective
        with self.kernels.step(), cls_only_forward(self.model):
            self.pending_loss += accumulate_window(self.trained_model, [self._local_batch(rows) for rows in window],
                                                   objective, share)
        loop.schedule_step += self.applied_steps.settle()  # the previous step's; this one's forward is queued
        lr = set_learning_rate(self.optimizer, self._lr_multiplier())
        outcome = optimizer_step(self.parameters, self.optimizer, self.scaler, cfg.max_grad_norm)
        self.applied_steps.add(outcome)
        step = loop.global_step + 1
        for averager in self.averagers:
            averager.after_step(self.model, step)
            loop.averagers[averager.name] = averager.state_dict()
        loop.windows_since_log += 1
        loop.samples_seen += samples
        loop.train_seconds += time.perf_counter() - started
        self.bar.update(1)
        if step % cfg.logging_steps == 0:
            self._fold_pending_loss()
            if self.logger is not None:
                self._log_train(step, lr, outcome.grad_norm)
            else:
                loop.loss_since_log, loop.windows_since_log = 0.0, 0

    def evaluate(self) -> None:
        s, loop = self.s, self.loop
        started = time.perf_counter()
        logits = gathered_logits(self.model, s.val_data, self.cfg.per_device_eval_batch_size, self.plan.precision,
                                 s.device, s.show_progress, self.ctx)
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
                self.store.select(chosen["step"])
        if selected_now:
            loop.selected_step = chosen["step"]
        self._evaluate_averages(epoch)
        loop.stop_training = self.early_stopping.update(metrics["loss"])
        if self.ctx.any(self.ctx.is_main and self.stop.prune_after(loop.global_step, epoch, metrics)):
            loop.stop_training = loop.pruned = True
        log.info("step %d (epoch %.2f): val loss %.4f  nll %.4f  accuracy %.4f  macro_f1 %.4f%s%s",
                 loop.global_step, epoch, metrics["loss"], metrics["nll"], metrics["accuracy"], metrics["macro_f1"],
                 f"  [selected: step {chosen['step']}]" if selected_now else "",
                 "  [pruned]" if loop.pruned else "  [early stop]" if loop.stop_training else "")

    def _evaluate_averages(self, epoch: float) -> None:
        """Score the moving averages beside the raw weights (rank 0; they are not candidates for best/)."""
        s = self.s
        for averager in self.averagers:
            model = averager.averaged()
            if isinstance(averager, EMA) and model is not None:
                logits = gathered_logits(model, s.val_data, self.cfg.per_device_eval_batch_size, self.plan.precision,
                                         s.device, False, Distributed())
                metrics = classification_metrics(logits, s.splits.val.labels, self.val_loss, self.plan.label_names)
                self.logger.log(f"val_{averager.name}", self.loop.global_step, epoch, metrics)
                log.info("step %d: %s val loss %.4f  accuracy %.4f  macro_f1 %.4f", self.loop.global_step,
                         averager.name.upper(), metrics["loss"], metrics["accuracy"], metrics["macro_f1"])

    def epoch_ended(self, epoch: int) -> None:
        loop = self.loop
        if loop.global_step not in loop.epoch_end_steps:
            loop.epoch_end_steps.append(loop.global_step)
        for averager in self.averagers:
            averager.after_epoch(self.model, epoch)
            loop.averagers[averager.name] = averager.state_dict()

    def checkpoint(self) -> None:
        loop = self.loop
        loop.schedule_step += self.applied_steps.settle()
        self._fold_pending_loss()
        rng_states = self.ctx.all_gather(rng_state())
        if not self.ctx.is_main:
            return
        loop.early_stopping, loop.selector = self.early_stopping.state_dict(), self.selector.state_dict()
        self.store.prune(loop.epoch_end_steps)
        with atomic_directory(self.s.run.last) as folder:
            self.model.save_pretrained(folder)
            for averager in self.averagers:
                averager.save(folder)
            save_state({"loop": vars(loop).copy(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng_states}, folder / "training_state.pt")

    # --- helpers --------------------------------------------------------------------------------

    def trained(self) -> TrainedRun:
        """What the end of the run needs from training."""
        averages = {a.name: (a.averaged(), a.n_averaged) for a in self.averagers if a.averaged() is not None}
        return TrainedRun(self.loop, self.selector, self.store, self.val_loss, self.logger, averages,
                          self.padding_efficiency, self.close)

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
        encoded = s.train_data.retokenized(rows, encode_ids(s.tokenizer, s.preprocessor.transform(noisy),
                                                            self.plan.max_length, self.cfg.truncation,
                                                            self.cfg.head_tokens))
        return collate(encoded, np.arange(len(rows)))

    def _lr_multiplier(self) -> float:
        """The schedule's multiplier, replaced by SWALR's annealing once averaging has started."""
        cfg, plan, step = self.cfg, self.plan, self.loop.schedule_step
        schedule = lambda at: lr_multiplier(cfg.lr_scheduler_type, at, plan.warmup_steps, plan.total_steps)
        if cfg.swa_lr is None:
            return schedule(step)
        start = self.swa_start_step
        if step < start:
            return schedule(step)
        anneal = cfg.swa_anneal_steps if cfg.swa_anneal_steps is not None else plan.steps_per_epoch
        return swa_lr_multiplier(step, start, anneal, cfg.swa_lr / plan.learning_rate, schedule(start))

    def _fold_pending_loss(self) -> None:
        if self.ctx.enabled:
            torch.distributed.all_reduce(self.pending_loss)  # each process holds its share of the mean
        self.loop.loss_since_log += float(self.pending_loss)
        self.pending_loss.zero_()

    def _log_train(self, step: int, lr: float, grad_norm: torch.Tensor) -> None:
        loop = self.loop
        loss = loop.loss_since_log / max(1, loop.windows_since_log)
        speed = loop.samples_seen / max(loop.train_seconds, 1e-9)
        self.logger.log("train", step, step / self.plan.steps_per_epoch,
                        {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "samples_per_second": speed})
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.0f}")
        loop.loss_since_log, loop.windows_since_log = 0.0, 0


def _make_loss(cfg: TrainConfig, plan: TrainingPlan) -> FocalLoss:
    gamma = cfg.focal_loss_gamma if cfg.uses_focal_loss else 0.0
    return FocalLoss(plan.num_labels, gamma, plan.focal_alpha, cfg.label_smoothing_factor)
