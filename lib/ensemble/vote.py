"""Combining finished runs: soft voting or stacking, then temperature and prior correction.

`vote` scores the members and the ensemble side by side on their shared validation rows, fits what
was asked for (weights, stacking, temperature) on those rows, predicts a test file and saves the
result as an ensemble folder. `predict_with_ensemble` replays a saved folder on a new file, so
`predict.py runs/ens-NAME` works like it does for a run. The order of operations (pool or stack,
then temperature, then prior correction) follows the shared research notes on the HF Trainer
(shared/research/training.md, section 5.4).

An ensemble folder:

    ensemble.json     members (paths relative to this folder, with a fingerprint of their validation
                      logits), label names, training class counts, average mode, weights, stacking
                      coefficients, temperature, prior correction, validation scores. Plain JSON.
    val_logits.npz    ids, labels and the ensemble's calibrated validation log-scores (out of fold
                      when stacking), like a run's
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from lib.core.errors import UserError
from lib.core.files import atomic_directory
from lib.ensemble.calibration import correct_priors, expected_calibration_error, fit_temperature, nll
from lib.ensemble.members import (ENSEMBLE_FILE, VAL_LOGITS, AlignedValidation, Member, align_validation,
                                  check_test_columns, open_member, predict_members)
from lib.ensemble.pooling import equal_weights, fit_weights, parse_weights, pool
from lib.ensemble.stacking import Stacker, cross_fitted, fit_stacker
from lib.finetune.metrics import display_width, format_distribution
from lib.finetune.predict import Inference, write_predictions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything needed to turn members' scores into the ensemble's, as fitted on validation."""

    label_names: tuple[str, ...]
    train_class_counts: tuple[int, ...]
    average: str
    weights: np.ndarray
    weights_from: str  # equal, given or fit
    stacker: Stacker | None
    temperature: float | None
    prior_correction: str | None

    def combine(self, member_scores: np.ndarray) -> np.ndarray:
        """Pooled (or stacked) log-scores, divided by the temperature; no prior correction."""
        if self.stacker is not None:
            scores = self.stacker.scores(member_scores)
        else:
            scores = pool(member_scores, self.weights, self.average)
        return scores / self.temperature if self.temperature else scores

    def to_dict(self) -> dict:
        return {"label_names": list(self.label_names), "train_class_counts": list(self.train_class_counts),
                "average": self.average, "weights": self.weights.tolist(), "weights_from": self.weights_from,
                "stacking": self.stacker.to_dict() if self.stacker else None, "temperature": self.temperature,
                "prior_correction": self.prior_correction}

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleSpec":
        stacking = data["stacking"]
        return cls(tuple(data["label_names"]), tuple(data["train_class_counts"]), data["average"],
                   np.asarray(data["weights"], dtype=np.float64), data["weights_from"],
                   Stacker.from_dict(stacking) if stacking else None, data["temperature"], data["prior_correction"])


def vote(paths: list[Path], *, test: Path | None, out: Path, average: str, weights: str | None, stack: bool,
         calibrate: str | None, prior_correction: str | None, save: Path | None, overwrite: bool,
         pred_column: str, inference: Inference) -> str:
    """Compare members and ensemble on validation; predict `test`; save the ensemble if asked.

    Returns the report: the side-by-side table, calibration and the predicted test distribution.
    """
    if prior_correction and test is None:
        raise UserError("--prior-correction: needs --test (it adapts to the rows it predicts)")
    if prior_correction == "em" and not calibrate:
        log.warning("--prior-correction em assumes calibrated posteriors; consider --calibrate temperature")
    if save is not None:
        _check_can_save(save, overwrite)
    members = [open_member(path) for path in paths]
    val = align_validation(members)
    if test is not None:
        check_test_columns(test, members)

    member_weights, weights_from = _member_weights(weights, val, average)
    table = ScoreTable(val.labels, len(members[0].label_names))
    for member, scores in zip(members, val.scores):
        table.add_member(f"{member.path} ({member.model})", scores)
    voted = pool(val.scores, member_weights, average)
    table.add(f"vote ({average}, {weights_from} weights)", voted)
    if weights_from == "fit":
        table.add("  same, weights cross-fitted", _cross_fitted_vote(val, average))
    stacker, chosen, predictor = None, voted, f"the vote ({average}, {weights_from} weights)"
    if stack:  # scored out of fold; the refit on all rows predicts, and its temperature comes from the former
        chosen = cross_fitted(lambda fit_rows, rows: fit_stacker(val.scores[:, fit_rows], val.labels[fit_rows])
                              .scores(val.scores[:, rows]), val.labels, val.scores.shape[2], "--stack")
        table.add("stacking (cross-validated)", chosen)
        stacker = fit_stacker(val.scores, val.labels)
        predictor = f"stacking, refitted on all {len(val.ids)} rows"
    sections = [f"validation: {len(val.ids)} rows shared by {len(members)} member(s)", table.render()]
    if weights_from != "equal":
        sections.append("weights: " + "  ".join(f"{w:.3f}" for w in member_weights))
    sections.append(f"predicting with: {predictor}")

    temperature = None
    if calibrate == "temperature":
        fit = fit_temperature(chosen, val.labels)
        temperature = fit.temperature
        sections.append(fit.report())
    spec = EnsembleSpec(members[0].label_names, members[0].train_class_counts, average, member_weights,
                        weights_from, stacker, temperature, prior_correction)
    final_val = chosen / temperature if temperature else chosen
    if prior_correction:
        sections.append(_correction_on_validation(final_val, val.labels, spec))

    if test is not None:
        ids, scores, distribution = _predict(spec, members, test, inference)
        write_predictions(out, ids, scores, members[0].id_column, pred_column)
        sections += [distribution, f"wrote {len(ids)} predictions to {out}"]
    if save is not None:
        _save(save, spec, members, val, final_val)
        sections.append(f"ensemble folder: {save} (python predict.py {save} --test FILE --out FILE)")
    return "\n\n".join(sections)


def _member_weights(weights: str | None, val: AlignedValidation, average: str) -> tuple[np.ndarray, str]:
    """(weights summing to one, where they came from: equal, given or fit) for `--weights`."""
    if weights == "fit":
        return fit_weights(val.scores, val.labels, average), "fit"
    if weights is not None:
        return parse_weights(weights, len(val.scores)), "given"
    return equal_weights(len(val.scores)), "equal"


def _cross_fitted_vote(val: AlignedValidation, average: str) -> np.ndarray:
    """Pooled scores with weights fitted on the other folds: what fitted weights are worth on new rows."""
    def fit_and_score(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        fold_weights = fit_weights(val.scores[:, fit_rows], val.labels[fit_rows], average)
        return pool(val.scores[:, rows], fold_weights, average)

    return cross_fitted(fit_and_score, val.labels, val.scores.shape[2], "--weights fit")


def _predict(spec: EnsembleSpec, members: list[Member], test: Path, inference: Inference
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids, final log-scores, the predicted class distribution as a table) for a test file."""
    ids, member_scores = predict_members(members, test, spec.average, inference)
    scores = spec.combine(member_scores)
    columns = {"predicted": _counts(scores, len(spec.label_names))}
    notes = []
    if spec.prior_correction:
        corrected = correct_priors(scores, np.asarray(spec.train_class_counts), spec.prior_correction)
        scores = corrected.scores
        columns = {"before": columns["predicted"],
                   f"after ({spec.prior_correction})": _counts(scores, len(spec.label_names))}
        prior = "  ".join(f"{p:.3f}" for p in corrected.test_prior)
        notes.append(f"test prior assumed by --prior-correction {spec.prior_correction}: {prior}"
                     + (f" (EM, {corrected.iterations} iterations)" if corrected.iterations else ""))
        if spec.prior_correction == "em":
            notes += _em_drift_note(corrected.test_prior, np.asarray(spec.train_class_counts), spec.label_names)
    columns["training"] = list(spec.train_class_counts)
    table = format_distribution("class", columns, spec.label_names)
    return ids, scores, "\n".join([f"predicted test distribution ({len(ids)} rows)", table, *notes])


def _correction_on_validation(scores: np.ndarray, labels: np.ndarray, spec: EnsembleSpec) -> str:
    """The same correction applied to the validation rows, whose labels show what it costs or gains."""
    corrected = correct_priors(scores, np.asarray(spec.train_class_counts), spec.prior_correction).scores
    table = ScoreTable(labels, len(spec.label_names))
    table.add("before", scores)
    table.add(f"after --prior-correction {spec.prior_correction}", corrected)
    return "the prior correction applied to the validation rows:\n" + table.render()


def _em_drift_note(estimated: np.ndarray, train_counts: np.ndarray, label_names: tuple[str, ...]) -> list[str]:
    """A warning when EM moved a class prior more than threefold from training: EM trusts the posteriors
    completely, and weak or miscalibrated ones pull it to extremes (a class can vanish)."""
    train = train_counts / train_counts.sum()
    moved = [f"{name} {100 * t:.1f}% -> {100 * e:.1f}%" for name, t, e in zip(label_names, train, estimated)
             if e < t / 3 or e > 3 * t]
    if not moved:
        return []
    return [f"warning: EM moved {', '.join(moved)} from the training prior; trust it only with calibrated, "
            "informative members (else try --prior-correction train)"]


def _counts(scores: np.ndarray, num_labels: int) -> list[int]:
    return np.bincount(scores.argmax(axis=1), minlength=num_labels).tolist()


class ScoreTable:
    """Accuracy, macro-F1, NLL and ECE of members and ensembles on the same rows, side by side."""

    def __init__(self, labels: np.ndarray, num_labels: int) -> None:
        self.labels = labels
        self.num_labels = num_labels
        self.rows: list[tuple[str, dict[str, float]]] = []
        self.member_rows = 0

    def add_member(self, name: str, scores: np.ndarray) -> None:
        self.add(name, scores)
        self.member_rows += 1

    def add(self, name: str, scores: np.ndarray) -> None:
        self.rows.append((name, score(scores, self.labels, self.num_labels)))

    def render(self) -> str:
        metrics = ("accuracy", "macro_f1", "nll", "ece")
        width = max(display_width(name) for name, _ in self.rows) + 2
        lines = ["".ljust(width) + "".join(f"{m:>10}" for m in metrics)]
        lines += [name + " " * (width - display_width(name)) + "".join(f"{row[m]:>10.4f}" for m in metrics)
                  for name, row in self.rows]
        members = [row for _, row in self.rows[:self.member_rows]]
        if len(members) > 1:
            best = {"accuracy": max(r["accuracy"] for r in members), "macro_f1": max(r["macro_f1"] for r in members),
                    "nll": min(r["nll"] for r in members), "ece": min(r["ece"] for r in members)}
            lines.append("gain over the best member (nll, ece: lower is better)")
            lines += ["  " + name + " " * (width - 2 - display_width(name))
                      + "".join(f"{row[m] - best[m]:>+10.4f}" for m in metrics)
                      for name, row in self.rows[self.member_rows:]]
        return "\n".join(lines)


def score(scores: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 (every class counts, absent ones as 0), NLL and ECE of log-scores."""
    predictions = scores.argmax(axis=1)
    f1 = f1_score(labels, predictions, labels=list(range(num_labels)), average=None, zero_division=0)
    return {"accuracy": float((predictions == labels).mean()), "macro_f1": float(f1.mean()),
            "nll": nll(scores, labels), "ece": expected_calibration_error(scores, labels)}


def _check_can_save(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"--save: {path} already exists; choose another folder or pass --overwrite")
    if path.exists() and not (path / ENSEMBLE_FILE).is_file():
        raise UserError(f"--save: {path} exists and is not an ensemble folder; refusing to replace it")


def _save(path: Path, spec: EnsembleSpec, members: list[Member], val: AlignedValidation,
          final_val: np.ndarray) -> None:
    """Write the ensemble folder atomically; member paths are stored relative to it, so runs/ can move."""
    path = Path(path)
    record = {
        "format": FORMAT_VERSION,
        "kind": "ensemble",
        "members": [{"path": os.path.relpath(m.path.resolve(), path.resolve()), "model": m.model,
                     "val_fingerprint": m.fingerprint} for m in members],
        "id_column": members[0].id_column,
        **spec.to_dict(),
        "validation": {"rows": len(val.ids), **score(final_val, val.labels, len(spec.label_names))},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(path) as folder:
        (folder / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        np.savez(folder / VAL_LOGITS, ids=val.ids.astype(str), labels=val.labels, logits=final_val.astype(np.float32))


def is_ensemble_folder(path: Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


@dataclass(frozen=True)
class EnsemblePrediction:
    ids: np.ndarray
    scores: np.ndarray
    id_column: str
    distribution: str


def predict_with_ensemble(path: Path, test: Path, inference: Inference) -> EnsemblePrediction:
    """Predict `test` with a saved ensemble folder, exactly as `vote` predicted when it saved it."""
    path = Path(path)
    try:
        record = json.loads((path / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        if record.get("format") != FORMAT_VERSION:
            raise ValueError(record.get("format"))
        spec = EnsembleSpec.from_dict(record)
        stored = [(Path(os.path.normpath(path / m["path"])), m["val_fingerprint"]) for m in record["members"]]
        id_column = record["id_column"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path / ENSEMBLE_FILE}: not an ensemble written by this version of ensemble.py") from None
    members = []
    for member_path, fingerprint in stored:
        member = open_member(member_path)
        if member.label_names != spec.label_names:
            raise UserError(f"{member_path}: label set {list(member.label_names)} differs from the ensemble's "
                            f"{list(spec.label_names)}")
        if member.fingerprint != fingerprint:
            raise UserError(f"{member_path}: its validation logits changed since {path} was saved (trained "
                            "again?); vote again to refit the ensemble")
        members.append(member)
    check_test_columns(test, members)
    ids, scores, distribution = _predict(spec, members, test, inference)
    return EnsemblePrediction(ids, scores, id_column, distribution)
