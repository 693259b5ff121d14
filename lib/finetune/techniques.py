"""Which implementation each extension point of a fine-tuning run gets, from its config.

The loop never branches on a technique: it asks this module once for the parameter groups of its
optimizer and for the objectives of a micro-batch, and plugs in what it gets.
"""

from __future__ import annotations

import math

import torch

from lib.finetune.config import AWP_EPS, AWP_LR, FGM_EPSILON, TrainConfig
from lib.finetune.objectives import RDropObjective
from lib.finetune.plan import TrainingPlan
from lib.loop.adversarial import AWP, FGM
from lib.loop.layerwise import LayerwiseDecay
from lib.loop.optim import DecayByShape, ParameterGroups
from lib.loop.step import BatchObjective, ClassifierObjective



def parameter_groups(cfg: TrainConfig, plan: TrainingPlan) -> ParameterGroups:
    """Layer-wise rates when --layer-lr-decay or --head-learning-rate asks for them, else one rate."""
    if cfg.layer_lr_decay is None and cfg.head_learning_rate is None:
        return DecayByShape(plan.learning_rate, cfg.weight_decay)
    return LayerwiseDecay(plan.learning_rate, cfg.weight_decay, cfg.layer_lr_decay or 1.0, cfg.head_learning_rate)


def objectives(cfg: TrainConfig, plan: TrainingPlan, loss_fn: torch.nn.Module,
               device: torch.device) -> tuple[BatchObjective, BatchObjective | None]:
    """The micro-batch objective (R-Drop or the plain one) and, with --adversarial, the same wrapped in
    FGM or AWP for the steps from --adv-start-epoch on."""
    if cfg.rdrop_alpha > 0:
        plain = RDropObjective(loss_fn, cfg.rdrop_alpha, plan.precision, device)
    else:
        plain = ClassifierObjective(loss_fn, plan.precision, device)
    if cfg.adversarial == "fgm":
        return plain, FGM(plain, cfg.adv_epsilon if cfg.adv_epsilon is not None else FGM_EPSILON)
    if cfg.adversarial == "awp":
        return plain, AWP(plain, cfg.awp_lr if cfg.awp_lr is not None else AWP_LR,
                          cfg.awp_eps if cfg.awp_eps is not None else AWP_EPS)
    return plain, None


def adversarial_from_step(cfg: TrainConfig, plan: TrainingPlan) -> int:
    """The first optimizer step (0-based) that takes the adversarial objective."""
    return math.ceil((cfg.adv_start_epoch or 0.0) * plan.steps_per_epoch)

