"""What a pretraining config meant for these texts and this machine, saved as plan.json once fixed.

The length of the run comes from --max-steps or --epochs (one epoch when neither is given); with
--max-minutes the loop fixes it from the speed it measures on the first micro-batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lib.core.errors import UserError
from lib.pretrain.config import PretrainConfig

FILE = "plan.json"


@dataclass(frozen=True)
class PretrainPlan:
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
    world_size: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: Path) -> "PretrainPlan":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except FileNotFoundError:
            raise UserError(f"--resume: {path.parent} has no {path.name}; not a folder written by pretrain.py") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: not a plan written by this version of pretrain.py") from None


def budgeted_steps(cfg: PretrainConfig, train_sequences: int, world_size: int) -> tuple[int, int, str]:
    """(steps per epoch, total steps, what fixed them); total is 0 until measured for --max-minutes alone."""
    micro_batches = math.ceil(train_sequences / (cfg.per_device_train_batch_size * world_size))
    steps_per_epoch = max(1, math.ceil(micro_batches / cfg.gradient_accumulation_steps))
    budgets = {}
    if cfg.max_steps is not None:
        budgets["max_steps"] = cfg.max_steps
    if cfg.num_train_epochs is not None or (cfg.max_steps is None and cfg.max_minutes is None):
        budgets["epochs"] = math.ceil((cfg.num_train_epochs or 1.0) * steps_per_epoch)
    budget = min(budgets, key=budgets.get) if budgets else "max_minutes"
    return steps_per_epoch, budgets.get(budget, 0), budget


def warmup_steps(cfg: PretrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(total_steps * cfg.warmup_ratio)


def steps_for_budget(seconds: float, step_seconds: float, eval_seconds: float, eval_steps: int) -> int:
    """Optimizer steps that fit in `seconds`, with an evaluation every `eval_steps` and one at the end."""
    return max(0, math.floor((seconds - eval_seconds) / (step_seconds + eval_seconds / eval_steps)))


def fit_to_minutes(cfg: PretrainConfig, plan: PretrainPlan, step_seconds: float, eval_seconds: float,
                   remaining: float) -> PretrainPlan:
    """The plan once the speed is known: as many steps as fit in what is left of --max-minutes."""
    fitting = steps_for_budget(remaining, step_seconds, eval_seconds, cfg.eval_steps)
    if fitting < 1:
        raise UserError(f"--max-minutes {cfg.max_minutes:g}: {remaining:.0f} s are left after preparation, "
                        f"not enough for one step ({step_seconds:.1f} s) and the evaluations "
                        f"({eval_seconds:.1f} s each)")
    measured = dataclasses.replace(plan, seconds_per_step=round(step_seconds, 4))
    if plan.budget != "max_minutes" and plan.total_steps <= fitting:  # --max-steps / --epochs end first
        return measured
    return dataclasses.replace(measured, total_steps=fitting, budget="max_minutes",
                               warmup_steps=warmup_steps(cfg, fitting))
