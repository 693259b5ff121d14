"""The sweep report: one self-contained `report.html` per sweep folder, for choosing a trial by eye.

It shows what a user otherwise builds by hand from TensorBoard: the best trial and whether its
validation loss rose late, the top trials' learning curves side by side, the optimisation history,
parallel coordinates, parameter importance, and where pruned trials stopped. The charts are SVG
drawn here, so the page needs no script to show them and opens offline; a short inline script only
adds highlighting across charts, trial details on click and table sorting. The data behind the
charts is embedded as JSON (`<script id="sweep-data">`) for anyone who wants to plot it again.

Inputs are the sweep's own files: the journal (trials, per-epoch reports, results) and each trial's
run folder (`metrics.jsonl`, `result.json`), finished or `.incomplete`.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.core.files import atomic_write_text
from lib.finetune.run_folder import INCOMPLETE_SUFFIX
from lib.search.importance import domain, encode, parameter_importance
from lib.search.pruners import SuccessiveHalvingPruner, pruner_for
from lib.search.journal import Journal
from lib.search.space import Parameter, SweepSpace
from lib.search.sweep import SweepFolder, metric_label, open_sweep, status_rows

REPORT_NAME = "report.html"
TOP_K = 5
# A final loss within 1% of the minimum, or within 0.005 nats of it (a near-zero loss doubling), is noise.
RISE_TOLERANCE, RISE_FLOOR = 0.01, 0.005
MAX_TRAIN_POINTS = 300
PALETTE = ("#2c7bb6", "#d7191c", "#1a9641", "#7b3294", "#e66101", "#636363")


def write_report(folder: SweepFolder) -> Path:
    """Write `report.html` into the sweep folder (temp name, then rename) and return its path."""
    path = folder.path / REPORT_NAME
    _, journal, space = open_sweep(folder.path)
    atomic_write_text(path, render(report_data(folder, journal, space), space.searched))
    return path


# -- data ------------------------------------------------------------------------------------------

def report_data(folder: SweepFolder, journal: Journal, space: SweepSpace) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able values."""
    trials = journal.trials()
    rows = {row["trial"]: row for row in status_rows(folder, journal, space)}
    pruner = pruner_for(space)
    out = []
    for trial in trials:
        run = _run_path(folder, trial.number)
        val, train = _read_metrics(run / "metrics.jsonl") if run else ([], [])
        result = _read_result(run / "result.json") if run else None
        out.append({
            "number": trial.number, "state": trial.state.value, "value": _finite(trial.value),
            "params": {p.name: trial.params.get(p.name) for p in space.searched},
            "reports": [[e, _finite(v)] for e, v in sorted(trial.reports.items())],
            "attempts": trial.attempt, "minutes": rows[trial.number]["minutes"], "error": trial.error,
            "folder": str(run.relative_to(folder.path)) if run else None,
            "val": val, "train": train, "late_rise": late_rise(val), "selected": _selected(result),
        })
    importance = parameter_importance(space, trials)
    ranked = sorted((t for t in out if t["state"] == "complete" and t["value"] is not None),
                    key=lambda t: space.metric.sign * t["value"])
    last_epoch = max((t.last_epoch for t in trials), default=0)
    return {
        "sweep": folder.path.name, "sweep_id": journal.header.sweep_id, "method": space.method,
        "metric": metric_label(space), "goal": space.metric.goal,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parameters": [p.to_dict() | {"name": p.name} for p in space.searched],
        "rungs": pruner.rungs(last_epoch) if isinstance(pruner, SuccessiveHalvingPruner) else [],
        "trials": out, "ranking": [t["number"] for t in ranked],
        "importance": {"ranking": [list(r) for r in importance.ranking], "trials": importance.trials,
                       "reason": importance.reason},
    }


def late_rise(val: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the validation loss ended against its minimum; `rose` when it ended clearly above it."""
    points = [(r["epoch"], r["loss"]) for r in val if r.get("loss") is not None]
    if len(points) < 2:
        return None
    low = min(range(len(points)), key=lambda i: points[i][1])
    (min_epoch, min_loss), (last_epoch, last_loss) = points[low], points[-1]
    after = [loss for _, loss in points[low + 1:]]
    return {"min_epoch": min_epoch, "min_loss": min_loss, "last_epoch": last_epoch, "last_loss": last_loss,
            "evaluations_after_min": len(after),
            "rose": bool(after) and last_loss > min_loss + max(RISE_TOLERANCE * abs(min_loss), RISE_FLOOR)}


def _run_path(folder: SweepFolder, number: int) -> Path | None:
    name = folder.trial_name(number)
    for path in (folder.trials / name, folder.trials / (name + INCOMPLETE_SUFFIX)):
        if path.is_dir():
            return path
    return None


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """Validation records and (epoch, train loss) points from a run's metrics.jsonl."""
    val, train = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return val, train
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line of a running or killed trial
            continue
        if record.get("split") == "val":
            val.append({k: _finite(record.get(k)) for k in ("step", "epoch", "loss", "nll", "accuracy", "macro_f1")})
        elif record.get("split") == "train" and _finite(record.get("loss")) is not None:
            train.append([record["epoch"], record["loss"]])
    stride = math.ceil(len(train) / MAX_TRAIN_POINTS) if train else 1
    return val, train[::stride]


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and isinstance(result.get("best"), dict) else None


def _selected(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which checkpoint the trial kept, and by which metric."""
    if result is None:
        return None
    return {"step": result["best"].get("step"), "epoch": result["best"].get("epoch"),
            "metric": result.get("selection_metric"), "kept": result.get("kept")}


def _finite(value: Any) -> Any:
    """JSON has no NaN: a non-finite number becomes None, other values pass."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- page ------------------------------------------------------------------------------------------

def render(data: dict[str, Any], params: tuple[Parameter, ...]) -> str:
    """The page for `report_data`'s dict; `params` are the searched parameters (axes of the parallel plot)."""
    by_number = {t["number"]: t for t in data["trials"]}
    top = [by_number[n] for n in data["ranking"][:TOP_K]]
    counts = {}
    for t in data["trials"]:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    sections = [
        _section("best", "Best trial", _best_section(data, top)),
        _section("curves", f"Learning curves of the top {len(top)}", _curves_section(top)),
        _section("history", "Optimisation history", _history_section(data)),
        _section("parallel", "Parallel coordinates", _parallel_section(data, params)),
        _section("importance", "Parameter importance", _importance_section(data["importance"])),
        _section("pruning", "Metric per epoch and pruning", _pruning_section(data)),
        _section("trials", "Trials", _table_section(data)),
    ]
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sweep {_e(data['sweep'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>Sweep {_e(data['sweep'])}</h1><p>{_e(data['method'])} search, {_e(data['metric'])} "
        f"({_e(data['goal'])}), {len(data['trials'])} trials: {_e(summary)}. Written {_e(data['generated'])}."
        "</p></header>",
        *sections,
        '<aside id="trial-info" hidden></aside>',
        f'<script type="application/json" id="sweep-data">{payload}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ])


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _best_section(data: dict[str, Any], top: list[dict[str, Any]]) -> str:
    if not top:
        return "<p>No trial has completed yet.</p>"
    best, label = top[0], data["metric"]
    train = best["train"] if len(best["train"]) > 1 else []  # one logged step draws no line
    parts = [f"<p><b>Trial {best['number']}</b> has the best {_e(label)}: <b>{best['value']:.4f}</b> "
             f"({_e(data['goal'])}), of {len(data['ranking'])} complete trials."]
    if len(top) > 1:
        second = top[1]
        parts.append(f" The runner-up, trial {second['number']}, has {second['value']:.4f} "
                     f"({second['value'] - best['value']:+.4f}).")
    parts.append("</p>")
    parts.append("<p>" + ", ".join(f"{_e(k)} = {_e(_fmt(v))}" for k, v in best["params"].items()) + "</p>")
    selected = best["selected"]
    if selected and selected.get("step") is not None:
        parts.append(f"<p>Kept checkpoint: {_e(selected['kept'])}/ chosen by {_e(selected['metric'])} at step "
                     f"{selected['step']}" + (f" (epoch {selected['epoch']:.2f})" if selected.get("epoch") else "")
                     + ".</p>")
    parts.append(f'<p class="verdict">{_e(_rise_text(best["late_rise"]))}</p>')
    chart = _Chart("loss of the best trial", "epoch", "loss")
    chart.x_range([p[0] for p in train] + [r["epoch"] for r in best["val"]], start_at_zero=True)
    chart.y_range([p[1] for p in train] + [r["loss"] for r in best["val"]])
    chart.path([(e, v) for e, v in train], "training loss", color="#999")
    chart.path([(r["epoch"], r["loss"]) for r in best["val"]], "val", color=PALETTE[0], trial=best["number"],
               width=2.5, dots=True)
    rise = best["late_rise"]
    if rise:
        chart.ring(rise["min_epoch"], rise["min_loss"], f"lowest validation loss {rise['min_loss']:.4f}")
    if selected and selected.get("epoch"):
        chart.vline(selected["epoch"], "kept checkpoint")
    parts.append(chart.svg("best-loss"))
    parts.append('<p class="legend">'
                 + ('<span style="color:#999">&#9632;</span> training loss ' if train else "")
                 + f'<span style="color:{PALETTE[0]}">&#9632;</span> validation loss '
                 '&#9711; its minimum, dashed: the kept checkpoint</p>')
    return "".join(parts)


def _rise_text(rise: dict[str, Any] | None) -> str:
    if rise is None:
        return "Too few validation evaluations to tell whether the loss rose late."
    if not rise["evaluations_after_min"]:
        return (f"Its validation loss did not rise late: its lowest, {rise['min_loss']:.4f}, is at its last "
                f"evaluation (epoch {rise['min_epoch']:.2f}).")
    if rise["rose"]:
        percent = 100 * (rise["last_loss"] - rise["min_loss"]) / abs(rise["min_loss"] or 1)
        return (f"Its validation loss rose late: lowest {rise['min_loss']:.4f} at epoch {rise['min_epoch']:.2f}, "
                f"then {rise['last_loss']:.4f} at epoch {rise['last_epoch']:.2f} (+{percent:.0f}%), "
                f"{rise['evaluations_after_min']} evaluation(s) past its minimum, a sign of overfitting by the end.")
    return (f"Its validation loss did not rise late: the last evaluation (epoch {rise['last_epoch']:.2f}, "
            f"{rise['last_loss']:.4f}) is at most {RISE_TOLERANCE:.0%} or {RISE_FLOOR} above its minimum "
            f"({rise['min_loss']:.4f} at epoch {rise['min_epoch']:.2f}).")


def _curves_section(top: list[dict[str, Any]]) -> str:
    if not top:
        return "<p>No trial has completed yet.</p>"
    charts = []
    for key, title in (("loss", "validation loss"), ("accuracy", "validation accuracy")):
        chart = _Chart(title, "epoch", title)
        chart.x_range([r["epoch"] for t in top for r in t["val"]], start_at_zero=True)
        chart.y_range([r[key] for t in top for r in t["val"]])
        for i, trial in reversed(list(enumerate(top))):  # the best drawn last, on top
            chart.path([(r["epoch"], r[key]) for r in trial["val"]], f"trial {trial['number']}",
                       color=PALETTE[i % len(PALETTE)], trial=trial["number"], width=2, dots=True)
        charts.append(chart.svg(f"curve-{key}"))
    legend = "".join(
        f'<li data-trial="{t["number"]}"><span style="color:{PALETTE[i % len(PALETTE)]}">&#9632;</span> '
        f'trial {t["number"]}: {t["value"]:.4f}'
        + (" &mdash; validation loss rose late" if t["late_rise"] and t["late_rise"]["rose"] else "") + "</li>"
        for i, t in enumerate(top))
    return f'<div class="row">{"".join(charts)}</div><ul class="legend">{legend}</ul>'


def _history_section(data: dict[str, Any]) -> str:
    scored = [t for t in data["trials"] if t["value"] is not None]
    if not scored:
        return "<p>No trial has a result yet.</p>"
    sign = 1.0 if data["goal"] == "minimize" else -1.0
    chart = _Chart("optimisation history", "trial", data["metric"])
    chart.x_range([t["number"] for t in data["trials"]], integer=True)
    chart.y_range([t["value"] for t in scored])
    best_so_far, best = [], None
    for t in sorted(scored, key=lambda t: t["number"]):
        if t["state"] == "complete" and (best is None or sign * t["value"] < sign * best):
            best = t["value"]
        if best is not None:
            best_so_far.append((t["number"], best))
    chart.steps(best_so_far, "best so far", color=PALETTE[1])
    for t in scored:
        tip = f"trial {t['number']} ({t['state']}): {data['metric']} {t['value']:.4f}"
        if t["state"] == "pruned":
            chart.cross(t["number"], t["value"], tip, t["number"], "pruned-mark")
        else:
            chart.dot(t["number"], t["value"], tip, t["number"], PALETTE[0])
    return chart.svg("history") + (
        f'<p class="legend"><span style="color:{PALETTE[0]}">&#9679;</span> complete '
        f'&#10005; pruned (its best value before it stopped) <span style="color:{PALETTE[1]}">&#9632;</span> '
        "best complete so far</p>")


@dataclass(frozen=True)
class _Axis:
    """One parallel-coordinates axis: a parameter in its encoded space, or the metric."""

    name: str
    low: float
    high: float
    parameter: Parameter | None

    def position(self, value: Any) -> float:
        x = encode(self.parameter, value) if self.parameter else value
        return (x - self.low) / (self.high - self.low) if self.high > self.low else 0.5

    def ticks(self) -> list[tuple[float, str]]:
        p = self.parameter
        if p is not None and p.is_choice:
            return [(float(i), _fmt(v)) for i, v in enumerate(p.values)]
        if p is not None and p.log:
            return [(math.log(v), _fmt(v)) for v in _log_ticks(math.exp(self.low), math.exp(self.high))]
        return [(v, _fmt(v)) for v in _nice_ticks(self.low, self.high)]


def _parallel_section(data: dict[str, Any], params: tuple[Parameter, ...]) -> str:
    scored = [t for t in data["trials"] if t["value"] is not None]
    if not scored or not params:
        return "<p>No trial has a result yet.</p>" if params else "<p>Nothing is searched.</p>"
    values = [t["value"] for t in scored]
    axes = [_Axis(p.name, *domain(p), p) for p in params]
    axes.append(_Axis(data["metric"], min(values), max(values), None))
    width, height, top, bottom, side = max(640, 150 * len(axes)), 360, 44, 30, 70
    step = (width - 2 * side) / max(1, len(axes) - 1)
    xs = [side + i * step for i in range(len(axes))]
    y = lambda frac: height - bottom - frac * (height - top - bottom)
    sign = 1.0 if data["goal"] == "minimize" else -1.0
    order = sorted(scored, key=lambda t: -sign * t["value"])  # worst first, so the best lies on top
    spread = max(values) - min(values)
    marks = []
    for t in order:
        quality = 1.0 if spread == 0 else (max(sign * v for v in values) - sign * t["value"]) / spread
        points = [(x, y(axis.position(t["params"][axis.name] if axis.parameter else t["value"])))
                  for x, axis in zip(xs, axes)]
        pruned = t["state"] == "pruned"
        tip = f"trial {t['number']} ({t['state']}): {data['metric']} {t['value']:.4f}; " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in t["params"].items())
        marks.append(f'<polyline class="line{" pruned" if pruned else ""}" data-trial="{t["number"]}" '
                     f'points="{_points(points)}" stroke="{"#bbb" if pruned else _blend(quality)}">'
                     f"<title>{_e(tip)}</title></polyline>")
    frame = []
    for i, (x, axis) in enumerate(zip(xs, axes)):
        frame.append(f'<line class="axis" x1="{x:.1f}" y1="{y(0):.1f}" x2="{x:.1f}" y2="{y(1):.1f}"/>')
        # Names alternate between two heights so that long neighbours do not overlap.
        frame.append(f'<text class="axis-name" x="{x:.1f}" y="{top - 10 - 14 * (i % 2)}">{_e(axis.name)}</text>')
    ticks = []
    for x, axis in zip(xs, axes):
        for value, text in axis.ticks():
            frac = (value - axis.low) / (axis.high - axis.low) if axis.high > axis.low else 0.5
            ticks.append(f'<text class="tick" x="{x - 5:.1f}" y="{y(frac) + 4:.1f}" text-anchor="end">'
                         f"{_e(text)}</text>")
    svg = (f'<svg class="chart parallel" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="parallel coordinates">{"".join(frame + marks + ticks)}</svg>')
    return (f'<div class="scroll">{svg}</div><p class="legend">One line per trial; colour from '
            f'<span style="color:{_blend(0)}">worst</span> to <span style="color:{_blend(1)}">best</span> '
            f"{_e(data['metric'])}; grey: pruned. Log-scaled ranges are drawn in log scale.</p>")


def _importance_section(importance: dict[str, Any]) -> str:
    if importance["reason"]:
        return f'<p class="verdict">No ranking: {_e(importance["reason"])}.</p>'
    ranking = importance["ranking"]
    bar_left, bar_width, row = 210, 360, 24
    height = row * len(ranking) + 10
    rows = []
    for i, (name, share) in enumerate(ranking):
        y = 5 + i * row
        rows.append(f'<text class="tick" x="{bar_left - 8}" y="{y + 15}" text-anchor="end">{_e(name)}</text>'
                    f'<rect class="bar" x="{bar_left}" y="{y + 3}" width="{max(1.0, share * bar_width):.1f}" '
                    f'height="{row - 8}" fill="{PALETTE[0]}"><title>{_e(name)}: {share:.1%}</title></rect>'
                    f'<text class="tick" x="{bar_left + share * bar_width + 6:.1f}" y="{y + 15}">{share:.1%}</text>')
    svg = (f'<svg class="chart importance" viewBox="0 0 640 {height}" width="640" height="{height}" role="img" '
           f'aria-label="parameter importance">{"".join(rows)}</svg>')
    return svg + (f'<p class="legend">fANOVA main effects from a random forest on {importance["trials"]} complete '
                  "trials: the share of the metric's variance each parameter explains on its own, normalised to "
                  "sum to 100% (interactions left out). Pruned trials are not used.</p>")


def _pruning_section(data: dict[str, Any]) -> str:
    reported = [t for t in data["trials"] if any(v is not None for _, v in t["reports"])]
    if not reported:
        return "<p>No trial has reported an epoch yet.</p>"
    chart = _Chart("metric per epoch", "epoch", data["metric"])
    chart.x_range([e for t in reported for e, _ in t["reports"]], integer=True)
    chart.y_range([v for t in reported for _, v in t["reports"]])
    for rung in data["rungs"]:
        chart.vline(rung, f"rung: epoch {rung}")
    for t in sorted(reported, key=lambda t: t["state"] != "pruned"):  # pruned underneath, in grey
        pruned = t["state"] == "pruned"
        points = [(e, v) for e, v in t["reports"] if v is not None]
        chart.path(points, f"trial {t['number']} ({t['state']})", color="#bbb" if pruned else PALETTE[0],
                   trial=t["number"], width=1.5, dots=not pruned)
        if pruned:
            epoch, value = points[-1]
            chart.cross(epoch, value, f"trial {t['number']} pruned at epoch {epoch}: {value:.4f}", t["number"],
                        "pruned-mark", epoch)
    pruned = sum(t["state"] == "pruned" for t in data["trials"])
    note = (f"{pruned} trial(s) pruned, each marked &#10005; at the epoch where it stopped; dashed lines: the "
            "successive-halving rungs." if data["rungs"] else "This sweep has no early_terminate: nothing is pruned.")
    return chart.svg("pruning") + f'<p class="legend">What the pruner compares: each trial\'s {_e(data["metric"])} ' \
                                  f"reported at every epoch end. {note}</p>"


def _table_section(data: dict[str, Any]) -> str:
    names = [p["name"] for p in data["parameters"]]
    head = ["trial", "state", data["metric"], "epochs", "minutes", "attempts", "loss rose late", *names, "folder"]
    best = data["ranking"][0] if data["ranking"] else None
    body = []
    for t in data["trials"]:
        rise = t["late_rise"]
        cells = [t["number"], t["state"], t["value"], t["reports"][-1][0] if t["reports"] else 0, t["minutes"],
                 t["attempts"], None if rise is None else ("yes" if rise["rose"] else "no"),
                 *(t["params"].get(n) for n in names)]
        tds = "".join(f'<td data-v="{_e(_sort_key(c))}">{_e(_fmt(c))}</td>' for c in cells)
        link = f'<a href="{_e(t["folder"])}/">{_e(t["folder"])}</a>' if t["folder"] else "-"
        title = f' title="{_e(t["error"])}"' if t["error"] else ""
        css = " best" if t["number"] == best else ""
        body.append(f'<tr class="{t["state"]}{css}" data-trial="{t["number"]}"{title}>{tds}<td>{link}</td></tr>')
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p class="legend">Click a heading to sort; hover a row '
            "to find the trial in the charts; click a mark in a chart for its details.</p>")


# -- SVG -------------------------------------------------------------------------------------------

class _Chart:
    """An x/y chart drawn as SVG: fit the ranges, add marks, then `svg()` adds the axes and grid."""

    W, H, LEFT, RIGHT, TOP, BOTTOM = 560, 280, 64, 16, 14, 44

    def __init__(self, title: str, xlabel: str, ylabel: str) -> None:
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.marks: list[str] = []
        self.integer = False
        self.x_lo = self.y_lo = 0.0
        self.x_hi = self.y_hi = 1.0

    def x_range(self, values: list[Any], start_at_zero: bool = False, integer: bool = False) -> None:
        finite = [v for v in values if v is not None] + ([0.0] if start_at_zero else [])
        self.integer = integer
        if finite:
            self.x_lo, self.x_hi = min(finite), max(finite)
        if self.x_hi <= self.x_lo:
            self.x_lo, self.x_hi = self.x_lo - 0.5, self.x_hi + 0.5
        elif integer:
            self.x_lo, self.x_hi = self.x_lo - 0.5, self.x_hi + 0.5

    def y_range(self, values: list[Any]) -> None:
        finite = [v for v in values if v is not None]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = (hi - lo) * 0.06 or abs(lo) * 0.05 or 0.5
            self.y_lo, self.y_hi = lo - pad, hi + pad

    def px(self, x: float) -> float:
        return self.LEFT + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.W - self.LEFT - self.RIGHT)

    def py(self, y: float) -> float:
        return self.H - self.BOTTOM - (y - self.y_lo) / (self.y_hi - self.y_lo) * (self.H - self.TOP - self.BOTTOM)

    def path(self, points: list[tuple[float, float]], tip: str, color: str, trial: int | None = None,
             width: float = 1.5, dots: bool = False) -> None:
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if not points:
            return
        d = "M" + " L".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in points)
        attr = f' data-trial="{trial}"' if trial is not None else ""
        self.marks.append(f'<path class="line"{attr} d="{d}" stroke="{color}" stroke-width="{width}">'
                          f"<title>{_e(tip)}</title></path>")
        if dots:
            self.marks += [f'<circle class="dot"{attr} cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="2.5" '
                           f'fill="{color}"><title>{_e(tip)}: {y:.4f} at epoch {_fmt(x)}</title></circle>'
                           for x, y in points]

    def steps(self, points: list[tuple[float, float]], tip: str, color: str) -> None:
        if not points:
            return
        d = f"M{self.px(points[0][0]):.1f},{self.py(points[0][1]):.1f}"
        for x, y in points[1:]:
            d += f" H{self.px(x):.1f} V{self.py(y):.1f}"
        d += f" H{self.px(self.x_hi):.1f}"
        self.marks.append(f'<path class="line best-so-far" d="{d}" stroke="{color}" stroke-width="2">'
                          f"<title>{_e(tip)}</title></path>")

    def dot(self, x: float, y: float, tip: str, trial: int, color: str) -> None:
        self.marks.append(f'<circle class="dot" data-trial="{trial}" cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" '
                          f'r="4" fill="{color}"><title>{_e(tip)}</title></circle>')

    def cross(self, x: float, y: float, tip: str, trial: int, css: str, epoch: int | None = None) -> None:
        cx, cy, r = self.px(x), self.py(y), 4.5
        extra = f' data-epoch="{epoch}"' if epoch is not None else ""
        self.marks.append(f'<path class="{css}" data-trial="{trial}"{extra} d="M{cx - r:.1f},{cy - r:.1f} '
                          f'L{cx + r:.1f},{cy + r:.1f} M{cx - r:.1f},{cy + r:.1f} L{cx + r:.1f},{cy - r:.1f}">'
                          f"<title>{_e(tip)}</title></path>")

    def ring(self, x: float, y: float, tip: str) -> None:
        self.marks.append(f'<circle class="ring" cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="7">'
                          f"<title>{_e(tip)}</title></circle>")

    def vline(self, x: float, tip: str) -> None:
        px = self.px(x)
        self.marks.append(f'<line class="marker" x1="{px:.1f}" y1="{self.TOP}" x2="{px:.1f}" '
                          f'y2="{self.H - self.BOTTOM}"><title>{_e(tip)}</title></line>')

    def svg(self, css: str) -> str:
        frame, bottom = [], self.H - self.BOTTOM
        xticks = _nice_ticks(self.x_lo, self.x_hi, integer=self.integer)
        for x in xticks:
            frame.append(f'<line class="grid" x1="{self.px(x):.1f}" y1="{self.TOP}" x2="{self.px(x):.1f}" '
                         f'y2="{bottom}"/><text class="tick" x="{self.px(x):.1f}" y="{bottom + 16}" '
                         f'text-anchor="middle">{_e(_fmt(x))}</text>')
        for y in _nice_ticks(self.y_lo, self.y_hi):
            frame.append(f'<line class="grid" x1="{self.LEFT}" y1="{self.py(y):.1f}" x2="{self.W - self.RIGHT}" '
                         f'y2="{self.py(y):.1f}"/><text class="tick" x="{self.LEFT - 6}" y="{self.py(y) + 4:.1f}" '
                         f'text-anchor="end">{_e(_fmt(y))}</text>')
        frame.append(f'<text class="label" x="{(self.LEFT + self.W - self.RIGHT) / 2:.1f}" y="{self.H - 6}" '
                     f'text-anchor="middle">{_e(self.xlabel)}</text><text class="label" x="14" '
                     f'y="{(self.TOP + bottom) / 2:.1f}" text-anchor="middle" transform="rotate(-90 14 '
                     f'{(self.TOP + bottom) / 2:.1f})">{_e(self.ylabel)}</text>')
        return (f'<svg class="chart {css}" viewBox="0 0 {self.W} {self.H}" width="{self.W}" height="{self.H}" '
                f'role="img" aria-label="{_e(self.title)}">{"".join(frame)}{"".join(self.marks)}</svg>')


def _nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    return [float(f"{first + i * step:.10g}") for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 times powers of ten inside [lo, hi]; only the powers when that gives too many."""
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo * (1 - 1e-9) <= m * 10.0**k <= hi * (1 + 1e-9)]
    if len(ticks) > 7:
        ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]
    return ticks if len(ticks) >= 2 else [lo, hi]


def _points(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _blend(quality: float) -> str:
    """Orange (worst) to blue (best)."""
    worst, best = (0xFD, 0xAE, 0x61), (0x2C, 0x7B, 0xB6)
    return "#" + "".join(f"{round(w + quality * (b - w)):02x}" for w, b in zip(worst, best))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sort_key(value: Any) -> str:
    return "" if value is None else str(value)


def _e(text: Any) -> str:
    return html.escape(str(text))


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:12px}.scroll{overflow-x:auto}
svg.chart{background:#fff;border:1px solid #eee;max-width:100%;height:auto}
.grid{stroke:#eee}.axis{stroke:#888}.tick{font-size:11px;fill:#555}.label{font-size:12px;fill:#333}
.axis-name{font-size:12px;fill:#333;text-anchor:middle}.parallel .tick{paint-order:stroke;stroke:#fff;stroke-width:3px}
.line{fill:none;stroke-linejoin:round}.parallel .line{stroke-width:1.6;opacity:.85}.line.pruned{stroke-dasharray:4 3}
.best-so-far{opacity:.8}.pruned-mark{stroke:#555;stroke-width:2;fill:none}
.ring{fill:none;stroke:#d7191c;stroke-width:2}.marker{stroke:#888;stroke-dasharray:5 4}
.legend{color:#555;font-size:13px}ul.legend{list-style:none;padding:0;display:flex;gap:18px;flex-wrap:wrap}
.verdict{background:#f6f8fa;border-left:3px solid #2c7bb6;padding:6px 10px}
table{border-collapse:collapse;font-size:12px}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f6f8fa;position:sticky;top:0}tr.best{background:#eaf3fb}tr.pruned{color:#888}
tr.failed{color:#b00}tr.hl{outline:2px solid #2c7bb6}
body.focus svg [data-trial]:not(.hl){opacity:.12}svg .hl{stroke-width:3}
#trial-info{position:fixed;right:16px;bottom:16px;max-width:380px;background:#fff;border:1px solid #ccc;
padding:10px 12px;box-shadow:0 2px 8px rgba(0,0,0,.15);font-size:12px;white-space:pre-wrap}
"""

# Highlighting, trial details and sorting; the charts themselves are already drawn without it.
_SCRIPT = """
(() => {
  const data = JSON.parse(document.getElementById('sweep-data').textContent);
  const trials = new Map(data.trials.map(t => [String(t.number), t]));
  const marks = Array.from(document.querySelectorAll('[data-trial]'));
  const info = document.getElementById('trial-info');
  let pinned = null;
  const focus = n => {
    document.body.classList.toggle('focus', n !== null);
    for (const m of marks) m.classList.toggle('hl', m.dataset.trial === n);
  };
  const show = n => {
    const t = trials.get(n);
    const value = t.value === null ? '-' : t.value.toFixed(4);
    const params = Object.entries(t.params).map(([k, v]) => `  ${k} = ${v}`).join('\\n');
    info.textContent = `trial ${t.number} (${t.state}), ${data.metric} ${value}\\n${params}\\n` +
      (t.folder ? `folder: ${t.folder}` : 'no run folder') + (t.error ? `\\nerror: ${t.error}` : '');
    info.hidden = false;
  };
  for (const m of marks) {
    m.addEventListener('mouseenter', () => focus(m.dataset.trial));
    m.addEventListener('mouseleave', () => focus(pinned));
    m.addEventListener('click', () => {
      pinned = pinned === m.dataset.trial ? null : m.dataset.trial;
      info.hidden = pinned === null;
      if (pinned !== null) show(pinned);
      focus(pinned);
    });
  }
  for (const table of document.querySelectorAll('table.sortable')) {
    table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
      const body = table.tBodies[0];
      const key = r => r.cells[col].dataset.v;
      const rows = Array.from(body.rows);
      const numeric = rows.every(r => key(r) === '' || !isNaN(Number(key(r))));
      const down = th.dataset.order !== 'down';
      th.dataset.order = down ? 'down' : 'up';
      rows.sort((a, b) => {
        const [x, y] = [key(a), key(b)];
        const c = numeric ? (x === '' ? Infinity : Number(x)) - (y === '' ? Infinity : Number(y)) : x.localeCompare(y);
        return down ? c : -c;
      });
      body.append(...rows);
    }));
  }
  document.body.dataset.ready = 'yes';
})();
"""
