"""The W&B sink of the metrics logger (`--report-to wandb`), under the names the HF Trainer's
WandbCallback logs: `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/epoch`, `eval/loss`,
`eval/accuracy`, ... against `train/global_step`; the resolved config; the final result as the summary.

`wandb` is an optional extra, imported here and only when asked for. Under a W&B agent the
environment it sets (WANDB_SWEEP_ID, WANDB_RUN_ID, ...) names the run the agent created and
`wandb.init` joins it, so the sweep finds its metric; the sweep's values are then checked against
the ones this run resolved, since W&B records the sweep's whatever the program trained with.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import yaml

from lib.core.errors import UserError
from lib.core.options import convert, field_of, to_dict

INSTALL = "pip install -r requirements-wandb.txt"
RUN_FILE = "wandb_run.json"  # in the run folder: the W&B run a resumed run continues
STEP = "train/global_step"
_HF_NAMES = {"lr": "learning_rate"}


def require_wandb() -> None:
    """Refuse `--report-to wandb` at once when the package is missing, before any work is done."""
    if importlib.util.find_spec("wandb") is None:
        raise UserError(f"--report-to wandb: the wandb package is not installed (install it: {INSTALL})")


def hf_names(split: str, values: dict[str, float]) -> dict[str, float]:
    """A metrics.jsonl record's values as HF's `rewrite_logs` names them: `val` is `eval/<name>`, an
    average's `val_ema` is `eval/ema_<name>` (HF's `eval_ema_<name>`), `train/lr` is `train/learning_rate`."""
    prefix = "eval/" if split == "val" else f"eval/{split[4:]}_" if split.startswith("val_") else f"{split}/"
    return {prefix + _HF_NAMES.get(name, name): value for name, value in values.items()}


class WandbSink:
    """One W&B run per training run: started (or joined, under an agent) when training starts,
    continued by a resumed run, finished when the metrics logger closes. Check with `require_wandb`
    and `check_sweep_values` before the run's work starts."""

    def __init__(self, run_dir: Path, name: str, config: Any, plan: dict, resumed: bool) -> None:
        import wandb  # the optional extra: require_wandb() has said whether it is there

        saved = run_dir / RUN_FILE
        # the environment (a W&B agent, or the user) names the run when it says WANDB_RUN_ID
        same_run = (json.loads(saved.read_text(encoding="utf-8"))
                    if resumed and saved.is_file() and "WANDB_RUN_ID" not in os.environ else {})
        self._run = wandb.init(name=name, config={**to_dict(config), "plan": plan},
                               **({"id": same_run["id"], "project": same_run["project"], "resume": "allow"}
                                  if same_run else {}))
        saved.write_text(json.dumps({"id": self._run.id, "project": self._run.project}) + "\n", encoding="utf-8")
        self._run.define_metric(STEP)
        self._run.define_metric("*", step_metric=STEP, step_sync=True)

    def log(self, split: str, step: int, epoch: float, values: dict[str, float]) -> None:
        self._run.log({STEP: step, "train/epoch": epoch, **hf_names(split, values)})

    def summary(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def close(self) -> None:
        self._run.finish()


def check_sweep_values(config: Any) -> None:
    """Under a W&B agent, refuse a run whose options differ from the sweep's values: W&B would show
    the sweep's while the run trained with others (a sweep command without `${args}`, a flag after it).
    The agent writes them to WANDB_SWEEP_PARAM_PATH as `name: {value: v}`; names that are not options
    of `config` (train.py's `--config`) are argparse's to check."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not Path(path).is_file():
        return
    source = f"W&B sweep parameters {path}"
    parameters = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for key, entry in parameters.items():
        f = field_of(type(config), str(key))
        if f is None or not isinstance(entry, dict) or "value" not in entry:
            continue
        resolved = getattr(config, f.name)
        if convert(f, entry["value"], source) != resolved:
            raise UserError(f"{source}: {key} is {entry['value']!r} in the sweep but {resolved!r} in this run; "
                            "the sweep's command must pass its values (${args})")
