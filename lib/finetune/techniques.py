"""Which implementation each extension point of a fine-tuning run gets, from its config.

The loop never branches on a technique: it asks this module once for the parameter groups of its
optimizer and for the objectives of a micro-batch, and plugs in what it gets.
"""

from __future__ import annotations

import math

from lib.finetune.config import TrainConfig
from lib.finetune.plan import TrainingPlan
from lib.loop.layerwise import LayerwiseDecay
from lib.loop.optim import DecayByShape, ParameterGroups


def parameter_groups(cfg: TrainConfig, plan: TrainingPlan) -> ParameterGroups:
    """Layer-wise rates when --layer-lr-decay or --head-learning-rate asks for them, else one rate."""
    if cfg.layer_lr_decay is None and cfg.head_learning_rate is None:
        return DecayByShape(plan.learning_rate, cfg.weight_decay)
    return LayerwiseDecay(plan.learning_rate, cfg.weight_decay, cfg.layer_lr_decay or 1.0, cfg.head_learning_rate)


def adversarial_from_step(cfg: TrainConfig, plan: TrainingPlan) -> int:
    """The first optimizer step (0-based) that takes the adversarial objective."""
    return math.ceil((cfg.adv_start_epoch or 0.0) * plan.steps_per_epoch)

