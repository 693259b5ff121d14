"""Masked-language-model pretraining, top to bottom: prepare the texts, train, evaluate, save a model folder.

`pretrain_new` reads the texts, normalises them with fine-tuning's `TextPreprocessor`, drops exact
duplicates, holds out a seeded slice, builds (WordPiece + BERT preset) or loads (`--init`) the
model, packs the rest into sequences and runs the loop; `resume_pretraining` rebuilds the same run
from its folder. The loop mirrors lib/trainer.py: per epoch, per accumulation window, forward and
backward each micro-batch, one optimizer step (`lib.optimizer_step`), log, evaluate and
checkpoint every --eval-steps, stop on request.

The output folder is a `save_pretrained` model + tokenizer, so `train.py --model <folder>` loads it as
it loads a hub model, with only the classifier new. Beside them: pretrain_config.json (the model's
config.json takes the usual name), plan.json, environment.json, preprocessor.json, metrics.jsonl,
tensorboard/, result.json, pretrain.log; while unfinished also checkpoint/ for --resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel,
                          PreTrainedModel, PreTrainedTokenizerBase)

from lib.core.cache import DiskCache, texts_digest, tokenizer_digest
from lib.core.device import autocast, make_grad_scaler, resolve_device, resolve_precision
from lib.core.errors import UserError
from lib.core.files import atomic_directory, atomic_write_text, existing_directory
from lib.core.metrics_logger import MetricsLogger, attach_log_file, detach_log_file
from lib.core.progress import progress_bar
from lib.data.batching import EncodedTexts, load_ids, save_ids, training_batches
from lib.data.mlm import (IGNORE_INDEX, DynamicMasker, collate_mlm, encode_for_packing, masking_generator,
                          pack_sequences, read_texts)
from lib.data.preprocess import TextPreprocessor
from lib.finetune.run_folder import INCOMPLETE_SUFFIX, RunFolder, finish
from lib.loop.work_folder import environment_record
from lib.loop.optim import DecayByShape, build_adamw
from lib.loop.schedule import lr_multiplier, set_learning_rate
from lib.loop.state import LoopPosition, load_state, rng_state, save_state, set_rng_state
from lib.loop.step import optimizer_step
from lib.loop.stop import StopRequest
from lib.model.backbone import SCRATCH_PRESETS, ScratchPreset, add_special_tokens, load_tokenizer, train_wordpiece
from lib.pretrain.config import PretrainConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "pretrain_config.json"
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"
PREPROCESSOR_FILE = "preprocessor.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "training_state.pt"
# --max-minutes times this many micro-batches, after one untimed warm-up (allocator, oneDNN kernels).
CALIBRATION_MICRO_BATCHES = 6


class PretrainingInterrupted(Exception):
    """Raised after the state was saved on request; carries the folder to resume."""

    def __init__(self, run_path: Path) -> None:
        super().__init__(f"interrupted; resume with: python pretrain.py --resume {run_path}")
        self.run_path = run_path


@dataclass(frozen=True)
class PretrainPlan:
    """What the config meant for these texts and this machine; saved as plan.json once the length is fixed."""

    model_source: str
    vocab_size: int
    special_tokens: list[str]
    texts_read: int
    duplicates_removed: int
    train_texts: int
    held_out_texts: int
    train_texts_sha256: str
    train_sequences: int
    train_tokens_per_epoch: int
    held_out_sequences: int
    held_out_masked_tokens: int
    learning_rate: float
    precision: str
    device: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    budget: str  # what fixed total_steps: max_steps, epochs or max_minutes
    seconds_per_step: float | None  # measured for --max-minutes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: Path) -> "PretrainPlan":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except FileNotFoundError:
            raise UserError(f"--resume: {path.parent} has no {path.name}; not a folder written by pretrain.py") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: not a plan written by this version of pretrain.py") from None


@dataclass
class LoopState(LoopPosition):
    """Counters saved with each checkpoint; everything else is rebuilt from the config."""

    tokens_seen: int = 0  # real (unpadded) tokens of the training batches
    masked_tokens_seen: int = 0
    train_seconds: float = 0.0  # forward, backward and optimizer steps only
    wall_seconds: float = 0.0  # the whole run, preparation and evaluations included, over all sessions
    loss_since_log: float = 0.0  # summed cross entropy of the masked tokens since the last log line
    masked_since_log: int = 0
    tokens_since_log: int = 0
    seconds_since_log: float = 0.0
    last_eval_step: int = -1
    initial_eval: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Texts:
    train: list[str]  # in packing order, shuffled with the seed
    held_out: list[str]
    read: int
    duplicates: int


@dataclass
class _Session:
    """Everything one run needs in memory, built by `pretrain_new` or `resume_pretraining`."""

    cfg: PretrainConfig
    plan: PretrainPlan
    run_path: Path
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    train: EncodedTexts
    held_out: list[dict[str, torch.Tensor]]
    masker: DynamicMasker
    device: torch.device
    show_progress: bool
    started: float  # perf_counter() when this session began: --max-minutes counts preparation too


def pretrain_new(cfg: PretrainConfig, *, overwrite: bool = False, show_progress: bool = False,
                 argv: list[str] | None = None, stop: StopRequest | None = None) -> Path:
    """Pretrain from `cfg` into `cfg.out`; returns the finished folder.

    Every input is checked before the output folder exists, so bad input leaves nothing behind.
    """
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    work = _work_folder(cfg.out, overwrite)
    init_tokenizer = _init_tokenizer(cfg.init) if cfg.init is not None else None  # an unreachable hub id fails now
    raw = read_texts(cfg.texts, cfg.text_column)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns).fit(raw)
    texts = _split_texts(preprocessor.transform(raw), cfg.eval_texts, cfg.seed)
    cache = DiskCache(Path(cfg.cache_dir) if cfg.cache_dir else None)
    tokenizer, model = _build_backbone(cfg, init_tokenizer, texts.train, preprocessor.special_tokens, cache)
    masker = DynamicMasker.from_tokenizer(tokenizer, cfg.mlm_probability, cfg.whole_word_masking)
    train, held_out = _pack(cache, tokenizer, texts, cfg.max_length)
    held_out_batches = _held_out_batches(held_out, masker, cfg.eval_batch_size, cfg.seed)
    plan = _make_plan(cfg, texts, tokenizer, preprocessor, train, held_out_batches, device, precision)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        cfg.save(work / CONFIG_FILE)
        _write_json(work / "environment.json", environment_record(device, argv or []))
        preprocessor.save(work / PREPROCESSOR_FILE)
        tokenizer.save_pretrained(work)
        torch.manual_seed(cfg.seed)  # dropout must not depend on what preparation drew
        session = _Session(cfg, plan, work, tokenizer, model.to(device), train, held_out_batches, masker, device,
                           show_progress, started)
        return _fit(session, LoopState(), None, None, overwrite, stop or StopRequest())
    except BaseException:
        if existing_directory(work / CHECKPOINT_DIR) is None:  # nothing to resume from: leave nothing behind
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
    plan = PretrainPlan.load(work / PLAN_FILE)
    state = load_state(checkpoint / STATE_FILE)
    device = resolve_device(cfg.device)
    preprocessor = TextPreprocessor.load(work / PREPROCESSOR_FILE)
    texts = _split_texts(preprocessor.transform(read_texts(cfg.texts, cfg.text_column)), cfg.eval_texts, cfg.seed)
    if texts_digest(texts.train) != plan.train_texts_sha256:
        raise UserError(f"--resume: the texts behind --texts changed since {work} started")
    tokenizer = AutoTokenizer.from_pretrained(work)
    model = load_mlm_model(checkpoint)
    masker = DynamicMasker.from_tokenizer(tokenizer, cfg.mlm_probability, cfg.whole_word_masking)
    train, held_out = _pack(DiskCache(Path(cfg.cache_dir) if cfg.cache_dir else None), tokenizer, texts,
                            cfg.max_length)
    loop = LoopState(**state["loop"])
    set_rng_state(state["rng"])
    log.info("resuming %s at epoch %d, step %d of %d", work, loop.epoch, loop.global_step, plan.total_steps)
    session = _Session(cfg, plan, work, tokenizer, model.to(device), train,
                       _held_out_batches(held_out, masker, cfg.eval_batch_size, cfg.seed), masker, device,
                       show_progress, started)
    return _fit(session, loop, state["optimizer"], state["scaler"], False, stop or StopRequest())


def _fit(s: _Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None, overwrite: bool,
         stop: StopRequest) -> Path:
    runner = _Pretraining(s, loop, optimizer_state, scaler_state)
    try:
        runner.train(stop)
        return runner.finish(overwrite)
    finally:
        runner.close()


class _Pretraining:
    """The machinery of one run: optimizer, scaler, logger, progress bar, checkpoints."""

    def __init__(self, s: _Session, loop: LoopState, optimizer_state: dict | None, scaler_state: dict | None):
        self.s, self.cfg, self.plan, self.model, self.loop = s, s.cfg, s.plan, s.model, loop
        self.optimizer = build_adamw(self.model, DecayByShape(s.plan.learning_rate, s.cfg.weight_decay),
                                     (s.cfg.adam_beta1, s.cfg.adam_beta2), s.cfg.adam_epsilon,
                                     fused=s.device.type in ("cpu", "cuda"))
        self.scaler = make_grad_scaler(s.plan.precision, s.device)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            self.scaler.load_state_dict(scaler_state)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.wall_before = loop.wall_seconds  # spent by earlier sessions of this run
        self.eval_seconds = 0.0  # of the latest evaluation
        self.pending_loss = torch.zeros((), device=s.device)  # summed on the device; read when logging
        self.logger = MetricsLogger(s.run_path, resume_step=loop.global_step or None)
        self.log_file = attach_log_file(s.run_path / "pretrain.log")
        self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.logger.close()
        detach_log_file(self.log_file)

    def train(self, stop: StopRequest) -> None:
        s, cfg, loop = self.s, self.cfg, self.loop
        if loop.global_step == 0:
            self._evaluate()  # the starting point of the held-out curves, and the cost of one evaluation
            if cfg.max_minutes is not None:
                self.plan = self._plan_for_budget()
            _write_json(s.run_path / PLAN_FILE, self.plan.to_dict())
        plan = self.plan
        log.info("%s: %s, %d train / %d held-out texts, %d sequences of <= %d tokens (%d tokens per epoch), "
                 "%d steps (%d per epoch, %d warmup, fixed by %s), lr %g, %s on %s", s.run_path, plan.model_source,
                 plan.train_texts, plan.held_out_texts, plan.train_sequences, cfg.max_length,
                 plan.train_tokens_per_epoch, plan.total_steps, plan.steps_per_epoch, plan.warmup_steps, plan.budget,
                 plan.learning_rate, plan.precision, s.device)
        self.bar = progress_bar(plan.total_steps, "pretrain", s.show_progress, unit="step", initial=loop.global_step)
        self.model.train()
        while loop.global_step < plan.total_steps and not self._out_of_time():
            batches = training_batches(s.train.lengths, cfg.batch_size, cfg.seed, loop.epoch, group_by_length=False)
            accumulation = cfg.gradient_accumulation_steps
            for start in range(loop.windows_done * accumulation, len(batches), accumulation):
                self._step(batches[start:start + accumulation], start)
                if loop.global_step % cfg.eval_steps == 0:
                    self._evaluate()
                    self._checkpoint()
                if loop.global_step >= plan.total_steps or self._out_of_time():
                    break
                if stop.should_stop(loop.global_step):
                    self._checkpoint()
                    raise PretrainingInterrupted(s.run_path)
            else:
                loop.epoch, loop.windows_done = loop.epoch + 1, 0
        if loop.global_step < plan.total_steps:
            log.warning("--max-minutes %g: time is up at step %d of %d; the schedule did not finish",
                        cfg.max_minutes, loop.global_step, plan.total_steps)

    def _step(self, window: list[np.ndarray], first_batch: int) -> None:
        """One optimizer step over a window of micro-batches; the loss is the mean over its masked tokens."""
        s, cfg, loop = self.s, self.cfg, self.loop
        started = time.perf_counter()
        batches = [collate_mlm(s.train, rows, s.masker, masking_generator(cfg.seed, loop.epoch, first_batch + i))
                   for i, rows in enumerate(window)]
        masked = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in batches)
        for batch in batches:
            self.pending_loss += self._backward(batch, masked)
        lr = set_learning_rate(self.optimizer, lr_multiplier(cfg.lr_scheduler_type, loop.schedule_step,
                                                             self.plan.warmup_steps, self.plan.total_steps))
        outcome = optimizer_step(self.parameters, self.optimizer, self.scaler, cfg.max_grad_norm)
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
        elapsed = time.perf_counter() - started
        loop.schedule_step += int(outcome.applied)
        loop.global_step += 1
        loop.windows_done += 1
        loop.tokens_seen += tokens
        loop.masked_tokens_seen += masked
        loop.masked_since_log += masked
        loop.tokens_since_log += tokens
        loop.train_seconds += elapsed
        loop.seconds_since_log += elapsed
        self.bar.update(1)
        if loop.global_step % cfg.logging_steps == 0:
            self._log_train(lr, outcome.grad_norm)

    def _backward(self, batch: dict[str, torch.Tensor], window_masked: int) -> torch.Tensor:
        """Backward of one micro-batch's share of the window's mean loss; returns its summed loss."""
        with autocast(self.plan.precision, self.s.device):
            logits, labels = masked_logits(self.model, batch, self.s.device)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        self.scaler.scale(loss / max(1, window_masked)).backward()
        return loss.detach()

    def _log_train(self, lr: float, grad_norm: torch.Tensor) -> None:
        loop = self.loop
        loop.loss_since_log += float(self.pending_loss)
        self.pending_loss.zero_()
        loss = loop.loss_since_log / max(1, loop.masked_since_log)
        speed = loop.tokens_since_log / max(loop.seconds_since_log, 1e-9)
        self.logger.log("train", loop.global_step, self._epoch(),
                        {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_second": speed})
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tokens_s=f"{speed:.0f}")
        loop.loss_since_log, loop.masked_since_log, loop.tokens_since_log, loop.seconds_since_log = 0.0, 0, 0, 0.0

    def _evaluate(self) -> None:
        loop = self.loop
        started = time.perf_counter()
        metrics = evaluate_mlm(self.model, self.s.held_out, self.plan.precision, self.s.device)
        self.eval_seconds = time.perf_counter() - started
        loop.last_eval_step, loop.last_eval = loop.global_step, metrics
        if loop.global_step == 0:
            loop.initial_eval = metrics
        self.logger.log("val", loop.global_step, self._epoch(), metrics)
        log.info("step %d (epoch %.2f): held-out MLM loss %.4f  masked-token accuracy %.4f", loop.global_step,
                 self._epoch(), metrics["loss"], metrics["accuracy"])

    def _plan_for_budget(self) -> PretrainPlan:
        """Fix the schedule's length from the speed measured on the first micro-batches (--max-minutes).

        They run forward and backward without an update, with the RNG restored afterwards, so the run
        itself is the one a known length would give. The steps that fit are what is left of the budget,
        less one final evaluation, divided by a step plus its share of the periodic evaluations.
        """
        s, cfg, plan = self.s, self.cfg, self.plan
        batches = training_batches(s.train.lengths, cfg.batch_size, cfg.seed, 0, group_by_length=False)
        timings = []
        with torch.random.fork_rng():
            for index, rows in enumerate(batches[:CALIBRATION_MICRO_BATCHES + 1]):
                started = time.perf_counter()
                batch = collate_mlm(s.train, rows, s.masker, masking_generator(cfg.seed, 0, index))
                self._backward(batch, int((batch["labels"] != IGNORE_INDEX).sum()))
                if s.device.type == "cuda":
                    torch.cuda.synchronize(s.device)
                timings.append(time.perf_counter() - started)
        self.optimizer.zero_grad(set_to_none=True)
        step_seconds = float(np.median(timings[1:] or timings)) * cfg.gradient_accumulation_steps
        remaining = cfg.max_minutes * 60 - self._wall()
        fitting = steps_for_budget(remaining, step_seconds, self.eval_seconds, cfg.eval_steps)
        if fitting < 1:
            raise UserError(f"--max-minutes {cfg.max_minutes:g}: {remaining:.0f} s are left after preparation, "
                            f"not enough for one step ({step_seconds:.1f} s) and the evaluations "
                            f"({self.eval_seconds:.1f} s each)")
        log.info("--max-minutes %g: %.3f s per step, %.1f s per evaluation, %.0f s left: %d steps fit",
                 cfg.max_minutes, step_seconds, self.eval_seconds, remaining, fitting)
        measured = dataclasses.replace(plan, seconds_per_step=round(step_seconds, 4))
        if plan.budget != "max_minutes" and plan.total_steps <= fitting:  # --max-steps / --epochs end first
            return measured
        return dataclasses.replace(measured, total_steps=fitting, budget="max_minutes",
                                   warmup_steps=_warmup_steps(cfg, fitting))

    def _checkpoint(self) -> None:
        loop = self.loop
        loop.loss_since_log += float(self.pending_loss)
        self.pending_loss.zero_()
        loop.wall_seconds = self._wall()
        with atomic_directory(self.s.run_path / CHECKPOINT_DIR) as folder:
            self.model.save_pretrained(folder)
            save_state({"loop": vars(loop).copy(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng_state()}, folder / STATE_FILE)

    def finish(self, overwrite: bool) -> Path:
        """Evaluate the final weights, save model and result beside the tokenizer, rename the folder."""
        s, plan, loop = self.s, self.plan, self.loop
        if loop.last_eval_step != loop.global_step:
            self._evaluate()
        s.model.save_pretrained(s.run_path)
        loop.wall_seconds = self._wall()
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
        }
        _write_json(s.run_path / RESULT_FILE, result)
        for suffix in ("", ".old", ".tmp"):
            shutil.rmtree(s.run_path / (CHECKPOINT_DIR + suffix), ignore_errors=True)
        log.info("step %d: held-out MLM loss %.4f (from %.4f), masked-token accuracy %.4f (from %.4f); "
                 "%d tokens at %.0f tokens/s", loop.global_step, loop.last_eval["loss"], loop.initial_eval["loss"],
                 loop.last_eval["accuracy"], loop.initial_eval["accuracy"], loop.tokens_seen,
                 result["tokens_per_second"])
        self.close()
        return finish(RunFolder(s.run_path), overwrite).path

    def _epoch(self) -> float:
        return self.loop.global_step / self.plan.steps_per_epoch

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.s.started

    def _out_of_time(self) -> bool:
        return self.cfg.max_minutes is not None and self._wall() >= self.cfg.max_minutes * 60


def masked_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary logits and labels at the masked positions only.

    The vocabulary projection is most of a small model's cost (hidden 128 x 12000 words against two
    layers of 128 x 512), and only ~15% of positions have a label, so the encoder's hidden states are
    gathered first and the prediction head runs on those rows: 3.8x the tokens/s of the full
    forward on the tiny preset (one CPU thread, batch 32 x 128). Models whose head is not a `cls` or
    `lm_head` module (BERT, RoBERTa families) take the full forward. Positions are found on the CPU
    labels, so a GPU never waits for a host sync here.
    """
    flat = torch.nonzero(batch["labels"].flatten() != IGNORE_INDEX).squeeze(1).to(device, non_blocking=True)
    labels = batch["labels"].flatten().to(device, non_blocking=True).index_select(0, flat)
    inputs = {"input_ids": batch["input_ids"].to(device, non_blocking=True),
              "attention_mask": batch["attention_mask"].to(device, non_blocking=True)}
    head = _prediction_head(model)
    if head is None:
        return model(**inputs).logits.flatten(0, 1).index_select(0, flat), labels
    hidden = model.base_model(**inputs).last_hidden_state
    return head(hidden.flatten(0, 1).index_select(0, flat)), labels


def evaluate_mlm(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], precision: str,
                 device: torch.device) -> dict[str, float]:
    """Mean cross entropy and accuracy over every masked token of `batches` (masked once, so comparable)."""
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
    return {"loss": float(loss) / max(1, count), "accuracy": float(correct) / max(1, count)}


def steps_for_budget(seconds: float, step_seconds: float, eval_seconds: float, eval_steps: int) -> int:
    """Optimizer steps that fit in `seconds`, with an evaluation every `eval_steps` and one at the end."""
    return max(0, math.floor((seconds - eval_seconds) / (step_seconds + eval_seconds / eval_steps)))


def load_mlm_model(name_or_path: str | Path) -> PreTrainedModel:
    """A masked-LM model, in fp32 whatever the checkpoint's dtype, with the pooler kept (see `_keep_pooler`)."""
    try:
        model = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32)
        encoder = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--init {name_or_path}: cannot load it as a masked-language model ({first_line})") from None
    _keep_pooler(model, encoder)
    return model


def _keep_pooler(model: PreTrainedModel, encoder: PreTrainedModel) -> None:
    """Give the MLM model the pooling layer its class drops (BERT's), frozen, so the folder is a whole encoder.

    Sequence classification reads the pooler: without it in the folder, `from_pretrained` would
    initialise it along with the classifier. MLM gives it no gradient, so it keeps the values of its
    source: the --init checkpoint's (trained by next-sentence prediction in BERT) or its initial ones.
    """
    pooler = getattr(encoder, "pooler", None)
    if getattr(model.base_model, "pooler", False) is None and pooler is not None:
        model.base_model.pooler = pooler.requires_grad_(False)


def _prediction_head(model: PreTrainedModel) -> torch.nn.Module | None:
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def _init_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = load_tokenizer(name_or_path)
    except UserError as error:  # its message names train.py's flag
        raise UserError(str(error).replace("--model", "--init", 1)) from None
    if tokenizer.mask_token_id is None:
        raise UserError(f"--init {name_or_path}: its tokenizer has no mask token; not a masked-language model")
    return tokenizer


def _build_backbone(cfg: PretrainConfig, init_tokenizer: PreTrainedTokenizerBase | None, train_texts: list[str],
                    special_tokens: list[str], cache: DiskCache) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and MLM model, with the preprocessor's special tokens registered; initial weights from the seed."""
    tokenizer = init_tokenizer if init_tokenizer is not None else _wordpiece(cache, train_texts, cfg.vocab_size,
                                                                              special_tokens)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = _scratch_model(SCRATCH_PRESETS[cfg.preset], tokenizer) if cfg.init is None else load_mlm_model(cfg.init)
        add_special_tokens(tokenizer, model, special_tokens)
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    if cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length}: {cfg.model_source} accepts at most {limit} tokens")
    return tokenizer, model


def _scratch_model(preset: ScratchPreset, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A BERT of `preset`, shaped as lib.backbone's scratch classifiers, with an MLM head."""
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden, num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads, intermediate_size=preset.intermediate,
        max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    _keep_pooler(model, BertModel(config))
    return model


def _wordpiece(cache: DiskCache, texts: list[str], vocab_size: int,
               special_tokens: list[str]) -> PreTrainedTokenizerBase:
    def build(folder: Path) -> None:
        started = time.perf_counter()
        train_wordpiece(texts, vocab_size, special_tokens).save_pretrained(folder)
        log.info("trained a %d-token WordPiece vocabulary on %d texts in %.1f s", vocab_size, len(texts),
                 time.perf_counter() - started)

    description = {"texts": texts_digest(texts), "vocab_size": vocab_size, "special_tokens": list(special_tokens)}
    return cache.load_or_build("mlm-wordpiece", description, build, AutoTokenizer.from_pretrained)


def _split_texts(texts: list[str], eval_texts: int, seed: int) -> _Texts:
    """Drop exact duplicates (so no held-out text is also trained on), then hold out a seeded slice."""
    unique = list(dict.fromkeys(texts))
    if eval_texts >= len(unique):
        raise UserError(f"--eval-texts {eval_texts}: the texts hold only {len(unique)} distinct ones; "
                        "hold out fewer")
    order = np.random.default_rng(seed).permutation(len(unique))
    log.info("%d texts, %d exact duplicates dropped, %d held out", len(texts), len(texts) - len(unique), eval_texts)
    return _Texts([unique[i] for i in order[eval_texts:]], [unique[i] for i in order[:eval_texts]],
                  len(texts), len(texts) - len(unique))


def _pack(cache: DiskCache, tokenizer: PreTrainedTokenizerBase, texts: _Texts,
          max_length: int) -> tuple[EncodedTexts, EncodedTexts]:
    """Token ids (from the cache when these texts met this tokenizer before), packed into sequences."""
    everything = texts.train + texts.held_out

    def build(folder: Path) -> None:
        started = time.perf_counter()
        save_ids(folder / "ids.npz", encode_for_packing(tokenizer, everything))
        log.info("tokenised %d texts in %.1f s", len(everything), time.perf_counter() - started)

    ids = cache.load_or_build("mlm-ids", {"texts": texts_digest(everything), "tokenizer": tokenizer_digest(tokenizer)},
                              build, lambda folder: load_ids(folder / "ids.npz"))
    split = len(texts.train)
    ends = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    return pack_sequences(ids[:split], max_length, *ends), pack_sequences(ids[split:], max_length, *ends)


def _held_out_batches(data: EncodedTexts, masker: DynamicMasker, batch_size: int,
                      seed: int) -> list[dict[str, torch.Tensor]]:
    """The held-out sequences masked once, from one seeded generator: every evaluation scores the same tokens."""
    generator = torch.Generator().manual_seed(seed)
    return [collate_mlm(data, np.arange(start, min(start + batch_size, len(data))), masker, generator)
            for start in range(0, len(data), batch_size)]


def _make_plan(cfg: PretrainConfig, texts: _Texts, tokenizer: PreTrainedTokenizerBase,
               preprocessor: TextPreprocessor, train: EncodedTexts, held_out: list[dict[str, torch.Tensor]],
               device: torch.device, precision: str) -> PretrainPlan:
    """The run's length from --max-steps / --epochs (one epoch when no budget is given).

    With --max-minutes the loop shortens it once it has measured the speed.
    """
    micro_batches = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = max(1, math.ceil(micro_batches / cfg.gradient_accumulation_steps))
    budgets = {}
    if cfg.max_steps is not None:
        budgets["max_steps"] = cfg.max_steps
    if cfg.epochs is not None or (cfg.max_steps is None and cfg.max_minutes is None):
        budgets["epochs"] = math.ceil((cfg.epochs or 1.0) * steps_per_epoch)
    budget = min(budgets, key=budgets.get) if budgets else "max_minutes"
    total = budgets.get(budget, 0)  # 0 until measured, for --max-minutes alone
    return PretrainPlan(
        model_source=cfg.model_source, vocab_size=len(tokenizer), special_tokens=preprocessor.special_tokens,
        texts_read=texts.read, duplicates_removed=texts.duplicates, train_texts=len(texts.train),
        held_out_texts=len(texts.held_out), train_texts_sha256=texts_digest(texts.train),
        train_sequences=len(train), train_tokens_per_epoch=int(train.lengths.sum()),
        held_out_sequences=sum(len(batch["input_ids"]) for batch in held_out),
        held_out_masked_tokens=sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in held_out),
        learning_rate=cfg.peak_learning_rate, precision=precision, device=str(device),
        steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=_warmup_steps(cfg, total), budget=budget,
        seconds_per_step=None)


def _warmup_steps(cfg: PretrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(total_steps * cfg.warmup_ratio)


def _work_folder(out: str, overwrite: bool) -> Path:
    """The `.incomplete` folder the run writes until it is done; refuses to clobber without --overwrite."""
    final = Path(out)
    if final.name in ("", ".", "..") or final.name.endswith(INCOMPLETE_SUFFIX):
        raise UserError(f"--out {out}: expected a folder name such as models/<name>")
    work = final.with_name(final.name + INCOMPLETE_SUFFIX)
    if not overwrite:
        if final.exists():
            raise UserError(f"--out: {final} already exists; choose another name or pass --overwrite")
        if work.exists():
            raise UserError(f"--out: an unfinished run {work} exists; resume it with "
                            f"python pretrain.py --resume {work}, or pass --overwrite")
    return work


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _open_unfinished(path: Path) -> Path:
    """The folder named by --resume: `models/x.incomplete`, or `models/x` when only the former exists."""
    if not path.name.endswith(INCOMPLETE_SUFFIX) and not path.exists():
        path = path.with_name(path.name + INCOMPLETE_SUFFIX)
    if not path.is_dir():
        raise UserError(f"--resume: no folder at {path}")
    if (path / RESULT_FILE).is_file():
        raise UserError(f"--resume: {path} is a finished run; nothing to resume")
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"--resume: {path} has no {CONFIG_FILE}; not a folder written by pretrain.py")
    return path
