"""torchrun scaling of train.py on a CPU: one process against several at the same global batch.

    python bench/scaling.py                      # scratch:tiny, 6000 rows, 1 epoch, lr 1e-3, global batch 32
    python -m bench.scaling --rows 20000 --preset mini --global-batch 64 --repeats 2
    python -m bench.scaling --nproc 4 --threads 8              # on a bigger machine

Both sides run train.py itself, in fresh processes: `python train.py --batch-size G` against
`torchrun --standalone --nproc_per_node N train.py --batch-size G/N`. They get the same rows (the
first --rows of --train-file, written to a temporary file), model, seed and schedule, and --threads
CPU threads: the one process all of them, each of the N processes threads/N (at least one) through
OMP_NUM_THREADS.

Dropout is off (--dropout-rate 0), because each process draws its own masks: with dropout the two
runs would agree only in distribution. Without it they do the same arithmetic up to rounding (the
order of the gradient sums, each shard padded to its own longest row). The bench checks that their
validation loss, accuracy and macro-F1 agree within --tolerance (relative for the loss, absolute for
the others) and exits 1 if not; it also prints how far the logged training losses drift apart.
Where training is unstable the rounding grows: a scratch model at a learning rate of 3e-3, leaving
its early plateau, turned 1e-7 at step 50 into 5% at step 100 in one of four tries.

What is timed: train samples/s and seconds from each run's result.json (the optimizer steps only:
collate, forward, backward, the all-reduce, the step), and the wall time of the whole command
(start-up, tokenising, evaluation). `--repeats R` runs the sides R times, interleaved, and keeps each
side's best. On a machine shared with other work the timings are contended. There, OpenMP threads
that outnumber the free cores spin-wait on each other (see bench/throughput.py), which can slow the
one process with every thread more than it slows N processes with one each; `--threads 1` compares
one thread per process. The shared tokenisation cache is filled by the first run, so set-up is not
compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class Side:
    label: str
    processes: int
    threads: int  # per process
    batch_size: int  # per process
    samples_per_s: float = 0.0
    train_s: float = 0.0
    wall_s: float = float("inf")
    result: dict | None = None
    train_losses: dict[int, float] | None = None  # logged training loss by step


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/scaling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--train-file", type=Path, default=REPOSITORY / "data" / "train.csv")
    parser.add_argument("--rows", type=int, default=6000, help="rows of --train-file used, 10%% for validation")
    parser.add_argument("--preset", default="tiny", help="scratch preset (default: tiny)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default: 1e-3, for a scratch model)")
    parser.add_argument("--global-batch", type=int, default=32, help="rows per optimizer step, all processes")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the torchrun side (default: 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of the one process, shared by the torchrun side's (each gets one at "
                             "least, so with fewer threads than processes that side uses more cores) "
                             "(default: every core)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=2e-3)
    parser.add_argument("--output-dir", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args(argv)
    if args.global_batch % args.nproc:
        parser.error(f"--global-batch {args.global_batch}: expected a multiple of --nproc {args.nproc}")
    sides = [Side("1 process", 1, args.threads, args.global_batch),
             Side(f"{args.nproc} processes", args.nproc, max(1, args.threads // args.nproc),
                  args.global_batch // args.nproc)]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.output_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        rows = work / "rows.csv"
        pd.read_csv(args.train_file, nrows=args.rows).to_csv(rows, index=False)
        for repeat in range(args.repeats):
            for side in sides:
                _run(side, args, rows, work, f"{side.processes}p-{repeat}")
        print(_table(sides, args))
        return 0 if _match(sides[0].result, sides[1].result, args.tolerance) else 1


def _run(side: Side, args, rows: Path, work: Path, name: str) -> None:
    train = [str(REPOSITORY / "train.py"), "--train-file", str(rows), "--model", f"scratch:{args.preset}",
             "--epochs", str(args.epochs), "--learning-rate", str(args.learning_rate),
             "--batch-size", str(side.batch_size), "--dropout-rate", "0",
             "--device", "cpu", "--precision", "fp32", "--seed", "1", "--cache-dir", str(work / "cache"),
             "--output-dir", str(work / "runs"), "--run-name", name, "--logging-steps", "10", "--quiet"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                 str(side.processes)] if side.processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(side.threads)}
    log = work / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(launcher + train, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"{side.label} failed (exit status {code}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
    result = json.loads((work / "runs" / name / "result.json").read_text())
    side.samples_per_s = max(side.samples_per_s, result["train_samples_per_second"])
    side.train_s = min(side.train_s or float("inf"), result["train_seconds"])
    side.wall_s = min(side.wall_s, wall)
    side.result = result
    records = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    side.train_losses = {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _match(one: dict, other: dict, tolerance: float) -> bool:
    a, b = one["best"], other["best"]
    return (one["global_step"] == other["global_step"] and abs(a["loss"] - b["loss"]) <= tolerance * abs(a["loss"])
            and all(abs(a[k] - b[k]) <= tolerance for k in ("accuracy", "macro_f1")))


def _table(sides: list[Side], args) -> str:
    one, many = sides
    loss_diff = abs(one.result["best"]["loss"] - many.result["best"]["loss"]) / abs(one.result["best"]["loss"])
    rows = [
        ("threads per process", one.threads, many.threads, ""),
        ("batch per process", one.batch_size, many.batch_size, ""),
        ("optimizer steps", one.result["global_step"], many.result["global_step"], ""),
        ("train samples/s", f"{one.samples_per_s:.1f}", f"{many.samples_per_s:.1f}",
         f"{many.samples_per_s / one.samples_per_s:.2f}x"),
        ("train seconds", f"{one.train_s:.1f}", f"{many.train_s:.1f}", ""),
        ("wall seconds (whole run)", f"{one.wall_s:.1f}", f"{many.wall_s:.1f}", ""),
        ("val loss", f"{one.result['best']['loss']:.5f}", f"{many.result['best']['loss']:.5f}",
         f"rel. diff {loss_diff:.1e}"),
        ("val accuracy", f"{one.result['best']['accuracy']:.4f}", f"{many.result['best']['accuracy']:.4f}", ""),
        ("val macro_f1", f"{one.result['best']['macro_f1']:.4f}", f"{many.result['best']['macro_f1']:.4f}", ""),
    ]
    head = (f"torchrun scaling of train.py on CPU: scratch:{args.preset}, {args.rows} rows (10% validation), "
            f"{args.epochs:g} epoch(s), lr {args.learning_rate:g}, global batch {args.global_batch}, "
            f"best of {args.repeats}")
    lines = [head, f"{'':26}{one.label:>14}{many.label:>16}"]
    lines += [f"{name:26}{str(a):>14}{str(b):>16}  {note}".rstrip() for name, a, b, note in rows]
    verdict = "yes" if _match(one.result, many.result, args.tolerance) else "NO"
    lines.append(f"same result (tolerance {args.tolerance:g}): {verdict}")
    drift = [(step, abs(many.train_losses[step] - loss) / loss) for step, loss in one.train_losses.items()]
    apart = next((step for step, diff in drift if diff > args.tolerance), None)
    lines.append(f"training loss every 10 steps: largest rel. diff {max(d for _, d in drift):.1e}"
                 + (f", first above the tolerance at step {apart}" if apart is not None else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
