"""Speed benchmarks of issue 5: our loop against `transformers.Trainer` on the same work, plus the share
of step time inside kernels, torch.compile, the tokenisation cache, padding efficiency and time to quality.

    python -m bench.throughput                          # scratch:tiny, 20000 reviews, 1 epoch, fp32, every part
    python -m bench.throughput --quick                  # smoke version (2000 reviews, 3000 validation rows)
    python -m bench.throughput --parts trainer --preset mini --precision bf16
    python -m bench.throughput --parts kernels          # share of step time inside kernels, ours and the Trainer's
    python -m bench.throughput --parts compile          # our loop with and without --compile
    python -m bench.throughput --parts cache            # set-up time with a cold and a warm tokenisation cache
    python -m bench.throughput --parts quality          # training seconds to the Trainer's validation loss
    python -m bench.throughput --repeats 2                  # as reported on issue 5
    python -m bench.throughput --parts trainer --device cuda --preset base --precision fp16   # on a GPU

Every configuration runs in its own fresh process; `--repeats N` runs them all N times, interleaved,
and keeps the best of each measure. Each part prints the command that repeats it alone.

Fair comparison. One model folder (a `scratch:` preset built once by `lib.model.backbone.prepare_backbone`,
saved with `save_pretrained`) is the starting point of every run: ours loads it with
`train_new(model=<folder>)` through `from_pretrained` like a hub model; the Trainer loads the same
folder. Both sides get the same rows (`lib.finetune.splits.load_splits`), the same preprocessed texts, the same
token ids (checked), max length, batch sizes, epochs, precision, AdamW settings (HF's default optimizer
is fused AdamW, as ours), linear schedule with the same warm-up steps, clipping, and an evaluation at
every epoch end. Gradient accumulation is 1, so the transformers 5.x loss scaling bug under
accumulation (huggingface/transformers#47688) does not apply. The Trainer pads with
`DataCollatorWithPadding` (dynamic padding, to the longest row of each batch) and is run twice: with
its default random sampler and with `train_sampling_strategy="group_by_length"` (which also groups
its evaluation batches), so the table shows which part of our gain is length grouping and which is
the loop itself. Our runs do not use the tokenisation cache (both sides tokenise).

What is timed. Training, two ways on both sides: (1) the wall time of the optimizer steps (ours:
`result.json` train_seconds, the sum of collate + forward + backward + step; the Trainer: its epoch
loops between `on_epoch_begin` and `on_epoch_end`, the same work plus its per-step callbacks and
logging); (2) the steady rate: from one step's end to the next (our `StopRequest.should_stop` hook,
the Trainer's `on_step_end`), leaving out the first step and any interval holding an evaluation, in
wall time and in process CPU time. On a shared machine CPU time is the number to trust: other
processes stretch wall time, not the CPU time a side spends. Set-up (reading, preprocessing,
tokenising, building the model and optimizer) and evaluation are excluded everywhere and set-up is
shown apart. Prediction: the validation split, best of two passes, (a) from token ids already in
memory (`predict_logits` / `Trainer.predict`), (b) from the CSV file (`predict_table`; the Trainer side
reads the same file with `lib.data.tables.read_table`, applies the same preprocessor and tokenises). Peak
memory is the peak resident set size of each side's own process (every run is a fresh `spawn`
subprocess).

The kernels part (the second speed issue, target 3) runs ours grouped and the Trainer grouped once
more, each for one epoch. Steps 6-105 run under the torch profiler (KernelMeter: aten operators'
self time over the steps' wall time). Its own cost, about 4 µs per recorded operator, made such
steps 1.2x (mini) to 1.45x (tiny) longer, so that share is an estimate. The steps after it run
without the profiler, and
StepSections times each side's forward-and-backward call and its clip and optimizer step with
perf_counter: exact on a CPU, where every kernel runs synchronously. The rest of each step is the
loop's own work (batches, learning rate, bookkeeping, callbacks).

--compile runs our loop twice on the work of 'ours grouped', eager and compiled, each with a cold
inductor cache; dynamo's own timers give the compile seconds. The cache part times one run's set-up
(from `train_new()` to its first step, the ~1% of an epoch it trains does not matter) with an empty
`--cache-dir` and again with the filled one, for a scratch preset (WordPiece training and
tokenisation cached) and for the model folder (tokenisation only, as for a hub model).

Time to quality (the second speed issue, target 2). The Trainer at its faster setting (grouped) trains
`--epochs` on the work of the main comparison; its final validation loss is the target and its training seconds (timed as
above) the time to beat. Ours, TrainConfig defaults on the same options (length grouping on), then the
same with the token budget of 'ours, budget', trains for at most `--quality-epochs` (the linear schedule
spans them), evaluates every tenth of an epoch (`eval_steps`) and stops at the first evaluation at or
below the target (`_UntilLoss`, a `StopRequest.prune_after` hook); its time is `result.json`
train_seconds up to that evaluation. Set-up and evaluations are excluded on both sides. Our batching
and schedule may differ from the Trainer's; the loss must be reached, and a run that never reaches it
says so instead of giving a ratio. Whether one seed reaches the Trainer's loss within the same
schedule is close to a coin flip, so `--quality-seeds 11,13,15` runs the part once per seed (each its
own initial model and data order) and counts how often each of ours reached the loss, and at 1.5x.

Threads. Each side runs with `--threads` torch threads (default 1). On a machine shared with other
work, OpenMP threads that outnumber the free cores spin-wait on each other and a 2-thread run can be
10x slower than a 1-thread one, which would swamp the comparison; pass `--threads 0` on an idle
machine to use torch's default.

On a GPU (`--device cuda` or cuda:N, or `auto` where one is visible) both sides train on that one
GPU: CUDA_VISIBLE_DEVICES is narrowed to it for every side's process (the Trainer spreads over all
it sees with DataParallel). `--precision fp16` adds a GradScaler on both sides (ours from
`make_grad_scaler`, the Trainer's `fp16=True`), `--preset base` has BERT-base's shape, and the
tables add each side's peak of GPU memory allocated. The Trainer's epoch clock synchronises the GPU
at both ends; ours sums each step's host time (`result.json`), which on CUDA leaves out only the
work still queued when the epoch's last step returns. CPU-s rows mean little there, and the
kernels part runs on a CPU only.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/throughput.py): import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import math
import multiprocessing
import os
import resource
import shlex
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import transformers
from transformers import (AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase, PrinterCallback, Trainer,
                          TrainerCallback, TrainingArguments)

from lib.core.cache import DiskCache
from lib.core.cli import run_cli
from lib.core.device import DEVICE_FORMS, resolve_device, resolve_precision
from lib.core.distributed import Distributed
from lib.core.errors import UserError
from lib.data import batching
from lib.data.batching import encode, tokenize, trailing_special_tokens, training_batches, truncate
from lib.data.preprocess import TextPreprocessor
from lib.data.tables import Columns, read_table
from lib.finetune.config import TrainConfig
from lib.finetune.evaluate import predict_logits
from lib.finetune.predict import load_run, predict_table
from lib.finetune.prepare import prepare_new
from lib.finetune.splits import Splits, load_splits
from lib.finetune.trainer import train_new
from lib.loop.stop import StopRequest
from lib.model.backbone import SCRATCH_PRESETS, load_classifier, prepare_backbone
from lib.search.launch import gpu_pool

KERNEL_STEPS = 100  # steps the kernel share is measured over (fewer in a short run)
KERNEL_SKIP = 5  # steps before the kernel share is measured: first-shape kernels and allocator warm-up
QUALITY_TARGET = 1.5  # the speed issue's time-to-quality target: Trainer seconds / ours
LOSS_TOLERANCE = 0.03  # relative difference of final validation losses flagged as "not the same training"
PARTS = ("trainer", "kernels", "compile", "cache", "quality")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke version: 2000 reviews, 3000 validation rows, 20000 rows for the cache part")
    parser.add_argument("--preset", default="tiny", choices=tuple(SCRATCH_PRESETS), help="scratch: model preset")
    parser.add_argument("--train-file", default="data/train.csv")
    parser.add_argument("--train-samples", type=int, default=20000, help="training rows (stratified subset)")
    parser.add_argument("--val-size", type=float, default=0.1, help="validation fraction of --train-file")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="fp16: CUDA only")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_FORMS}: both sides run there, on one GPU")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate; default: train.py's for the preset (tiny 1e-3, mini 3e-4, ...)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--max-tokens-per-batch", type=int, default=1024,
                        help="token budget of the extra 'ours, budget' column (its row cap is 4x --batch-size)")
    parser.add_argument("--cache-train-samples", type=int, default=None,
                        help="training rows of the cache part (default: all)")
    parser.add_argument("--cache-epochs", type=float, default=0.01,
                        help="epochs of the cache part's runs (only their set-up matters)")
    parser.add_argument("--quality-epochs", type=float, default=2.0,
                        help="most epochs of the quality part's runs of ours (they stop at the target loss)")
    parser.add_argument("--quality-seeds", default=None,
                        help="comma-separated seeds: the quality part once per seed, each with its own initial "
                             "model, then how often each side reached the target (default: --seed alone)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side; 0 = torch's default")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, interleaved, and keep the best of each measure")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep run folders here (default: a temporary folder, removed at the end)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.train_samples, args.val_size = 2000, 0.02
        args.cache_train_samples = args.cache_train_samples or 20000
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise UserError(f"--parts: unknown {', '.join(sorted(unknown))}; choose among {', '.join(PARTS)}")
    if args.repeats < 1 or args.epochs < 1:
        raise UserError("--repeats and --epochs: expected whole numbers >= 1")
    if args.quality_epochs <= 0:
        raise UserError("--quality-epochs: expected a number above 0")
    args.quality_seeds = _seeds(args.quality_seeds) if args.quality_seeds is not None else [args.seed]
    args.device_flag, args.device = args.device, _one_device(args.device)  # the flag as given, for re-runs
    resolve_precision(args.precision, torch.device(args.device))  # fp16 off CUDA, bf16 on a GPU without it
    if "kernels" in parts and args.device != "cpu":
        raise UserError("--parts kernels: measures CPU kernels only; expected --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: python -m bench.throughput {shlex.join(argv)}".rstrip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per side, "
          f"{multiprocessing.cpu_count()} CPU(s), load average {_load_average()}; device {_device_name(args.device)}")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        _run_parts(args, parts, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-throughput-") as folder:
            _run_parts(args, parts, Path(folder))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise UserError(f"--quality-seeds: expected comma-separated whole numbers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--quality-seeds: each seed once, got {text!r}")
    return seeds


def _one_device(requested: str) -> str:
    """The device both sides train on. On CUDA, CUDA_VISIBLE_DEVICES is narrowed to the one GPU asked
    for (cuda:N counts among the visible ones; cuda and auto take the first) before any side starts:
    the Trainer wraps its model in DataParallel when it sees several, and ours would train on one."""
    device = resolve_device(requested)  # the product's check of the flag and of CUDA being there
    if device.type == "cpu":
        return "cpu"
    pool = gpu_pool(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    index = device.index or 0
    if index >= len(pool):
        raise UserError(f"--device {requested}: {len(pool)} CUDA GPU(s) visible here; expected "
                        + (f"cuda:0 to cuda:{len(pool) - 1}" if pool else "--device cpu"))
    os.environ["CUDA_VISIBLE_DEVICES"] = pool[index]  # the sides are spawned processes: they see this one GPU
    return "cuda"


def _device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(0)}, CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"


def _run_parts(args: argparse.Namespace, parts: list[str], workdir: Path) -> None:
    base = _initial_model(_base_config(args, workdir), workdir / "init")
    if "trainer" in parts:
        trainer_part(args, base)
    if "kernels" in parts:
        kernels_part(args, base)
    if "compile" in parts:
        compile_part(args, base)
    if "cache" in parts:
        cache_part(args, base, workdir)
    if "quality" in parts:
        quality_part(args, base, workdir)


def _initial_model(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`options` with the initial model of its preset and seed built into `folder` as its model."""
    started = time.perf_counter()
    init = _build_init_folder(options, folder)
    print(f"initial model: {init} ({options['model']}, seed {options['seed']}, built in "
          f"{time.perf_counter() - started:.1f} s)")
    return {**options, "model": str(init)}


# --- configuration and the shared starting point ---------------------------------------------------

def _base_config(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """TrainConfig options every run of the main comparison shares."""
    return {
        "train_file": args.train_file, "val_size": args.val_size, "max_train_samples": args.train_samples,
        "model": f"scratch:{args.preset}", "num_train_epochs": float(args.epochs),
        # the preset's rate: the runs load the initial model from a folder, which would get a pretrained one's
        "learning_rate": args.lr if args.lr is not None else SCRATCH_PRESETS[args.preset].learning_rate,
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.eval_batch_size,
        "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio, "lr_scheduler_type": "linear",
        "max_grad_norm": 1.0, "gradient_accumulation_steps": 1, "precision": args.precision, "device": args.device,
        "seed": args.seed, "cache_dir": None, "output_dir": str(workdir / "runs"),
    }


def _preprocessed(cfg: TrainConfig) -> tuple[Splits, TextPreprocessor, list[str], list[str]]:
    """The rows and preprocessed texts of `cfg`, exactly as `train_new` makes them."""
    splits = load_splits(cfg)
    preprocessor = TextPreprocessor(cfg.unicode_normalization, cfg.max_char_repeat, cfg.special_patterns,
                                    cfg.special_pattern_min_count, cfg.num_rare_words_to_remove)
    train_texts = preprocessor.fit(splits.train.texts).transform(splits.train.texts)
    return splits, preprocessor, train_texts, preprocessor.transform(splits.val.texts)


def _plan(options: dict[str, Any]) -> dict:
    """plan.json of a run of `options` without training it: steps, warm-up and max length, known before
    either side of the quality part trains (ours trains to the Trainer's loss, the Trainer to our plan)."""
    return prepare_new(TrainConfig(**options), Distributed(), torch.device(options["device"])).plan.to_dict()


def _build_init_folder(base: dict[str, Any], folder: Path) -> Path:
    """The scratch model and tokenizer every run starts from, built by our own code and saved as a hub
    model is, plus `val.csv` (the validation rows as a file to predict)."""
    cfg = TrainConfig(**base)
    splits, preprocessor, train_texts, _ = _preprocessed(cfg)
    tokenizer, model = prepare_backbone(cfg.model, train_texts, preprocessor.special_tokens, splits.num_labels,
                                        splits.label_names, None, cfg.scratch_vocab_size, cfg.seed, DiskCache(None))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pd.DataFrame({cfg.id_column: splits.val.ids, cfg.text_column: splits.val.texts}).to_csv(
        folder / "val.csv", index=False)
    return folder


def _in_subprocess(function: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run one side in a fresh process, so its peak memory and one-off costs are its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def _best(runs: list[dict]) -> dict:
    """The best of repeated runs of one configuration: the highest rate (`*_sps`) and the shortest
    time (`*_seconds`) each; what does not depend on speed (losses, steps, padding) from the first."""
    best = dict(runs[0])
    for key in best:
        if key.endswith("_sps"):
            best[key] = max(run[key] for run in runs)
        elif key.endswith("_seconds"):
            best[key] = min(run[key] for run in runs)
    return best


def _rounds(repeats: int, configurations: dict[str, Callable[[], dict]]) -> dict[str, dict]:
    """Each configuration `repeats` times, interleaved (A B C A B C), so a slow spell of the shared
    machine hits all of them alike; the best of each."""
    runs: dict[str, list[dict]] = {name: [] for name in configurations}
    for _ in range(repeats):
        for name, run in configurations.items():
            runs[name].append(run())
    return {name: _best(results) for name, results in runs.items()}


def _worker_setup(threads: int) -> None:
    """Torch threads, and no HF progress bars or info logs in a side's process."""
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _peak_memory() -> dict[str, float]:
    """This side's peak resident set size, and on CUDA its peak of memory allocated on the GPU, in MiB."""
    peaks = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if torch.cuda.is_initialized():
        peaks["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def _synchronize() -> None:
    """Wait for the GPU's queued work before reading a clock (nothing to wait for on a CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of the faster of two passes: the first may pay one-off set-up per shape."""
    walls, cpus = [], []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


class StepClock:
    """Wall and CPU clocks at the end of every optimizer step.

    The steady rate sums the intervals between consecutive step ends, leaving out the first step
    (set-up and first-shape kernels) and every interval that holds an evaluation. CPU time is the
    contention-proof measure: on a shared machine the wall clock also counts the time the
    scheduler gave to other processes.
    """

    def __init__(self) -> None:
        self.marks: list[tuple[int, float, float, bool]] = []  # (step, wall, cpu, an evaluation came before)
        self._evaluated = False

    def step_end(self, step: int) -> None:
        self.marks.append((step, time.perf_counter(), time.process_time(), self._evaluated))
        self._evaluated = False

    def evaluated(self) -> None:
        self._evaluated = True

    def steady(self, rows_per_step: list[int]) -> tuple[float, float]:
        """(samples per wall second, samples per CPU second); `rows_per_step[k - 1]`: rows of step k."""
        rows, wall, cpu = 0, 0.0, 0.0
        for (_, wall0, cpu0, _), (step, wall1, cpu1, evaluated) in zip(self.marks, self.marks[1:]):
            if not evaluated:
                rows, wall, cpu = rows + rows_per_step[step - 1], wall + wall1 - wall0, cpu + cpu1 - cpu0
        return rows / wall, rows / cpu

    def median_step_seconds(self) -> float:
        return float(np.median(np.diff([wall for _, wall, _, _ in self.marks]))) if len(self.marks) > 1 else 0.0


class KernelMeter:
    """The share of steady step time spent inside aten operators (on a CPU, the kernels), from the torch
    profiler over the steps after the first `skip`: the sum of every aten operator's self time over the
    wall time of `steps` steps. The rest is host work: the loop's Python, the model's Python forward,
    the autograd engine. The profiler slows both sides alike; the share, not the speed, is the figure."""

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps, self.count = skip, steps, 0
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.kernel_seconds = self.wall_seconds = 0.0
        self._started = 0.0

    def step_end(self) -> None:
        self.count += 1
        if self.count == self.skip:
            self.profiler.start()
            self._started = time.perf_counter()
        elif self.count == self.skip + self.steps:
            self.wall_seconds = time.perf_counter() - self._started
            self.profiler.stop()
            self.kernel_seconds = sum(event.self_cpu_time_total for event in self.profiler.key_averages()
                                      if event.key.startswith("aten::")) / 1e6

    def share(self) -> float:
        if not self.wall_seconds:
            if self.count >= self.skip:  # the run ended inside the window: a profiler left running crashes at exit
                self.profiler.stop()
            raise RuntimeError(f"KernelMeter: the run ended before step {self.skip + self.steps}")
        return self.kernel_seconds / self.wall_seconds


class StepSections:
    """Where steady steps' wall time goes, without a profiler: the forward and backward passes, the
    clip and optimizer step, and the rest, which is the loop's own work (batches, learning rate,
    bookkeeping, callbacks, logging). `timed` wraps the function of a part; on a CPU every kernel
    runs synchronously, so perf_counter around it is exact and costs nothing per operator (the
    profiler's cost per operator counts as host time in KernelMeter's share). Steps after the first
    `skip` count, leaving out every interval that holds an evaluation."""

    PARTS = ("forward and backward", "clip and optimizer step")

    def __init__(self, skip: int) -> None:
        self.skip, self.count, self.steps = skip, 0, 0
        self.pending = dict.fromkeys(self.PARTS, 0.0)
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.step_seconds = 0.0
        self._last_end: float | None = None
        self._evaluated = False

    def timed(self, part: str, function: Callable) -> Callable:
        def timed_part(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - started)
        return timed_part

    def add(self, part: str, seconds: float) -> None:
        self.pending[part] += seconds

    def evaluated(self) -> None:
        self._evaluated = True

    def step_end(self) -> None:
        now = time.perf_counter()
        self.count += 1
        if self._last_end is not None and self.count > self.skip and not self._evaluated:
            for part in self.PARTS:
                self.totals[part] += self.pending[part]
            self.step_seconds += now - self._last_end
            self.steps += 1
        self.pending = dict.fromkeys(self.PARTS, 0.0)
        self._last_end, self._evaluated = now, False

    def shares(self) -> dict[str, float]:
        """Milliseconds per step, and each part's share of the steps' wall time (the loop's: the rest)."""
        if not self.steps:
            raise RuntimeError(f"StepSections: the run ended before step {self.skip + 2}")
        shares = {part: seconds / self.step_seconds for part, seconds in self.totals.items()}
        return {"step_ms": 1e3 * self.step_seconds / self.steps, "steps": self.steps, **shares,
                "the loop's own work": 1 - sum(shares.values())}


def _step_probes(kernel_steps: int) -> tuple[KernelMeter | None, StepSections | None]:
    """The kernel share over `kernel_steps` steps, then the sections over the steps after the profiler
    (the step that stops it, which also sums its events, left out)."""
    if not kernel_steps:
        return None, None
    return KernelMeter(KERNEL_SKIP, kernel_steps), StepSections(KERNEL_SKIP + kernel_steps + 1)


class _OursClock(StopRequest):
    """Never stops or prunes; the loop asks after every step and after every evaluation."""

    def __init__(self, meter: KernelMeter | None = None, sections: StepSections | None = None) -> None:
        super().__init__()
        self.clock, self.meter, self.sections = StepClock(), meter, sections

    def should_stop(self, global_step: int) -> bool:
        self.clock.step_end(global_step)
        if self.meter is not None:
            self.meter.step_end()
        if self.sections is not None:
            self.sections.step_end()
        return super().should_stop(global_step)

    def prune_after(self, step: int, epoch: float, metrics: dict[str, float]) -> bool:
        self.clock.evaluated()
        if self.sections is not None:
            self.sections.evaluated()
        return super().prune_after(step, epoch, metrics)


class _UntilLoss(_OursClock):
    """Ends training at the first evaluation whose validation loss is at most `target`: time to quality."""

    def __init__(self, target: float, meter: KernelMeter | None = None) -> None:
        super().__init__(meter)
        self.target = target

    def prune_after(self, step: int, epoch: float, metrics: dict[str, float]) -> bool:
        return super().prune_after(step, epoch, metrics) or metrics["loss"] <= self.target


# --- the two sides ---------------------------------------------------------------------------------

def ours_side(options: dict[str, Any], threads: int, *, steady: bool = True, val_csv: str | None = None,
              kernel_steps: int = 0, target_loss: float | None = None) -> dict:
    """Train with `lib.finetune.trainer.train_new`. `steady`: also the steady step rates (re-tokenises the
    training rows to know each step's rows); `val_csv`: also predict that file with the finished run;
    `kernel_steps`: also the kernel share of that many steps (KernelMeter); `target_loss`: stop at the
    first evaluation at or below it (_UntilLoss)."""
    _worker_setup(threads)
    cfg = TrainConfig(**options)
    if cfg.compile:  # a cold inductor cache: what the first --compile run on a machine pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cfg.output_dir) / f"inductor-{os.getpid()}")
    meter, sections = _step_probes(kernel_steps)
    if sections is not None:  # time the step's parts as the trainer calls them (this process only)
        import lib.finetune.trainer as trainer_module
        trainer_module.accumulate_window = sections.timed(StepSections.PARTS[0], trainer_module.accumulate_window)
        trainer_module.optimizer_step = sections.timed(StepSections.PARTS[1], trainer_module.optimizer_step)
    stop = _OursClock(meter, sections) if target_loss is None else _UntilLoss(target_loss, meter)
    started = time.perf_counter()
    run = train_new(cfg, overwrite=True, stop=stop)
    wall = time.perf_counter() - started
    result = json.loads(run.result.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    val_losses = [r["loss"] for r in records if r["split"] == "val"]
    clock = stop.clock
    measured = {
        "train_sps": result["train_samples_per_second"],
        "train_seconds": result["train_seconds"],
        "eval_sps": result["eval_samples_per_second"],
        "padding_efficiency": result["padding_efficiency"],
        "val_loss": val_losses[-1],
        "best_val_loss": min(val_losses),
        "steps": result["global_step"],
        "epochs": result["epochs_completed"],
        "setup_seconds": clock.marks[0][1] - started - clock.median_step_seconds(),
        "wall_seconds": wall,
        "compile_seconds": torch._dynamo.utils.calculate_time_spent()["total_wall_time"] if cfg.compile else 0.0,
        "threads": torch.get_num_threads(),
        "plan": json.loads(run.plan.read_text(encoding="utf-8")),
    }
    if meter is not None:
        measured.update(kernel_share=meter.share(), sections=sections.shares())
    loaded = load_run(run.path, device=cfg.device)  # the kept model (best/), which holds the tokenizer too
    if steady:
        lengths = encode(loaded.tokenizer, loaded.preprocessor.transform(load_splits(cfg).train.texts),
                         loaded.plan.max_length).lengths
        epochs = [training_batches(lengths, cfg.per_device_train_batch_size, cfg.seed, epoch, cfg.group_by_length,
                                   cfg.max_tokens_per_batch) for epoch in range(math.ceil(cfg.num_train_epochs))]
        measured["steady_sps"], measured["cpu_sps"] = clock.steady([len(rows) for batch in epochs for rows in batch])
        multiple = batching.pad_multiple(torch.device(cfg.device), measured["plan"]["precision"], cfg.compile)
        measured["computed_efficiency"] = _computed_efficiency(lengths, epochs[0], multiple)
    if val_csv is not None:
        data = encode(loaded.tokenizer, loaded.preprocessor.transform(_read_texts(cfg, val_csv)),
                      loaded.plan.max_length)
        predict_ids = _timed(lambda: predict_logits(
            loaded.model, data, cfg.per_device_eval_batch_size, loaded.plan.precision, loaded.device, "predict",
            False))
        predict_csv = _timed(lambda: predict_table(
            loaded.cfg, loaded.plan, loaded.preprocessor, loaded.tokenizer, loaded.model, val_csv, loaded.device,
            False))
        measured.update({
            "predict_ids_sps": len(data) / predict_ids[0], "predict_ids_cpu_sps": len(data) / predict_ids[1],
            "predict_csv_sps": len(data) / predict_csv[0], "predict_csv_cpu_sps": len(data) / predict_csv[1]})
    return {**measured, **_peak_memory()}


def _read_texts(cfg: TrainConfig, path: str) -> list[str]:
    return read_table(path, Columns(cfg.id_column, cfg.text_column, cfg.label_column), labelled=False,
                      flag="val").texts


def _computed_efficiency(lengths: np.ndarray, batches: list[np.ndarray], multiple: int) -> float:
    """Real tokens / tokens the model computes, with our collate's width rounding (`batching.pad_multiple`:
    none for eager fp32 on a CPU), which `result.json`'s padding_efficiency (real / longest row) does not count."""
    real = sum(int(lengths[b].sum()) for b in batches)
    return real / sum(batching.padded_width(lengths[b].max(), multiple) * len(b) for b in batches)


class _PaddingCounter:
    """`DataCollatorWithPadding` that, while `counting`, records rows per batch and real / padded tokens."""

    def __init__(self, collator: Callable) -> None:
        self.collator, self.counting, self.real, self.padded = collator, False, 0, 0
        self.rows: list[int] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        if self.counting:
            self.rows.append(len(features))
            self.real += int(batch["attention_mask"].sum())
            self.padded += batch["attention_mask"].numel()
        return batch


class _TrainerClock(TrainerCallback):
    """The Trainer's epoch loops (its training steps; evaluation runs after on_epoch_end) and step ends."""

    def __init__(self, collator: _PaddingCounter, meter: KernelMeter | None = None,
                 sections: StepSections | None = None) -> None:
        self.collator, self.clock, self.meter, self.sections = collator, StepClock(), meter, sections
        self.seconds, self.begun, self.train_begin, self.optimizer_begun = 0.0, 0.0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        _synchronize()
        self.collator.counting, self.begun = True, time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_begun = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.sections is not None:
            self.sections.add(StepSections.PARTS[1], time.perf_counter() - self.optimizer_begun)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end(state.global_step)
        if self.meter is not None:
            self.meter.step_end()
        if self.sections is not None:
            self.sections.step_end()

    def on_epoch_end(self, args, state, control, **kwargs):
        _synchronize()
        self.collator.counting = False
        self.seconds += time.perf_counter() - self.begun

    def on_evaluate(self, args, state, control, **kwargs):
        self.clock.evaluated()
        if self.sections is not None:
            self.sections.evaluated()


def trainer_side(options: dict[str, Any], threads: int, val_csv: str | None, plan: dict, grouped: bool,
                 kernel_steps: int = 0) -> dict:
    """Train the same model on the same rows with `transformers.Trainer`; `val_csv`: then predict that
    file as ours does; `kernel_steps`: also the kernel share of that many steps (KernelMeter)."""
    _worker_setup(threads)
    started = time.perf_counter()
    cfg = TrainConfig(**options)
    splits, preprocessor, train_texts, val_texts = _preprocessed(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    max_length = plan["max_length"]

    def dataset(texts: list[str], labels: np.ndarray | None) -> list[dict]:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
        rows = [{"input_ids": ids, "attention_mask": mask}
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        if labels is not None:
            for row, label in zip(rows, labels):
                row["labels"] = int(label)
        return rows

    train_rows, val_rows = dataset(train_texts, splits.train.labels), dataset(val_texts, splits.val.labels)
    model = load_classifier(cfg.model, splits.num_labels, splits.label_names, None)
    collator = _PaddingCounter(DataCollatorWithPadding(tokenizer))
    meter, sections = _step_probes(kernel_steps)
    timer = _TrainerClock(collator, meter, sections)
    args = TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / f"trainer-{'grouped' if grouped else 'random'}"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size, gradient_accumulation_steps=1,
        num_train_epochs=cfg.num_train_epochs, learning_rate=plan["learning_rate"], lr_scheduler_type="linear",
        warmup_steps=plan["warmup_steps"], weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon, max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.precision == "bf16", fp16=cfg.precision == "fp16", use_cpu=cfg.device == "cpu", seed=cfg.seed,
        eval_strategy="epoch", save_strategy="no", logging_steps=cfg.logging_steps, report_to="none", disable_tqdm=True,
        train_sampling_strategy="group_by_length" if grouped else "random")
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                      data_collator=collator, processing_class=tokenizer, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
    if sections is not None:  # the optimizer step is timed by the callbacks around it
        trainer.training_step = sections.timed(StepSections.PARTS[0], trainer.training_step)
        trainer._clip_grad_norm = sections.timed(StepSections.PARTS[1], trainer._clip_grad_norm)
    trainer.train()
    if trainer.state.max_steps != plan["total_steps"]:
        raise RuntimeError(f"Trainer made {trainer.state.max_steps} steps, ours {plan['total_steps']}")
    evaluations = [r for r in trainer.state.log_history if "eval_loss" in r]
    _check_same_ids(tokenizer, train_texts, train_rows, max_length, model.config.max_position_embeddings)
    steady_wall, steady_cpu = timer.clock.steady(collator.rows)
    measured = {
        "train_sps": len(train_rows) * cfg.num_train_epochs / timer.seconds,
        "train_seconds": timer.seconds,
        "steady_sps": steady_wall,
        "cpu_sps": steady_cpu,
        "eval_sps": len(val_rows) * len(evaluations) / sum(r["eval_runtime"] for r in evaluations),
        "padding_efficiency": collator.real / collator.padded,
        "computed_efficiency": collator.real / collator.padded,
        "val_loss": evaluations[-1]["eval_loss"],
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "setup_seconds": timer.train_begin - started,
        "threads": torch.get_num_threads(),
        "optimizer": getattr(args.optim, "value", args.optim),
        "transformers": transformers.__version__,
        **({"kernel_share": meter.share(), "sections": sections.shares()} if meter is not None else {}),
    }
    if val_csv is not None:
        predict_rows = dataset(preprocessor.transform(_read_texts(cfg, val_csv)), None)
        predict_ids = _timed(lambda: trainer.predict(predict_rows))
        predict_csv = _timed(lambda: trainer.predict(dataset(preprocessor.transform(_read_texts(cfg, val_csv)),
                                                             None)))
        rows = len(predict_rows)
        measured.update({
            "predict_ids_sps": rows / predict_ids[0], "predict_ids_cpu_sps": rows / predict_ids[1],
            "predict_csv_sps": rows / predict_csv[0], "predict_csv_cpu_sps": rows / predict_csv[1]})
    return {**measured, **_peak_memory()}


def _check_same_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], rows: list[dict], max_length: int,
                    limit: int) -> None:
    """The Trainer's token ids must be ours (tokenised at the model limit, then truncated in numpy)."""
    ours = truncate(tokenize(tokenizer, texts, limit), max_length, trailing_special_tokens(tokenizer))
    if any(list(a) != b["input_ids"] for a, b in zip(ours, rows)):
        raise RuntimeError("the Trainer side tokenises differently from ours; the comparison is void")


# --- parts -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    title: str
    result: dict


def _budget_options(args: argparse.Namespace) -> dict[str, Any]:
    """The setting of 'ours, budget': --max-tokens-per-batch, with 4x --batch-size as its row cap."""
    return {"max_tokens_per_batch": args.max_tokens_per_batch, "per_device_train_batch_size": 4 * args.batch_size}


def trainer_part(args: argparse.Namespace, base: dict[str, Any]) -> None:
    """Ours (grouped, random order, token budget) and the Trainer (random, grouped) on the same work."""
    val_csv = str(Path(base["model"]) / "val.csv")
    budget = _budget_options(args)
    plan: dict[str, Any] = {}  # ours grouped runs first in every round; the Trainer takes its max length and steps

    def ours_grouped() -> dict:
        result = _in_subprocess(ours_side, {**base, "run_name": "ours-grouped"}, args.threads, val_csv=val_csv)
        plan.update(result["plan"])
        return result

    configurations = {
        "ours grouped": ours_grouped,
        "Trainer random": lambda: _in_subprocess(trainer_side, base, args.threads, val_csv, plan, False),
        "ours random": lambda: _in_subprocess(ours_side, {**base, "run_name": "ours-random", "group_by_length": False},
                                              args.threads, val_csv=val_csv),
        "Trainer grouped": lambda: _in_subprocess(trainer_side, base, args.threads, val_csv, plan, True),
        f"ours budget{args.max_tokens_per_batch}": lambda: _in_subprocess(
            ours_side, {**base, **budget, "run_name": "ours-budget"}, args.threads, val_csv=val_csv),
    }
    columns = [Column(title, result) for title, result in _rounds(args.repeats, configurations).items()]
    ours = columns[0].result
    theirs = columns[1].result
    print(f"\n== ours vs transformers.Trainer {theirs['transformers']} ({theirs['optimizer']}): "
          f"scratch:{args.preset}, {args.train_samples} train / {sum(plan['val_class_counts'])} validation rows, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, eval batch {args.eval_batch_size}, {args.precision} on "
          f"{args.device}, max length {plan['max_length']}, lr {plan['learning_rate']:g} linear, "
          f"{plan['warmup_steps']} warm-up steps, {ours['threads']} thread(s) per side, best of {args.repeats} run(s)")
    print(f"   re-run: {_rerun(args, 'trainer')}")
    _print_table(columns, [
        ("train samples/s, wall (all steps)", "train_sps", "{:.0f}"),
        ("train samples/s, wall (steady)", "steady_sps", "{:.0f}"),
        ("train samples/CPU-s (steady)", "cpu_sps", "{:.0f}"),
        ("eval samples/s, wall (in training)", "eval_sps", "{:.0f}"),
        ("predict ids samples/s, wall", "predict_ids_sps", "{:.0f}"),
        ("predict ids samples/CPU-s", "predict_ids_cpu_sps", "{:.0f}"),
        ("predict CSV samples/s, wall", "predict_csv_sps", "{:.0f}"),
        ("predict CSV samples/CPU-s", "predict_csv_cpu_sps", "{:.0f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        *([("peak CUDA MiB (allocated)", "peak_cuda_mib", "{:.0f}")] if args.device != "cpu" else []),
        ("padding eff. (real/longest row)", "padding_efficiency", "{:.3f}"),
        ("padding eff. as computed", "computed_efficiency", "{:.3f}"),
        ("final val loss", "val_loss", "{:.4f}"),
        ("optimizer steps", "steps", "{:d}"),
        ("set-up seconds (excluded)", "setup_seconds", "{:.1f}"),
    ])
    print(f"   budget column: --max-tokens-per-batch {args.max_tokens_per_batch} with --batch-size "
          f"{4 * args.batch_size} as the row cap; other batches, so other optimisation: not in the ratios")
    print("   steady: step-end to step-end, first step and evaluations left out; CPU-s: process CPU time, "
          "which other processes on the machine do not inflate")
    print("   predict ids: token ids in memory; predict CSV: read the file, preprocess, tokenise, predict")
    print("   as computed: with our collate's width rounding (to 8 under bf16 or --compile, none for eager fp32 "
          "on a CPU); the Trainer pads to the longest row")
    pairs = [("ours grouped / Trainer random (defaults)", 0, 1), ("ours grouped / Trainer grouped", 0, 3),
             ("ours random / Trainer random (loop only)", 2, 1)]
    measures = [("train", "train_sps"), ("train CPU", "cpu_sps"), ("pred ids", "predict_ids_sps"),
                ("ids CPU", "predict_ids_cpu_sps"), ("pred CSV", "predict_csv_sps"),
                ("CSV CPU", "predict_csv_cpu_sps"), ("memory", "peak_rss_mib"),
                *([("GPU mem", "peak_cuda_mib")] if args.device != "cpu" else [])]
    print(f"\n   {'ratio ours / Trainer':<46}" + "".join(f"{name:>10}" for name, _ in measures))
    for label, a, b in pairs:
        x, y = columns[a].result, columns[b].result
        print(f"   {label:<46}" + "".join(f"{x[key] / y[key]:>9.2f}x" for _, key in measures))
    print("   targets (speed issue): ours grouped / Trainer grouped training >= 1.1x, prediction >= 2x")
    for a, b in ((0, 1), (2, 1), (0, 3)):
        x, y = columns[a].result["val_loss"], columns[b].result["val_loss"]
        gap = abs(x - y) / min(x, y)
        verdict = "ok" if gap <= LOSS_TOLERANCE else f"FLAG: more than {LOSS_TOLERANCE:.0%} apart"
        print(f"   val loss {columns[a].title} {x:.4f} vs {columns[b].title} {y:.4f}: {gap:.1%} apart, {verdict}")


def kernels_part(args: argparse.Namespace, base: dict[str, Any]) -> None:
    """The share of steady step time inside kernels, ours grouped against the Trainer grouped (torch profiler)."""
    steps = max(10, min(KERNEL_STEPS, args.train_samples // args.batch_size // 2))
    val_csv = str(Path(base["model"]) / "val.csv")
    ours = _in_subprocess(ours_side, {**base, "run_name": "ours-kernels"}, args.threads, steady=False,
                          kernel_steps=steps)
    theirs = _in_subprocess(trainer_side, base, args.threads, val_csv, ours["plan"], True, kernel_steps=steps)
    print(f"\n== kernel share: steps {KERNEL_SKIP + 1}-{KERNEL_SKIP + steps} of one epoch under the torch profiler, "
          f"scratch:{args.preset}, {args.precision}, batch {args.batch_size}, {ours['threads']} thread(s)")
    print(f"   re-run: {_rerun(args, 'kernels')}")
    print(f"   {'':<34}{'ours grouped':>14}{'Trainer grouped':>17}")
    for label, share in (("inside aten kernels", lambda r: r["kernel_share"]),
                         ("host (Python, autograd engine)", lambda r: 1 - r["kernel_share"])):
        print(f"   {label:<34}{share(ours):>13.1%}{share(theirs):>17.1%}")
    print("   kernel time: the sum of aten operators' self CPU time over the steps' wall time (profiler on)")
    mine, other = ours["sections"], theirs["sections"]
    print(f"\n   where the time of {mine['steps']} and {other['steps']} steps after step {KERNEL_SKIP + steps + 1} "
          "goes (profiler off, evaluations left out)")
    print(f"   {'ms per step':<34}{mine['step_ms']:>13.2f}{other['step_ms']:>17.2f}")
    for part in (*StepSections.PARTS, "the loop's own work"):
        print(f"   {part:<34}{mine[part]:>13.1%}{other[part]:>17.1%}")
    print("   perf_counter around each side's forward-and-backward call and its clip and optimizer step "
          "(exact on a CPU);\n   the loop's own work is the rest: batches, learning rate, bookkeeping, callbacks")


def compile_part(args: argparse.Namespace, base: dict[str, Any]) -> None:
    """Our loop with and without torch.compile on the same work; compile time measured by dynamo."""
    results = _rounds(args.repeats, {
        "eager": lambda: _in_subprocess(ours_side, {**base, "run_name": "eager"}, args.threads),
        "compiled": lambda: _in_subprocess(ours_side, {**base, "run_name": "compiled", "compile": True}, args.threads),
    })
    eager, compiled = results["eager"], results["compiled"]
    print(f"\n== --compile: torch.compile(dynamic=True) of the training model, our loop, the work of "
          f"'ours grouped', {eager['threads']} thread(s), best of {args.repeats} run(s), cold inductor cache")
    print(f"   re-run: {_rerun(args, 'compile')}")
    excluded = compiled["train_seconds"] - compiled["compile_seconds"]
    rows = [
        ("train seconds, wall (compile included)", eager["train_seconds"], compiled["train_seconds"]),
        ("  of which compiling (dynamo+inductor)", 0.0, compiled["compile_seconds"]),
        ("train samples/s, compile included", eager["train_sps"], compiled["train_sps"]),
        ("train samples/s, compile excluded", eager["train_sps"], compiled["train_sps"] * compiled["train_seconds"]
         / excluded),
        ("train samples/s, wall (steady)", eager["steady_sps"], compiled["steady_sps"]),
        ("train samples/CPU-s (steady)", eager["cpu_sps"], compiled["cpu_sps"]),
        ("peak RSS MiB", eager["peak_rss_mib"], compiled["peak_rss_mib"]),
        *([("peak CUDA MiB (allocated)", eager["peak_cuda_mib"], compiled["peak_cuda_mib"])]
          if args.device != "cpu" else []),
        ("final val loss", eager["val_loss"], compiled["val_loss"]),
    ]
    print(f"   {'':<42}{'eager':>10}{'compiled':>10}{'ratio':>8}")
    for label, a, b in rows:
        digits = 4 if label == "final val loss" else 1
        print(f"   {label:<42}{a:>10.{digits}f}{b:>10.{digits}f}" + (f"{b / a:>7.2f}x" if a else ""))
    print("   steady: the first step (where compiling happens) and evaluations left out; CPU-s excludes "
          "inductor's compile workers")


def cache_part(args: argparse.Namespace, base: dict[str, Any], workdir: Path) -> None:
    """Set-up time of one run with an empty and with a filled tokenisation cache (what a sweep trial saves)."""
    options = {**base, "max_train_samples": args.cache_train_samples, "num_train_epochs": args.cache_epochs}
    print(f"\n== tokenisation cache: set-up of one run, {args.cache_train_samples or 'all'} training rows, "
          f"{args.cache_epochs:g} epoch(s) of training, best of {args.repeats} run(s) "
          "(set-up = from train_new() to the loop's first step)")
    print(f"   re-run: {_rerun(args, 'cache')}")
    print(f"   {'model':<28}{'cold s':>10}{'warm s':>10}{'saved s':>10}{'cold wall':>11}{'warm wall':>11}")
    models = {f"scratch:{args.preset} (WordPiece too)": f"scratch:{args.preset}",
              "model folder (tokens only)": base["model"]}

    def cold_then_warm(model: str) -> dict:
        cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)  # empty for every repeat
        cold, warm = [_in_subprocess(ours_side, {**options, "model": model, "cache_dir": cache, "run_name": name},
                                     args.threads, steady=False) for name in ("cold", "warm")]
        return {"cold_setup_seconds": cold["setup_seconds"], "warm_setup_seconds": warm["setup_seconds"],
                "cold_wall_seconds": cold["wall_seconds"], "warm_wall_seconds": warm["wall_seconds"]}

    results = _rounds(args.repeats, {label: (lambda model=model: cold_then_warm(model))
                                     for label, model in models.items()})
    for label, r in results.items():
        print(f"   {label:<28}{r['cold_setup_seconds']:>10.1f}{r['warm_setup_seconds']:>10.1f}"
              f"{r['cold_setup_seconds'] - r['warm_setup_seconds']:>10.1f}{r['cold_wall_seconds']:>11.1f}"
              f"{r['warm_wall_seconds']:>11.1f}")
    print("   saved = seconds each later run (sweep trial) with the same data, preprocessing and tokenizer skips")


def quality_part(args: argparse.Namespace, base: dict[str, Any], workdir: Path) -> None:
    """Time to quality, once per --quality-seeds seed (each its own initial model and data order), and
    with several seeds how often each of ours reached the Trainer's loss, and at 1.5x or more."""
    outcomes = {}
    for seed in args.quality_seeds:
        options = base if seed == args.seed else _initial_model({**_base_config(args, workdir), "seed": seed},
                                                                 workdir / f"init-seed{seed}")
        suffix = "" if len(args.quality_seeds) == 1 else f"-seed{seed}"
        outcomes[seed] = _quality_round(args, options, suffix)
        _print_quality(args, outcomes[seed], seed)
    if len(outcomes) > 1:
        _print_quality_summary(args, outcomes)


def _quality_round(args: argparse.Namespace, base: dict[str, Any], suffix: str) -> dict[str, dict]:
    """Our training seconds, default and with a token budget, until the validation loss the Trainer
    grouped reaches after --epochs, against the Trainer's seconds for those epochs."""
    plan = _plan(base)  # the Trainer's steps, warm-up and max length
    budget = {**base, **_budget_options(args)}
    target: dict[str, float] = {}  # the Trainer runs first in every round; ours train to its first run's loss

    def trainer_grouped() -> dict:
        result = _in_subprocess(trainer_side, base, args.threads, None, plan, True)
        target.setdefault("loss", result["val_loss"])
        return result

    def ours(options: dict[str, Any], name: str, steps_per_epoch: int) -> Callable[[], dict]:
        options = {**options, "run_name": name, "num_train_epochs": args.quality_epochs,
                   "eval_steps": max(1, round(steps_per_epoch / 10))}
        return lambda: _in_subprocess(ours_side, options, args.threads, steady=False, target_loss=target["loss"])

    results = _rounds(args.repeats, {
        "Trainer grouped": trainer_grouped,
        "ours default": ours(base, "quality-default" + suffix, plan["steps_per_epoch"]),
        f"ours budget{args.max_tokens_per_batch}": ours(budget, "quality-budget" + suffix,
                                                        _plan(budget)["steps_per_epoch"]),
    })
    for result in results.values():
        result["ratio"] = _quality_ratio(results["Trainer grouped"], result)
    return results


def _quality_ratio(trainer: dict, ours: dict) -> float | None:
    """The Trainer's seconds over ours, or None when ours did not reach the Trainer's loss."""
    return trainer["train_seconds"] / ours["train_seconds"] if ours["val_loss"] <= trainer["val_loss"] else None


def _print_quality(args: argparse.Namespace, results: dict[str, dict], seed: int) -> None:
    trainer = results["Trainer grouped"]
    target = trainer["val_loss"]
    print(f"\n== time to quality (seed {seed}): training seconds to the validation loss of Trainer grouped after "
          f"{args.epochs} epoch(s), {target:.4f}; ours (TrainConfig defaults) evaluate every ~0.1 epoch for at most "
          f"{args.quality_epochs:g} epochs; scratch:{args.preset}, {args.train_samples} train rows, batch "
          f"{args.batch_size}, {args.precision} on {args.device}, {trainer['threads']} thread(s) per side, "
          f"best of {args.repeats} run(s)")
    print(f"   re-run: {_rerun(args, 'quality', seed)}")
    columns = [Column(title, {**r, "ratio": _shown_ratio(r["ratio"])}) for title, r in results.items()]
    _print_table(columns, [
        ("val loss at the stop", "val_loss", "{:.4f}"),
        ("optimizer steps", "steps", "{:d}"),
        ("epochs trained", "epochs", "{:.2f}"),
        ("train seconds (eval excluded)", "train_seconds", "{:.1f}"),
        ("Trainer seconds / ours", "ratio", "{}"),
    ])
    for title, r in results.items():
        if r["val_loss"] > target:
            print(f"   {title}: not reached within {args.quality_epochs:g} epochs: best loss {r['best_val_loss']:.4f}")
    print(f"   budget column: --max-tokens-per-batch {args.max_tokens_per_batch} with --batch-size "
          f"{_budget_options(args)['per_device_train_batch_size']} as the row cap")
    print(f"   target (speed issue): Trainer seconds / ours >= {QUALITY_TARGET}x; set-up and evaluations excluded "
          "on both sides")


def _shown_ratio(ratio: float | None) -> str:
    return "not reached" if ratio is None else f"{ratio:.2f}x"


def _print_quality_summary(args: argparse.Namespace, outcomes: dict[int, dict[str, dict]]) -> None:
    """Per seed, the Trainer's loss and each of ours' ratio; then how often each reached the loss at all
    and at the target ratio: a loss one seed happens to reach says little, the counts say more."""
    titles = [title for title in next(iter(outcomes.values())) if title != "Trainer grouped"]
    print(f"\n== time to quality over {len(outcomes)} seeds: Trainer seconds / ours")
    print(f"   re-run: {_rerun(args, 'quality')}")
    print(f"   {'seed':<8}{'Trainer loss':>14}" + "".join(f"{title:>18}" for title in titles))
    for seed, results in outcomes.items():
        print(f"   {seed:<8}{results['Trainer grouped']['val_loss']:>14.4f}"
              + "".join(f"{_shown_ratio(results[title]['ratio']):>18}" for title in titles))
    for title in titles:
        ratios = [results[title]["ratio"] for results in outcomes.values()]
        reached = [ratio for ratio in ratios if ratio is not None]
        print(f"   {title}: reached the loss in {len(reached)} of {len(ratios)} seeds, at {QUALITY_TARGET}x or more "
              f"in {sum(ratio >= QUALITY_TARGET for ratio in reached)}"
              + (f"; median where reached {float(np.median(reached)):.2f}x" if reached else ""))


def _rerun(args: argparse.Namespace, part: str, seed: int | None = None) -> str:
    """The command that repeats one part, every setting of this invocation spelled out (`seed`: one seed
    of the quality part's, else the invocation's --seed and --quality-seeds)."""
    flags = ["--parts", part, "--train-file", args.train_file, "--preset", args.preset,
             "--train-samples", str(args.train_samples), "--val-size", str(args.val_size), "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
             "--precision", args.precision, "--device", args.device_flag,
             *(["--lr", str(args.lr)] if args.lr is not None else []), "--weight-decay", str(args.weight_decay),
             "--warmup-ratio", str(args.warmup_ratio), "--threads", str(args.threads),
             "--seed", str(args.seed if seed is None else seed), "--repeats", str(args.repeats)]
    if part == "quality" and seed is None and args.quality_seeds != [args.seed]:
        flags += ["--quality-seeds", ",".join(map(str, args.quality_seeds))]
    if part in ("trainer", "quality"):
        flags += ["--max-tokens-per-batch", str(args.max_tokens_per_batch)]
    if part == "quality":
        flags += ["--quality-epochs", str(args.quality_epochs)]
    if part == "cache":
        flags += ["--cache-epochs", str(args.cache_epochs)]
        if args.cache_train_samples:
            flags += ["--cache-train-samples", str(args.cache_train_samples)]
    return "python -m bench.throughput " + shlex.join(flags)


def _print_table(columns: list[Column], rows: list[tuple[str, str, str]]) -> None:
    width = max(16, *(len(c.title) + 2 for c in columns))
    print(f"   {'':<34}" + "".join(f"{c.title:>{width}}" for c in columns))
    for label, key, fmt in rows:
        cells = "".join(f"{fmt.format(c.result[key]):>{width}}" for c in columns)
        print(f"   {label:<34}{cells}")


def _load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(run_cli(main))
