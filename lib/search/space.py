"""A W&B sweep config parsed into a typed, validated search space.

The config keeps the W&B sweep schema so that a user's existing file pastes in unchanged. Two
deliberate differences: `method: bayes` means our TPE here (W&B runs a Gaussian process), and
`metric` is required for every method because the sweep must pick a best trial.

Parameter names are training option names: the user's W&B names already are the training config's
fields (learning_rate, num_train_epochs, per_device_train_batch_size, ...), so there is no alias
table; `known_parameters` refuses a name training does not know, suggesting the closest one.

Quantised distributions follow W&B: values are multiples of `q` inside [min, max] (not anchored at
min), and they are integers when `q` is written as an integer. Random search samples the continuous
distribution and rounds to the nearest multiple, so with min and max on the grid the two end points
get half the mass of the inner ones, exactly as in W&B.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lib.core.errors import UserError

METHODS = ("random", "bayes", "grid")
GOALS = ("minimize", "maximize")
_LOG = frozenset({"log_uniform_values", "log_uniform", "q_log_uniform_values", "q_log_uniform"})
_EXPONENT_BOUNDS = frozenset({"log_uniform", "q_log_uniform"})  # min/max are natural-log exponents
_QUANTISED = frozenset({"q_uniform", "q_log_uniform_values", "q_log_uniform"})
_BOUNDED = frozenset({"int_uniform", "uniform"}) | _LOG | _QUANTISED
_CHOICE = frozenset({"constant", "categorical", "categorical_w_probabilities"})
DISTRIBUTIONS = tuple(sorted(_CHOICE | _BOUNDED))
_TOP_KEYS = {"method", "metric", "parameters", "run_cap", "early_terminate"}
# W&B keys that describe the run rather than the search; kept verbatim so a config round-trips.
_PASS_THROUGH_KEYS = {"name", "description", "program", "command", "project", "entity"}
_PARAM_KEYS = {"distribution", "value", "values", "probabilities", "min", "max", "q"}
_EARLY_TERMINATE_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}


@dataclass(frozen=True)
class Parameter:
    """One searched or fixed training option.

    `values` holds the single value of a constant or the choices of a categorical. `min`/`max` are
    kept as written, so for `log_uniform` and `q_log_uniform` they are natural-log exponents; use
    `low`/`high` for bounds in value space.
    """

    name: str
    distribution: str
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = None

    @property
    def is_choice(self) -> bool:
        return self.distribution in _CHOICE

    @property
    def log(self) -> bool:
        return self.distribution in _LOG

    @property
    def low(self) -> float:
        return math.exp(self.min) if self.distribution in _EXPONENT_BOUNDS else float(self.min)

    @property
    def high(self) -> float:
        return math.exp(self.max) if self.distribution in _EXPONENT_BOUNDS else float(self.max)

    @property
    def step(self) -> float | None:
        """Grid spacing in value space: q, 1 for int_uniform, None for continuous distributions."""
        if self.distribution == "int_uniform":
            return 1
        return self.q if self.distribution in _QUANTISED else None

    @property
    def integer(self) -> bool:
        return self.distribution == "int_uniform" or (
            self.distribution in _QUANTISED and isinstance(self.q, int)
        )

    def grid_ends(self) -> tuple[float, float]:
        """First and last grid point (multiples of the step inside [low, high])."""
        step = self.step
        # The tolerance keeps 0.3 / 0.1 = 2.9999999999999996 on the grid.
        first = math.ceil(self.low / step - 1e-9) * step
        last = math.floor(self.high / step + 1e-9) * step
        return _clean(first, self.integer), _clean(last, self.integer)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Round value-space samples to the nearest grid point, staying inside the grid."""
        first, last = self.grid_ends()
        return np.clip(np.round(np.asarray(x) / self.step) * self.step, first, last)

    def grid(self) -> tuple[Any, ...]:
        """Every value a grid search visits; a continuous distribution has none."""
        if self.is_choice:
            return self.values
        if self.step is None:
            raise UserError(
                f"parameter {self.name!r}: grid search needs `values` or an int/q distribution, "
                f"got {self.distribution}"
            )
        first, last = self.grid_ends()
        count = int(round((last - first) / self.step)) + 1
        return tuple(self.to_python(first + k * self.step) for k in range(count))

    def to_python(self, x: float) -> Any:
        """A sampled number as the plain int or float that goes into the journal."""
        if self.step is not None:
            return _clean(float(x), self.integer)
        return float(x)

    def to_dict(self) -> dict[str, Any]:
        if self.distribution == "constant":
            return {"distribution": "constant", "value": self.values[0]}
        if self.is_choice:
            out: dict[str, Any] = {"distribution": self.distribution, "values": list(self.values)}
            if self.probabilities is not None:
                out["probabilities"] = list(self.probabilities)
            return out
        out = {"distribution": self.distribution, "min": self.min, "max": self.max}
        if self.q is not None:
            out["q"] = self.q
        return out


@dataclass(frozen=True)
class Metric:
    name: str
    goal: str = "minimize"

    @property
    def sign(self) -> float:
        """Multiplier that turns the metric into a loss (lower is better)."""
        return 1.0 if self.goal == "minimize" else -1.0


@dataclass(frozen=True)
class EarlyTerminate:
    """W&B `early_terminate: {type: hyperband, ...}`; rungs are epochs here, not log calls."""

    min_iter: int | None = None
    max_iter: int | None = None
    s: int | None = None
    eta: float = 3
    strict: bool | None = None
    type: str = "hyperband"

    @property
    def min_resource(self) -> int:
        """First rung: `min_iter`, or W&B's lowest band `max_iter / eta**s` when given that way."""
        if self.min_iter is not None:
            return self.min_iter
        return max(1, int(self.max_iter / self.eta**self.s))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for key in ("min_iter", "max_iter", "s"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["eta"] = self.eta
        if self.strict is not None:
            out["strict"] = self.strict
        return out


@dataclass(frozen=True)
class SweepSpace:
    method: str
    metric: Metric
    parameters: tuple[Parameter, ...]
    run_cap: int | None = None
    early_terminate: EarlyTerminate | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def searched(self) -> tuple[Parameter, ...]:
        """Parameters that vary between trials."""
        return tuple(p for p in self.parameters if p.distribution != "constant")

    @property
    def constants(self) -> dict[str, Any]:
        return {p.name: p.values[0] for p in self.parameters if p.distribution == "constant"}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["method"] = self.method
        out["metric"] = {"name": self.metric.name, "goal": self.metric.goal}
        out["parameters"] = {p.name: p.to_dict() for p in self.parameters}
        if self.run_cap is not None:
            out["run_cap"] = self.run_cap
        if self.early_terminate is not None:
            out["early_terminate"] = self.early_terminate.to_dict()
        return out

    def config_hash(self) -> str:
        """Identity of the search problem; a journal written for another space is refused."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_sweep_config(path: Path, known_parameters: Collection[str] | None = None) -> SweepSpace:
    """Read a JSON or YAML sweep config file and parse it."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read sweep config {path}: {err.strerror}") from err
    try:
        raw = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        first_line = str(err).splitlines()[0]
        raise UserError(f"sweep config {path} is not valid JSON/YAML: {first_line}") from err
    if not isinstance(raw, Mapping):
        raise UserError(f"sweep config {path} must be a mapping with method/metric/parameters")
    return parse_sweep_config(raw, known_parameters)


def parse_sweep_config(raw: Mapping[str, Any], known_parameters: Collection[str] | None = None) -> SweepSpace:
    """Validate a W&B sweep config dict; `known_parameters` are the names train.py accepts."""
    unknown = set(raw) - _TOP_KEYS - _PASS_THROUGH_KEYS
    if unknown:
        raise UserError(
            f"sweep config: unknown key {sorted(unknown)[0]!r}; expected one of "
            f"{sorted(_TOP_KEYS | _PASS_THROUGH_KEYS)}"
        )
    method = raw.get("method")
    if method not in METHODS:
        raise UserError(f"sweep config: method must be one of {list(METHODS)}, got {method!r}")
    raw_params = raw.get("parameters")
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise UserError("sweep config: `parameters` must be a non-empty mapping of name -> spec")
    parameters = tuple(_parse_parameter(str(n), spec) for n, spec in raw_params.items())
    if known_parameters is not None:
        for p in parameters:
            _check_known(p.name, known_parameters)
    if method == "grid":
        for p in parameters:
            p.grid()
    return SweepSpace(
        method=method,
        metric=_parse_metric(raw.get("metric")),
        parameters=parameters,
        run_cap=_parse_run_cap(raw.get("run_cap")),
        early_terminate=_parse_early_terminate(raw.get("early_terminate")),
        extra=tuple((k, raw[k]) for k in sorted(raw) if k in _PASS_THROUGH_KEYS),
    )


def _check_known(name: str, known: Collection[str]) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"parameter {name!r} is not a train.py option{hint}")


def _parse_metric(raw: Any) -> Metric:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise UserError("sweep config: `metric` must be a mapping with a `name` (and `goal`)")
    extra = set(raw) - {"name", "goal"}
    if extra:
        raise UserError(f"sweep config: metric key {sorted(extra)[0]!r} is not supported")
    goal = raw.get("goal", "minimize")
    if goal not in GOALS:
        raise UserError(f"sweep config: metric goal must be minimize or maximize, got {goal!r}")
    return Metric(raw["name"], goal)


def _parse_run_cap(raw: Any) -> int | None:
    if raw is None:
        return None
    if not _is_int(raw) or raw < 1:
        raise UserError(f"sweep config: run_cap must be a positive integer, got {raw!r}")
    return raw


def _parse_early_terminate(raw: Any) -> EarlyTerminate | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("type") != "hyperband":
        raise UserError("sweep config: early_terminate must be {type: hyperband, min_iter, eta}")
    unknown = set(raw) - _EARLY_TERMINATE_KEYS
    if unknown:
        raise UserError(f"sweep config: early_terminate key {sorted(unknown)[0]!r} is unknown")
    for key in ("min_iter", "max_iter", "s"):
        if key in raw and (not _is_int(raw[key]) or raw[key] < 1):
            raise UserError(f"early_terminate: {key} must be a positive integer, got {raw[key]!r}")
    if "min_iter" not in raw and not ("max_iter" in raw and "s" in raw):
        raise UserError("early_terminate: give min_iter, or max_iter together with s")
    eta = raw.get("eta", 3)
    if not _is_number(eta) or eta <= 1:
        raise UserError(f"early_terminate: eta must be a number > 1, got {eta!r}")
    strict = raw.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise UserError(f"early_terminate: strict must be true or false, got {strict!r}")
    return EarlyTerminate(raw.get("min_iter"), raw.get("max_iter"), raw.get("s"), eta, strict)


def _infer_distribution(name: str, spec: Mapping[str, Any]) -> str:
    """W&B's rule when `distribution` is omitted."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "q" in spec:
        raise UserError(f"parameter {name!r}: q needs an explicit q_* distribution")
    if "min" in spec and "max" in spec:
        both_int = _is_int(spec["min"]) and _is_int(spec["max"])
        return "int_uniform" if both_int else "uniform"
    raise UserError(f"parameter {name!r}: expected `value`, `values`, or `min` and `max`")


def _parse_parameter(name: str, spec: Any) -> Parameter:
    if not isinstance(spec, Mapping):
        raise UserError(f"parameter {name!r}: expected a mapping such as {{values: [...]}}")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise UserError(
            f"parameter {name!r}: unknown key {sorted(unknown)[0]!r}; expected {sorted(_PARAM_KEYS)}"
        )
    dist = spec.get("distribution") or _infer_distribution(name, spec)
    if dist not in DISTRIBUTIONS:
        raise UserError(
            f"parameter {name!r}: unknown distribution {dist!r}; expected one of {list(DISTRIBUTIONS)}"
        )
    allowed = _allowed_keys(dist)
    extra = set(spec) - allowed
    if extra:
        raise UserError(f"parameter {name!r}: key {sorted(extra)[0]!r} does not apply to {dist}")
    if dist == "constant":
        if "value" not in spec:
            raise UserError(f"parameter {name!r}: constant needs `value`")
        return Parameter(name, dist, values=(spec["value"],))
    if dist in _CHOICE:
        return _parse_choice(name, dist, spec)
    return _parse_bounded(name, dist, spec)


def _allowed_keys(dist: str) -> set[str]:
    if dist == "constant":
        return {"distribution", "value"}
    if dist == "categorical":
        return {"distribution", "values"}
    if dist == "categorical_w_probabilities":
        return {"distribution", "values", "probabilities"}
    if dist in _QUANTISED:
        return {"distribution", "min", "max", "q"}
    return {"distribution", "min", "max"}


def _parse_choice(name: str, dist: str, spec: Mapping[str, Any]) -> Parameter:
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise UserError(f"parameter {name!r}: `values` must be a non-empty list")
    if any(values.index(v) != i for i, v in enumerate(values)):
        raise UserError(f"parameter {name!r}: `values` must not repeat a value")
    if dist == "categorical":
        return Parameter(name, dist, values=tuple(values))
    probs = spec.get("probabilities")
    ok = (
        isinstance(probs, list)
        and len(probs) == len(values)
        and all(_is_number(p) and p >= 0 for p in probs)
        and abs(sum(probs) - 1.0) < 1e-6
    )
    if not ok:
        raise UserError(
            f"parameter {name!r}: `probabilities` must be {len(values)} non-negative numbers summing to 1"
        )
    return Parameter(name, dist, values=tuple(values), probabilities=tuple(float(p) for p in probs))


def _parse_bounded(name: str, dist: str, spec: Mapping[str, Any]) -> Parameter:
    for key in ("min", "max"):
        if key not in spec:
            raise UserError(f"parameter {name!r}: {dist} needs `min` and `max`")
        if not _is_number(spec[key]):
            raise UserError(
                f"parameter {name!r}: {key} must be a number, got {spec[key]!r} "
                "(YAML reads 1e-5 as text; write 1.0e-5)"
            )
    lo, hi = spec["min"], spec["max"]
    if dist == "int_uniform":
        if not (_is_int(lo) and _is_int(hi)):
            raise UserError(f"parameter {name!r}: int_uniform needs integer min and max")
        if lo > hi:
            raise UserError(f"parameter {name!r}: min must be <= max, got min={lo} max={hi}")
    elif not lo < hi:
        raise UserError(f"parameter {name!r}: min must be < max, got min={lo} max={hi}")
    if dist in _LOG and dist not in _EXPONENT_BOUNDS and lo <= 0:
        raise UserError(f"parameter {name!r}: {dist} needs min > 0, got min={lo}")
    q = spec.get("q", 1) if dist in _QUANTISED else None
    if q is not None and (not _is_number(q) or q <= 0):
        raise UserError(f"parameter {name!r}: q must be a number > 0, got {q!r}")
    param = Parameter(name, dist, min=lo, max=hi, q=q)
    if q is not None:
        first, last = param.grid_ends()
        if first > last:
            raise UserError(f"parameter {name!r}: no multiple of q={q} lies in [{lo}, {hi}]")
    return param


def _clean(x: float, integer: bool) -> float | int:
    """Drop float noise from k * q (0.30000000000000004 -> 0.3)."""
    return int(round(x)) if integer else float(f"{x:.12g}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
