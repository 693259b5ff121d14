"""Values derived from the config, the data and the model, computed once and saved as plan.json.

The config says what the user asked for; the plan says what that meant for this data: the label
set, the resolved learning rate and max length, how many optimizer steps and warmup steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from lib.core.errors import UserError
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig
from lib.model.backbone import ScratchPreset, learning_rate_for

# Random weights at a scratch preset's learning rate need warmup; pretrained models keep the HF default of 0.
SCRATCH_WARMUP_RATIO = 0.06


@dataclass(frozen=True)
class TrainingPlan:
    num_labels: int
    label_names: list[str]
    train_class_counts: list[int]
    val_class_counts: list[int]
    max_length: int
    learning_rate: float
    focal_alpha: list[float] | None
    special_tokens: list[str]
    device: str
    precision: str
    world_size: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    distilled_rows: int = 0  # unlabelled rows trained on with teacher targets (after the labelled ones)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> "TrainingPlan":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})
        except FileNotFoundError:
            raise UserError(f"{path}: missing; not a run folder written by train.py") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: not a plan written by this version of train.py") from None


def default_learning_rate(cfg: TrainConfig, preset: ScratchPreset | None) -> float:
    """The run's peak learning rate: the user's, else the default of its starting weights."""
    return cfg.learning_rate if cfg.learning_rate is not None else learning_rate_for(preset)


def step_counts(cfg: TrainConfig, train_rows: int, world_size: int = 1,
                micro_batches: int | None = None, from_scratch: bool = False) -> tuple[int, int, int, int]:
    """(micro-batches per epoch, optimizer steps per epoch, total steps, warmup steps), HF's rules.

    A micro-batch is global: `per_device_train_batch_size` rows on each of `world_size` processes.
    A partial last accumulation window still makes an optimizer step, so steps per epoch round up;
    total steps are ceil(epochs * steps per epoch); a warmup ratio rounds up too. With a token
    budget the caller counts the first epoch's micro-batches (`micro_batches`).
    """
    if micro_batches is None:
        micro_batches = math.ceil(train_rows / (cfg.per_device_train_batch_size * world_size))
    steps_per_epoch = max(1, math.ceil(micro_batches / cfg.gradient_accumulation_steps))
    total = math.ceil(cfg.num_train_epochs * steps_per_epoch)
    ratio = cfg.warmup_ratio if cfg.warmup_ratio is not None else SCRATCH_WARMUP_RATIO if from_scratch else 0.0
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(total * ratio)
    return micro_batches, steps_per_epoch, total, warmup


@dataclass(frozen=True)
class ClassicalPlan:
    """plan.json of a `--model tfidf` run: what applies of a TrainingPlan (no tokens, steps or precision)."""

    kind: str  # CLASSICAL_MODEL
    num_labels: int
    label_names: list[str]
    train_class_counts: list[int]
    val_class_counts: list[int]
    special_tokens: list[str]  # the preprocessor's, kept as words by the features
    features: dict[str, int]  # terms per TF-IDF view

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> "ClassicalPlan":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("kind") != CLASSICAL_MODEL:
                raise ValueError(data.get("kind"))
            return cls(**{f.name: data[f.name] for f in fields(cls)})
        except FileNotFoundError:
            raise UserError(f"{path}: missing; not a run folder written by train.py") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}: not a {CLASSICAL_MODEL} plan written by this version of train.py") from None
