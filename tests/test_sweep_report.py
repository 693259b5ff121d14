"""The sweep report and parameter importance, on sweep folders built here from a journal and the files
train.py writes (metrics.jsonl, result.json), plus one tiny real sweep."""

import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

import sweep
from lib.core.cli import run_cli
from lib.finetune.config import option_names
from lib.search import Journal, SweepHeader, TrialState, parse_sweep_config
from lib.search.importance import MIN_TRIALS, domain, encode, fanova_shares, parameter_importance
from lib.search.report import late_rise, write_report
from lib.search.sweep import SweepFolder

PARAMETERS = {
    "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
    "per_device_train_batch_size": {"values": [16, 32]},
    "lr_scheduler_type": {"values": ["linear", "cosine"]},
    "num_train_epochs": {"value": 3},
}
STEPS_PER_EPOCH = 10


def _space(early_terminate=True):
    config = {"method": "random", "metric": {"name": "eval_loss", "goal": "minimize"}, "parameters": PARAMETERS}
    if early_terminate:
        config["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 3}
    return parse_sweep_config(config, option_names())


def _val_losses(params, overfit):
    """Three epochs of validation loss: the level set by the learning rate (best near 1e-3), then a dip."""
    level = 0.4 + 0.5 * (math.log10(params["learning_rate"]) + 3) ** 2 + 0.3 * params["weight_decay"]
    return [level + 0.3, level, level + (0.15 if overfit else -0.02)]


def _write_run(path, losses, pruned, torn=False):
    """A run folder as train.py leaves it: metrics.jsonl lines by MetricsLogger, result.json by finish."""
    path.mkdir(parents=True)
    lines = []
    for epoch, loss in enumerate(losses, start=1):
        for k in range(1, STEPS_PER_EPOCH + 1, 5):
            step = (epoch - 1) * STEPS_PER_EPOCH + k
            lines.append({"split": "train", "step": step, "epoch": round(step / STEPS_PER_EPOCH, 4), "time": 0.0,
                          "loss": loss + 0.2, "lr": 1e-3, "grad_norm": 1.0, "samples_per_second": 100.0})
        lines.append({"split": "val", "step": epoch * STEPS_PER_EPOCH, "epoch": float(epoch), "time": 0.0,
                      "loss": loss, "nll": loss, "accuracy": 1.0 - loss / 2, "macro_f1": 0.9 - loss / 2, "f1_a": 0.5})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (path / "metrics.jsonl").write_text(text + ('{"split": "val", "ste' if torn else ""))
    if torn:
        return
    best = int(np.argmin(losses))
    result = {"kept": "best", "selection_metric": "loss", "best_step": (best + 1) * STEPS_PER_EPOCH,
              "best": {"step": (best + 1) * STEPS_PER_EPOCH, "epoch": float(best + 1), "loss": losses[best]},
              "pruned": pruned}
    (path / "result.json").write_text(json.dumps(result))


def build_sweep(root, n_trials, space=None, seed=0, overfit=lambda n: n % 2 == 0, pruned=(3, 7),
                value=None):
    """A finished sweep without training: a journal and one run folder per trial, plus a running and a
    failed trial. `value(params)` replaces the metric of complete trials (for importance tests)."""
    space = space or _space()
    folder = SweepFolder(root)
    folder.trials.mkdir(parents=True)
    clock = iter(range(10**6)).__next__
    journal = Journal.create(folder.journal, SweepHeader("test", space.config_hash(), 0, space.to_dict()), clock)
    rng = np.random.default_rng(seed)
    for n in range(n_trials + 2):
        params = {"learning_rate": float(10 ** rng.uniform(-4, -2)), "weight_decay": float(rng.uniform(0, 0.1)),
                  "per_device_train_batch_size": int(rng.choice([16, 32])),
                  "lr_scheduler_type": str(rng.choice(["linear", "cosine"]))}
        trial = journal.claim("w", lambda number, trials: params, None, 1e9)
        losses = _val_losses(params, overfit(n))
        run = folder.trials / folder.trial_name(n)
        if n == n_trials:  # still running: one epoch reported, a torn metrics line
            journal.report(n, "w", 1, losses[0])
            _write_run(run.with_name(run.name + ".incomplete"), losses[:1], False, torn=True)
            continue
        if n == n_trials + 1:
            journal.fail(n, "w", "UserError: out of memory")
            continue
        if n in pruned:
            journal.report(n, "w", 1, losses[0])
            journal.prune(n, "w", losses[0])
            _write_run(run, losses[:1], True)
            continue
        for epoch, loss in enumerate(losses, start=1):
            journal.report(trial.number, "w", epoch, loss)
        journal.finish(n, "w", min(losses) if value is None else value(params))
        _write_run(run, losses, False)
    return folder


class _Page(HTMLParser):
    """Elements of the page by tag, with their attributes and the section each lies in."""

    def __init__(self):
        super().__init__()
        self.elements, self.section, self.scripts, self._in_script = [], None, [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs.get("id")
        self.elements.append((tag, attrs, self.section))
        self._in_script = tag == "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in_script = False

    def in_section(self, section, tag):
        return [a for t, a, s in self.elements if s == section and t == tag]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = build_sweep(tmp_path_factory.mktemp("report") / "s", 12)
    path = write_report(folder)
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return folder, path.read_text(encoding="utf-8"), page


def test_the_report_has_every_section_with_its_chart_drawn(report):
    folder, text, page = report
    assert (folder.path / "report.html").is_file() and not list(folder.path.glob("*.tmp"))
    sections = {a["id"] for t, a, _ in page.elements if t == "section"}
    assert sections == {"best", "curves", "history", "parallel", "importance", "pruning", "trials"}
    for section in sections - {"trials"}:
        assert page.in_section(section, "svg"), section
    assert len(page.in_section("parallel", "polyline")) == 12  # complete and pruned trials, not running/failed
    assert {a["data-trial"] for a in page.in_section("curves", "path")} == {str(n) for n in _top(folder, 5)}
    assert len(page.in_section("importance", "rect")) == 4
    assert len(page.in_section("trials", "tr")) == 1 + 14
    assert len(page.in_section("best", "path")) == 2  # training and validation loss


def test_the_page_is_self_contained_and_embeds_its_data(report):
    folder, text, page = report
    assert "http://" not in text and "https://" not in text
    assert not [a for t, a, _ in page.elements if t in ("script", "link", "img") and (a.get("src") or a.get("href"))]
    data = json.loads(next(a for a in page.scripts if a.lstrip().startswith("{")))
    assert [t["number"] for t in data["trials"]] == list(range(14))
    assert data["trials"][12]["state"] == "running" and len(data["trials"][12]["val"]) == 1  # torn line skipped
    assert data["trials"][13]["error"] == "UserError: out of memory"
    assert data["ranking"] == _top(folder, 10)
    assert len(data["trials"][0]["val"]) == 3 and data["trials"][0]["train"]


def test_pruned_trials_are_marked_at_the_rung_where_they_stopped(report):
    _, _, page = report
    marks = [a for a in page.in_section("pruning", "path") if a.get("class") == "pruned-mark"]
    assert sorted((a["data-trial"], a["data-epoch"]) for a in marks) == [("3", "1"), ("7", "1")]
    rungs = [a for a in page.in_section("pruning", "line") if a.get("class") == "marker"]
    assert len(rungs) == 2  # epochs 1 and 3 (min_iter 1, eta 3)


def test_the_best_trial_says_whether_its_validation_loss_rose_late(report, tmp_path):
    folder, text, _ = report
    best = _top(folder, 1)[0]
    assert f"<b>Trial {best}</b> has the best eval_loss" in text
    assert ("rose late" in _verdict(text)) is (best % 2 == 0)  # even trials overfit in build_sweep
    flat = write_report(build_sweep(tmp_path / "flat", 12, overfit=lambda n: False)).read_text()
    assert "did not rise late" in _verdict(flat)
    steep = write_report(build_sweep(tmp_path / "steep", 12, overfit=lambda n: True)).read_text()
    assert "Its validation loss rose late: lowest" in _verdict(steep)


def test_late_rise_compares_the_last_evaluation_with_the_minimum():
    curve = lambda *losses: [{"epoch": float(e), "loss": v} for e, v in enumerate(losses, start=1)]
    rise = late_rise(curve(0.9, 0.5, 0.6, 0.7))
    assert rise["rose"] and rise["min_epoch"] == 2.0 and rise["evaluations_after_min"] == 2
    assert not late_rise(curve(0.9, 0.5, 0.503))["rose"]  # within 1% of the minimum: noise
    assert not late_rise(curve(0.9, 0.0007, 0.0009))["rose"]  # +30%, but 0.0002 nats: noise too
    assert not late_rise(curve(0.9, 0.7, 0.5))["rose"]
    assert late_rise(curve(0.9)) is None


def test_importance_ranks_the_parameter_the_metric_depends_on(tmp_path):
    trials = _journal_trials(build_sweep(tmp_path / "lr", 30, pruned=(),
                                         value=lambda p: (math.log10(p["learning_rate"]) + 3) ** 2))
    ranking = parameter_importance(_space(), trials).ranking
    assert ranking[0][0] == "learning_rate" and ranking[0][1] > 0.8
    assert sum(share for _, share in ranking) == pytest.approx(1.0)
    trials = _journal_trials(build_sweep(tmp_path / "choice", 30, pruned=(),
                                         value=lambda p: 1.0 if p["lr_scheduler_type"] == "cosine" else 0.0))
    assert parameter_importance(_space(), trials).ranking[0][0] == "lr_scheduler_type"


def test_the_forest_sees_each_search_space_as_its_sampler_does():
    """Uniform over the encoded box is uniform over the space: log scale, one unit per choice or grid point."""
    space = parse_sweep_config({"method": "random", "metric": {"name": "eval_loss"}, "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "lr_scheduler_type": {"values": ["linear", "cosine", "constant"]},
        "num_train_epochs": {"min": 2, "max": 5}, "weight_decay": {"min": 0.0, "max": 0.1}}})
    lr, scheduler, epochs, decay = space.searched
    assert domain(lr) == pytest.approx((math.log(1e-4), math.log(1e-2))) and encode(lr, 1e-3) == math.log(1e-3)
    assert domain(scheduler) == (-0.5, 2.5) and encode(scheduler, "constant") == 2.0
    assert domain(epochs) == (1.5, 5.5) and domain(decay) == (0.0, 0.1)


def test_fanova_shares_follow_the_variance_each_input_explains():
    """y = 3 x0^2 + 1.5 x1 on the unit square: main-effect variances 0.8 and 0.1875, x2 and x3 none."""
    x = np.random.default_rng(0).uniform(0, 1, (80, 4))
    shares = fanova_shares(x, 3 * x[:, 0] ** 2 + 1.5 * x[:, 1], np.array([[0.0, 1.0]] * 4), 32, 0)
    assert shares[0] == pytest.approx(0.8 / 0.9875, abs=0.06) and shares[1] == pytest.approx(0.19, abs=0.06)
    assert shares[2:].sum() < 0.03


def test_too_few_trials_are_said_instead_of_ranked(tmp_path):
    folder = build_sweep(tmp_path / "few", MIN_TRIALS - 1, pruned=())
    importance = parameter_importance(_space(), _journal_trials(folder))
    assert importance.ranking == () and f"at least {MIN_TRIALS}" in importance.reason
    page = write_report(folder).read_text()
    assert "No ranking:" in page and 'class="bar"' not in page


def test_status_prints_the_importance_ranking_under_the_table(tmp_path, capsys):
    folder = build_sweep(tmp_path / "st", 30, value=lambda p: (math.log10(p["learning_rate"]) + 3) ** 2)
    assert run_cli(sweep.main, ["--status", str(folder.path)]) == 0
    out = capsys.readouterr().out
    # 30 trials of which 2 pruned: a pruned trial's value is its best at a rung, not a result
    table, _, ranking = out.partition("parameter importance (fANOVA, random forest on 28 complete trials):")
    assert "best: trial" in table and ranking.split()[0] == "learning_rate"
    assert run_cli(sweep.main, ["--report", str(folder.path)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {folder.path / 'report.html'}"


def test_a_real_sweep_writes_its_report_at_the_end(tmp_path, toy_data):
    parameters = {
        "train_file": {"value": str(toy_data["train"])}, "model": {"value": "scratch:tiny"},
        "scratch_vocab_size": {"value": 200}, "val_size": {"value": 0.25}, "seed": {"value": 7},
        "max_train_samples": {"value": 64}, "per_device_train_batch_size": {"value": 32},
        "num_train_epochs": {"value": 2}, "cache_dir": {"value": str(tmp_path / "cache")},
        "learning_rate": {"values": [3e-3, 1e-7]},
    }
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"method": "grid", "metric": {"name": "eval_accuracy", "goal": "maximize"},
                                  "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
                                  "parameters": parameters}))
    code = run_cli(sweep.main, ["--config", str(config), "--output-dir", str(tmp_path), "--name", "s", "--quiet"])
    assert code == 0
    page = _Page()
    page.feed((tmp_path / "s" / "report.html").read_text(encoding="utf-8"))
    data = json.loads(next(a for a in page.scripts if a.lstrip().startswith("{")))
    states = [t["state"] for t in data["trials"]]
    assert states[0] == "complete" and data["ranking"][0] == 0 and data["metric"] == "eval_accuracy"
    assert [r["epoch"] for r in data["trials"][0]["val"]] == [1.0, 2.0]  # read from train.py's metrics.jsonl
    assert page.in_section("curves", "path") and page.in_section("best", "circle")


def _journal_trials(folder):
    return Journal.open(folder.journal).trials()


def _top(folder, k):
    done = [t for t in _journal_trials(folder) if t.state is TrialState.COMPLETE]
    return [t.number for t in sorted(done, key=lambda t: t.value)][:k]


def _verdict(text):
    return re.search(r'<p class="verdict">(.*?)</p>', text).group(1)
