"""Masked-language-model pretraining, top to bottom: prepare, train on the shared loop skeleton, save a model folder.

`pretrain_new` prepares everything before the output folder exists (lib.pretrain.prepare), so bad
input leaves nothing behind; `resume_pretraining` rebuilds the same run from its folder. Both hand
a `Pretraining` task to `lib.loop.skeleton.run_loop`, the loop fine-tuning runs on too: per
accumulation window one optimizer step (`lib.loop.step`), evaluation and a checkpoint every
--eval-steps and on the last step, stop on request. Under torchrun every process trains its share
of each global micro-batch, masked exactly as a single process would mask it.

The output folder is a `save_pretrained` model + tokenizer, so `train.py --model <folder>` loads it as
it loads a hub model, with only the classifier new. Beside them: pretrain_config.json (the model's
config.json takes the usual name), plan.json, environment.json, preprocessor.json, metrics.jsonl,
tensorboard/, result.json, pretrain.log; while unfinished also checkpoint/ for --resume.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from lib.core.device import autocast, make_grad_scaler, resolve_device
from lib.core.distributed import Distributed, init_distributed, shard, wrap_for_ddp
from lib.core.errors import UserError
from lib.core.files import atomic_directory, existing_directory
from lib.core.metrics_logger import MetricsLogger, attach_log_file, detach_log_file
from lib.core.progress import progress_bar
from lib.data.batching import training_batches
from lib.data.mlm import IGNORE_INDEX, collate_mlm, masking_generator
from lib.loop import work_folder
from lib.loop.optim import DecayByShape, build_adamw
from lib.loop.schedule import lr_multiplier, set_learning_rate
from lib.loop.skeleton import run_loop
from lib.loop.state import LoopPosition, load_state, rng_state, save_state, set_rng_state
from lib.loop.step import AppliedSteps, WindowShare, accumulate_window, optimizer_step
from lib.loop.stop import StopRequest, TrainingInterrupted
from lib.model.mlm import MaskedPositions, masked_logits
from lib.model.step_kernels import TrainingKernels
from lib.pretrain import plan as planning
from lib.pretrain.config import PretrainConfig
from lib.pretrain.plan import PretrainPlan
from lib.pretrain.prepare import Corpus, prepare_new, prepare_resumed

log = logging.getLogger(__name__)

CONFIG_FILE = "pretrain_config.json"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "training_state.pt"
# --max-minutes times this many micro-batches, after one untimed warm-up (allocator, oneDNN kernels).
CALIBRATION_MICRO_BATCHES = 6


@dataclass
class LoopState(LoopPosition):
    """Counters saved with each checkpoint; everything else is rebuilt from the config."""

    tokens_seen: int = 0  # real (unpadded) tokens of the training batches, over every process
    masked_tokens_seen: int = 0
    train_seconds: float = 0.0  # forward, backward and optimizer steps only
    wall_seconds: float = 0.0  # the whole run, preparation and evaluations included, over all sessions
    loss_since_log: float = 0.0  # summed cross entropy of the masked tokens since the last log line
    masked_since_log: int = 0
    tokens_since_log: int = 0
    seconds_since_log: float = 0.0
    initial_eval: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)


@dataclass
class Session:
    """Everything one run needs in memory, built by `pretrain_new` or `resume_pretraining`."""

    cfg: PretrainConfig
    plan: PretrainPlan
    work: Path
    corpus: Corpus
    device: torch.device
    ctx: Distributed
    show_progress: bool
    started: float  # perf_counter() when this session began: --max-minutes counts preparation too


def pretrain_new(cfg: PretrainConfig, *, overwrite: bool = False, show_progress: bool = False,
                 argv: list[str] | None = None, stop: StopRequest | None = None) -> Path:
    """Pretrain from `cfg` into `cfg.out`; returns the finished folder (on every process under torchrun)."""
    started = time.perf_counter()
    ctx, ddp_device = init_distributed(cfg.device, cfg.ddp_backend)
    device = ddp_device or resolve_device(cfg.device)
    final = Path(cfg.out)
    if final.name.endswith(work_folder.INCOMPLETE_SUFFIX):
        raise UserError(f"--out {cfg.out}: expected a folder name such as models/<name>")
    work = work_folder.claim(final, overwrite, "--out", "pretrain.py")
    corpus, plan = prepare_new(cfg, ctx, device)
    try:
        if ctx.is_main:
            work_folder.create(work)
            cfg.save(work / CONFIG_FILE)
            work_folder.write_json(work / "environment.json", work_folder.environment_record(device, argv or [],
                                                                                             ctx.world_size))
            corpus.preprocessor.save(work / "preprocessor.json")
            corpus.tokenizer.save_pretrained(work)
        ctx.barrier()
        torch.manual_seed(cfg.seed)  # dropout reads the global generator; preparation drew from forks of it
        session = Session(cfg, plan, work, corpus, device, ctx, show_progress and ctx.is_main, started)
        return _fit(session, LoopState(), None, None, overwrite, stop or StopRequest())
    except BaseException:
        if ctx.is_main and existing_directory(work / CHECKPOINT_DIR) is None:  # nothing to resume: leave nothing
            shutil.rmtree(work, ignore_errors=True)
        raise


def resume_pretraining(path: Path, *, show_progress: bool = False, stop: StopRequest | None = None) -> Path:
    """Continue an unfinished run from its last checkpoint, with the config it was started with."""
    started = time.perf_counter()
    work = _open_unfinished(path)
    cfg = PretrainConfig.load(work / CONFIG_FILE)
    checkpoint = existing_directory(work / CHECKPOINT_DIR)
    if checkpoint is None:
        raise UserError(f"--resume: {work} has no checkpoint yet; start the run again")
    plan = PretrainPlan.load(work / planning.FILE)
    state = load_state(checkpoint / STATE_FILE)
    ctx, ddp_device = init_distributed(cfg.device, cfg.ddp_backend)
    if len(state["rng"]) != ctx.world_size:
        raise UserError(f"--resume: {work} was trained by {len(state['rng'])} process(es); "
                        f"resume it with the same number (this launch has {ctx.world_size})")
    device = ddp_device or resolve_device(cfg.device)
    corpus = prepare_resumed(cfg, work, checkpoint, plan, ctx)
    loop = LoopState(**state["loop"])
    set_rng_state(state["rng"][ctx.rank])
    log.info("resuming %s at epoch %d, step %d of %d", work, loop.epoch, loop.global_step, plan.total_steps)
    session = Session(cfg, plan, work, corpus, device, ctx, show_progress and ctx.is_main, started)
    return _fit(session, loop, state["optimizer"], state["scaler"], False, stop or StopRequest())


def _fit(s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None, overwrite: bool,
         stop: StopRequest) -> Path:
    task = Pretraining(s, loop, optimizer_state, scaler_state)
    try:
        task.start()
        run_loop(task, loop, stop, s.ctx, TrainingInterrupted(s.work, "pretrain.py"))
        return task.finish(overwrite)
    finally:
        task.close()


class MaskedLMObjective:
    """Summed cross entropy over the masked tokens of a micro-batch (`weight` 0: a placeholder row)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision, self.device = precision, device

    def backward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], share: WindowShare) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits, labels = model(batch, self.device)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum") * batch.get("weight", 1.0)
        share.backward(loss)
        return loss.detach()


class Pretraining:
    """The pretraining task the loop skeleton runs."""

    def __init__(self, s: Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None):
        self.s, self.cfg, self.plan, self.loop, self.ctx = s, s.cfg, s.plan, loop, s.ctx
        self.model = s.corpus.model.to(s.device)
        self.trained_model = wrap_for_ddp(MaskedPositions(self.model), s.ctx, s.device)
        self.optimizer = build_adamw(self.model, DecayByShape(s.plan.learning_rate, s.cfg.weight_decay),
                                     (s.cfg.adam_beta1, s.cfg.adam_beta2), s.cfg.adam_epsilon,
                                     fused=s.device.type in ("cpu", "cuda"))
        self.scaler = make_grad_scaler(s.plan.precision, s.device)
        self.applied_steps = AppliedSteps()
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            self.scaler.load_state_dict(scaler_state)
        self.objective = MaskedLMObjective(s.plan.precision, s.device)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.wall_before = loop.wall_seconds  # spent by earlier sessions of this run
        self.eval_seconds = 0.0  # of the latest evaluation
        self.pending_loss = torch.zeros((), device=s.device)  # summed on the device; read when logging
        self.logger = MetricsLogger(s.work, resume_step=loop.global_step or None) if s.ctx.is_main else None
        self.log_file = attach_log_file(s.work / "pretrain.log") if s.ctx.is_main else None
        self.kernels = TrainingKernels.choose(self.model, s.device, packed=True)
        self.kernels.log_choice()
        self.bar = None
        self._windows: tuple[int, list] | None = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
            detach_log_file(self.log_file)
            self.logger = None

    def start(self) -> None:
        """The starting point of the held-out curves; with --max-minutes, the schedule's length."""
        s, cfg, loop = self.s, self.cfg, self.loop
        if loop.global_step == 0:
            self.evaluate()
            if cfg.max_minutes is not None:
                self.plan = s.plan = self.ctx.broadcast(self._plan_for_budget())
            if self.ctx.is_main:
                work_folder.write_json(s.work / planning.FILE, self.plan.to_dict())
        plan = self.plan
        log.info("%s: %s, %d train / %d held-out texts, %d sequences of <= %d tokens (%d tokens per epoch), "
                 "%d steps (%d per epoch, %d warmup, fixed by %s), lr %g, %s on %s%s", s.work, plan.model_source,
                 plan.train_texts, plan.held_out_texts, plan.train_sequences, cfg.max_length,
                 plan.train_tokens_per_epoch, plan.total_steps, plan.steps_per_epoch, plan.warmup_steps, plan.budget,
                 plan.learning_rate, plan.precision, s.device,
                 f", {self.ctx.world_size} processes" if self.ctx.enabled else "")
        self.bar = progress_bar(plan.total_steps, "pretrain", s.show_progress, unit="step", initial=loop.global_step)
        self.model.train()

    # --- the task the skeleton runs --------------------------------------------------------------

    def windows(self, epoch: int) -> list[tuple[int, list[np.ndarray]]]:
        """(index of its first micro-batch, global micro-batches) per accumulation window of `epoch`."""
        if self._windows is None or self._windows[0] != epoch:
            cfg = self.cfg
            batches = training_batches(self.s.corpus.train.lengths, cfg.per_device_train_batch_size * self.ctx.world_size,
                                       cfg.seed, epoch, group_by_length=False)
            accumulation = cfg.gradient_accumulation_steps
            self._windows = (epoch, [(start, batches[start:start + accumulation])
                                     for start in range(0, len(batches), accumulation)])
        return self._windows[1]

    def done(self) -> bool:
        if self.loop.global_step >= self.plan.total_steps:
            return True  # the clocks of the processes differ: only a time budget needs them to agree
        return self.cfg.max_minutes is not None and self.ctx.any(self._out_of_time())

    def evaluation_due(self, step: int, epoch_ended: bool) -> bool:
        return step % self.cfg.eval_steps == 0

    def train_step(self, window: tuple[int, list[np.ndarray]]) -> None:
        """One optimizer step; the loss is the mean over the window's masked tokens, on every process."""
        s, cfg, loop = self.s, self.cfg, self.loop
        started = time.perf_counter()
        first, rows = window
        # Each process masks the whole global micro-batch with its generator and keeps its rows, so the
        # masks, the masked-token count and the token count are those of a single process.
        batches = [collate_mlm(s.corpus.train, batch_rows, s.corpus.masker,
                               masking_generator(cfg.seed, loop.epoch, first + i)) for i, batch_rows in enumerate(rows)]
        masked = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in batches)
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
        share = WindowShare(max(1, masked), self.scaler, self.ctx.world_size)
        with self.kernels.step():
            self.pending_loss += accumulate_window(self.trained_model, [self._local(batch) for batch in batches],
                                                   self.objective, share) * share.denominator
        loop.schedule_step += self.applied_steps.settle()  # the previous step's; this one's forward is queued
        lr = set_learning_rate(self.optimizer, lr_multiplier(cfg.lr_scheduler_type, loop.schedule_step,
                                                             self.plan.warmup_steps, self.plan.total_steps))
        outcome = optimizer_step(self.parameters, self.optimizer, self.scaler, cfg.max_grad_norm)
        self.applied_steps.add(outcome)
        elapsed = time.perf_counter() - started
        loop.tokens_seen += tokens
        loop.masked_tokens_seen += masked
        loop.masked_since_log += masked
        loop.tokens_since_log += tokens
        loop.train_seconds += elapsed
        loop.seconds_since_log += elapsed
        self.bar.update(1)
        step = loop.global_step + 1
        if step % cfg.logging_steps == 0:
            self._log_train(step, lr, outcome.grad_norm)

    def evaluate(self) -> None:
        loop = self.loop
        started = time.perf_counter()
        metrics = self._held_out_metrics()
        self.eval_seconds = time.perf_counter() - started
        loop.last_eval = metrics
        if loop.global_step == 0:
            loop.initial_eval = metrics
        if self.logger is not None:
            self.logger.log("val", loop.global_step, self._epoch(), metrics)
        log.info("step %d (epoch %.2f): held-out MLM loss %.4f  masked-token accuracy %.4f", loop.global_step,
                 self._epoch(), metrics["loss"], metrics["accuracy"])

    def epoch_ended(self, epoch: int) -> None:
        pass

    def checkpoint(self) -> None:
        loop = self.loop
        loop.schedule_step += self.applied_steps.settle()
        self._fold_pending_loss()
        loop.wall_seconds = self._wall()
        rng_states = self.ctx.all_gather(rng_state())
        if not self.ctx.is_main:
            return
        with atomic_directory(self.s.work / CHECKPOINT_DIR) as folder:
            self.model.save_pretrained(folder)
            save_state({"loop": vars(loop).copy(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng_states}, folder / STATE_FILE)

    # --- the end of the run ---------------------------------------------------------------------

    def finish(self, overwrite: bool) -> Path:
        """Save model and result beside the tokenizer and rename the folder (rank 0; the others wait)."""
        if not self.ctx.is_main:
            return Path(self.ctx.broadcast(None))
        s, plan, loop = self.s, self.plan, self.loop
        self.model.save_pretrained(s.work)
        loop.wall_seconds = self._wall()
        if loop.global_step < plan.total_steps:
            log.warning("--max-minutes %g: time is up at step %d of %d; the schedule did not finish",
                        self.cfg.max_minutes, loop.global_step, plan.total_steps)
        result = {
            "model_source": plan.model_source,
            "global_step": loop.global_step,
            "total_steps": plan.total_steps,
            "stopped_by": plan.budget if loop.global_step >= plan.total_steps else "max_minutes (time up)",
            "epochs_completed": round(self._epoch(), 4),
            "tokens_seen": loop.tokens_seen,
            "masked_tokens_seen": loop.masked_tokens_seen,
            "train_seconds": round(loop.train_seconds, 2),
            "tokens_per_second": round(loop.tokens_seen / max(loop.train_seconds, 1e-9), 1),
            "wall_seconds": round(loop.wall_seconds, 2),
            "held_out": loop.last_eval,
            "initial_held_out": loop.initial_eval,
            "world_size": self.ctx.world_size,
        }
        work_folder.write_json(s.work / RESULT_FILE, result)
        for suffix in ("", ".old", ".tmp"):
            shutil.rmtree(s.work / (CHECKPOINT_DIR + suffix), ignore_errors=True)
        log.info("step %d: held-out MLM loss %.4f (from %.4f), masked-token accuracy %.4f (from %.4f); "
                 "%d tokens at %.0f tokens/s", loop.global_step, loop.last_eval["loss"], loop.initial_eval["loss"],
                 loop.last_eval["accuracy"], loop.initial_eval["accuracy"], loop.tokens_seen,
                 result["tokens_per_second"])
        self.close()
        return Path(self.ctx.broadcast(str(work_folder.finish(s.work, overwrite))))

    # --- helpers --------------------------------------------------------------------------------

    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's rows of a global micro-batch (a placeholder that weighs nothing if it has none)."""
        if not self.ctx.enabled:
            return batch
        rows = torch.as_tensor(shard(np.arange(len(batch["input_ids"])), self.ctx))
        if not len(rows):  # DDP needs a forward on every rank
            return {**{key: value[:1] for key, value in batch.items()}, "weight": 0.0}
        return {key: value[rows] for key, value in batch.items()}

    def _held_out_metrics(self) -> dict[str, float]:
        """Mean cross entropy and accuracy over every masked held-out token; each process scores a share."""
        mine = self.s.corpus.held_out[self.ctx.rank::self.ctx.world_size]
        loss, correct, count = evaluate_mlm(self.model, mine, self.plan.precision, self.s.device)
        if self.ctx.enabled:
            loss, correct, count = (sum(values) for values in zip(*self.ctx.all_gather((loss, correct, count))))
        return {"loss": loss / max(1, count), "accuracy": correct / max(1, count)}

    def _plan_for_budget(self) -> PretrainPlan:
        """Fix the schedule's length from the speed measured on the first micro-batches (--max-minutes).

        They run forward and backward without an update, with the RNG restored afterwards, so the run
        itself is the one a known length would give. The steps that fit are what is left of the budget,
        less one final evaluation, divided by a step plus its share of the periodic evaluations.
        """
        s, cfg = self.s, self.cfg
        micro_batches = self.windows(0)
        batches = [rows for _, window in micro_batches for rows in window]
        timings = []
        with torch.random.fork_rng():
            for index, rows in enumerate(batches[:CALIBRATION_MICRO_BATCHES + 1]):
                started = time.perf_counter()
                batch = self._local(collate_mlm(s.corpus.train, rows, s.corpus.masker,
                                                masking_generator(cfg.seed, 0, index)))
                share = WindowShare(max(1, int((batch["labels"] != IGNORE_INDEX).sum())), self.scaler)
                self.objective.backward(MaskedPositions(self.model), batch, share)
                if s.device.type == "cuda":
                    torch.cuda.synchronize(s.device)
                timings.append(time.perf_counter() - started)
        self.optimizer.zero_grad(set_to_none=True)
        step_seconds = float(np.median(timings[1:] or timings)) * cfg.gradient_accumulation_steps
        remaining = cfg.max_minutes * 60 - self._wall()
        plan = planning.fit_to_minutes(cfg, self.plan, step_seconds, self.eval_seconds, remaining)
        log.info("--max-minutes %g: %.3f s per step, %.1f s per evaluation, %.0f s left: %d steps fit",
                 cfg.max_minutes, step_seconds, self.eval_seconds, remaining,
                 planning.steps_for_budget(remaining, step_seconds, self.eval_seconds, cfg.eval_steps))
        return plan

    def _fold_pending_loss(self) -> None:
        if self.ctx.enabled:
            torch.distributed.all_reduce(self.pending_loss)
        self.loop.loss_since_log += float(self.pending_loss)
        self.pending_loss.zero_()

    def _log_train(self, step: int, lr: float, grad_norm: torch.Tensor) -> None:
        loop = self.loop
        self._fold_pending_loss()
        loss = loop.loss_since_log / max(1, loop.masked_since_log)
        speed = loop.tokens_since_log / max(loop.seconds_since_log, 1e-9)
        if self.logger is not None:
            self.logger.log("train", step, step / self.plan.steps_per_epoch,
                            {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_second": speed})
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tokens_s=f"{speed:.0f}")
        loop.loss_since_log, loop.masked_since_log, loop.tokens_since_log, loop.seconds_since_log = 0.0, 0, 0, 0.0

    def _epoch(self) -> float:
        return self.loop.global_step / self.plan.steps_per_epoch

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.s.started

    def _out_of_time(self) -> bool:
        return self.cfg.max_minutes is not None and self._wall() >= self.cfg.max_minutes * 60


def evaluate_mlm(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], precision: str,
                 device: torch.device) -> tuple[float, float, int]:
    """Summed cross entropy, correct predictions and count over every masked token of `batches`."""
    was_training = model.training
    model.eval()
    loss, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    with torch.no_grad():
        for batch in batches:
            with autocast(precision, device):
                logits, labels = masked_logits(model, batch, device)
            loss += F.cross_entropy(logits.float(), labels, reduction="sum")
            correct += (logits.argmax(dim=-1) == labels).sum()
            count += len(labels)
    model.train(was_training)
    return float(loss), float(correct), count


def _open_unfinished(path: Path) -> Path:
    """The folder named by --resume: `models/x.incomplete`, or `models/x` when only the former exists."""
    path = work_folder.unfinished(path)
    if not path.is_dir():
        raise UserError(f"--resume: no folder at {path}")
    if (path / RESULT_FILE).is_file():
        raise UserError(f"--resume: {path} is a finished run; nothing to resume")
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"--resume: {path} has no {CONFIG_FILE}; not a folder written by pretrain.py")
    return path
