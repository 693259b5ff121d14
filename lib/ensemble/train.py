"""Training ensemble members: one run per backbone, or one per backbone and fold, with shared options.

Each member is an ordinary `train_new` run with its own tokenizer and preprocessor fit; memory is
released between members. A member that cannot be built (an uncached hub id offline, a typo) is
reported in one line and skipped, and the others still train.

With K folds a member is a cross-validation folder `<output_dir>/<name>-<model>/` holding the runs
`fold0/ .. fold{K-1}/`, their out-of-fold logits as `val_logits.npz` (every training row exactly
once, in file order) and, written last, `folds.json`; `ensemble.py vote` accepts it as one member.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lib.core.errors import UserError
from lib.core.files import atomic_write_text
from lib.core.progress import progress_enabled
from lib.data.tables import Columns, class_distribution, read_table
from lib.ensemble.members import FOLDS_FILE, VAL_LOGITS, free_memory, open_member
from lib.ensemble.vote import score
from lib.finetune.config import TrainConfig, parse_train_args
from lib.finetune.run_folder import INCOMPLETE_SUFFIX
from lib.finetune.trainer import train_new
from lib.loop.stop import StopRequest

log = logging.getLogger(__name__)

# Flags the ensemble sets per member; a user value would be silently overridden.
_MEMBER_FLAGS = {"--model": "--models", "--run-name": "--name", "--num-folds": "--folds", "--fold": "--folds",
                 "--resume": "train.py --resume on the member's folder"}


@dataclass(frozen=True)
class TrainedEnsemble:
    members: list[Path]
    skipped: list[tuple[str, str]]  # (model, one-line reason)
    report: str


def train_ensemble(models: Sequence[str], train_argv: list[str], *, folds: int | None, name: str | None,
                   stop: StopRequest) -> TrainedEnsemble:
    """Train every model of `models` with the options of `train_argv` (train.py's flags and --config)."""
    for arg in train_argv:
        flag = arg.split("=", 1)[0]
        if flag in _MEMBER_FLAGS:
            raise UserError(f"{flag}: set per member by ensemble.py; use {_MEMBER_FLAGS[flag]}")
    invocation = parse_train_args(train_argv)
    base = invocation.config
    folds = folds or base.num_folds
    if folds is not None and folds < 2:
        raise UserError(f"--folds: expected a whole number >= 2, got {folds}")
    name = name or time.strftime("ens-%Y%m%d-%H%M%S")
    if "/" in name or name in ("", ".", "..") or name.endswith(INCOMPLETE_SUFFIX):
        raise UserError(f"--name: expected a plain folder name, got {name!r}")
    targets = _member_folders(models, name, Path(base.output_dir))
    if not invocation.overwrite:
        taken = [p for p in targets.values() if p.exists() or p.with_name(p.name + INCOMPLETE_SUFFIX).exists()]
        if taken:
            raise UserError(f"--name {name}: {taken[0]} already exists; choose another --name or pass --overwrite")

    show_progress = progress_enabled(invocation.quiet)
    argv = ["train", "--models", *models, *train_argv]
    trained, skipped = [], []
    for model, folder in targets.items():
        cfg = dataclasses.replace(base, model=model, output_dir=str(folder.parent), run_name=folder.name,
                                  num_folds=None, fold=0)
        log.info("member %s -> %s", model, folder)
        try:
            if folds:
                trained.append(_train_folds(cfg, folds, folder, invocation.overwrite, show_progress, argv, stop))
            else:
                trained.append(train_new(cfg, overwrite=invocation.overwrite, show_progress=show_progress,
                                         argv=argv, stop=stop).path)
        except UserError as error:
            log.warning("skipped member %s: %s", model, error)
            skipped.append((model, str(error)))
        finally:
            free_memory()
    if not trained:
        raise UserError(f"--models: no member could be trained ({skipped[0][1]})")
    return TrainedEnsemble(trained, skipped, _report(trained, skipped))


def _member_folders(models: Sequence[str], name: str, output_dir: Path) -> dict[str, Path]:
    """`<output_dir>/<name>-<model slug>`; the same model twice is refused (same seed, same run)."""
    folders = {}
    for model in models:
        if model in folders:
            raise UserError(f"--models: {model} is given twice; both would train the same run")
        folders[model] = output_dir / f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '-', model).strip('-')}"
    return folders


def _train_folds(cfg: TrainConfig, folds: int, folder: Path, overwrite: bool, show_progress: bool,
                 argv: list[str], stop: StopRequest) -> Path:
    """Train the K fold runs of one model inside `folder`, then write its out-of-fold logits."""
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    runs = []
    for fold in range(folds):
        fold_cfg = dataclasses.replace(cfg, output_dir=str(folder), run_name=f"fold{fold}", num_folds=folds, fold=fold)
        runs.append(train_new(fold_cfg, overwrite=overwrite, show_progress=show_progress, argv=argv, stop=stop))
        free_memory()
    ids, labels, logits = [], [], []
    for run in runs:
        with np.load(run.val_logits) as saved:
            ids.append(saved["ids"].astype(str))
            labels.append(saved["labels"])
            logits.append(saved["logits"])
    ids, labels, logits = np.concatenate(ids), np.concatenate(labels), np.concatenate(logits)
    table = read_table(cfg.train_file, Columns(cfg.id_column, cfg.text_column, cfg.label_column), labelled=True,
                       flag="--train-file")
    order = {row_id: i for i, row_id in enumerate(ids)}
    if len(order) != len(ids) or set(order) != set(table.ids.tolist()):
        raise UserError(f"{folder}: the folds' validation rows do not cover {cfg.train_file} exactly once; "
                        "did the file change while the folds trained?")
    in_file_order = np.array([order[row_id] for row_id in table.ids])
    np.savez(folder / VAL_LOGITS, ids=ids[in_file_order], labels=labels[in_file_order],
             logits=logits[in_file_order].astype(np.float32))
    plan = json.loads(runs[0].plan.read_text(encoding="utf-8"))
    spec = {
        "format": 1,
        "model": cfg.model,
        "num_folds": folds,
        "folds": [run.path.name for run in runs],
        "label_names": plan["label_names"],
        # every row is validated once, so the file's counts are the prior the folds were trained under
        "train_class_counts": class_distribution(labels, plan["num_labels"]),
        "id_column": cfg.id_column,
        "text_column": cfg.text_column,
    }
    atomic_write_text(folder / FOLDS_FILE, json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    return folder


def _report(trained: list[Path], skipped: list[tuple[str, str]]) -> str:
    """Each member's validation scores (out of fold for K-fold members), then what to run next."""
    width = max(len(str(path)) for path in trained) + 2
    lines = [f"{'member':<{width}}{'val rows':>10}{'accuracy':>10}{'macro_f1':>10}{'nll':>10}"]
    for path in trained:
        member = open_member(path)
        scores = score(member.val_logits, member.val_labels, len(member.label_names))
        lines.append(f"{str(path):<{width}}{len(member.val_ids):>10}{scores['accuracy']:>10.4f}"
                     f"{scores['macro_f1']:>10.4f}{scores['nll']:>10.4f}")
    lines += [f"skipped {model}: {reason}" for model, reason in skipped]
    lines.append("combine them: python ensemble.py vote " + " ".join(map(str, trained))
                 + " --test data/test.csv --out submission.csv")
    return "\n".join(lines)
