"""SWA after training, over saved checkpoints (the user's "SWA-K": K epoch ends), the greedy choice of
what to average (a run's checkpoints, or whole runs in a model soup), and the epoch from which
`--swa-start` averages during training (`lib.loop.averaging.EpochSWA`).

Averages are kept in fp32 on the CPU (a running mean in half precision drifts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
from torch.optim.swa_utils import AveragedModel
from transformers import PreTrainedModel

from lib.core.errors import UserError

Ingredient = TypeVar("Ingredient")
Score = TypeVar("Score")


def average_checkpoints(folders: Sequence[Path], load: Callable[[Path], PreTrainedModel]) -> PreTrainedModel:
    """Equal-weight mean of the checkpoints in `folders`, each loaded by `load` (one at a time)."""
    averaged = None
    for folder in folders:
        model = load(folder).float().cpu()
        if averaged is None:
            averaged = AveragedModel(model, device=torch.device("cpu"))
        averaged.update_parameters(model)
        del model
    if averaged is None:
        raise ValueError("no checkpoints to average")
    return averaged.module


def greedy_soup(ranked: Sequence[Ingredient], evaluate: Callable[[list[Ingredient]], Score],
                keeps: Callable[[Score, Score], bool]) -> tuple[list[Ingredient], Score]:
    """The greedy soup of Wortsman et al. (2022): start from the first of `ranked` (best first) and add
    each next one only if `keeps(score with it, score without it)`; returns the kept ones and their score.

    Only the current soup's and one trial's scores are alive at a time, so a score may hold a model.
    """
    soup = [ranked[0]]
    score = evaluate(soup)
    for candidate in ranked[1:]:
        trial = [*soup, candidate]
        trial_score = evaluate(trial)
        if keeps(trial_score, score):
            soup, score = trial, trial_score
        del trial_score
    return soup, score


def start_epoch(swa_start: float, num_epochs: int) -> int:
    """0-based index of the first epoch whose end weights enter the average.

    An integer >= 1 is a 1-based epoch (Lightning's convention); a fraction in (0, 1) is a share of
    the epochs, so 0.75 of 4 epochs starts at the end of epoch 3.
    """
    if swa_start >= 1:
        if not float(swa_start).is_integer():
            raise UserError(f"--swa-start {swa_start}: expected a whole epoch number or a fraction in (0, 1)")
        epoch = int(swa_start) - 1
    else:
        epoch = max(0, math.ceil(swa_start * num_epochs) - 1)
    if epoch >= num_epochs:
        raise UserError(f"--swa-start {swa_start}: the run has only {num_epochs} epochs")
    return epoch
