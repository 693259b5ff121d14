"""Classification metrics and the report printed at the end of a run."""

from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from lib.finetune.losses import FocalLoss


def classification_metrics(logits: np.ndarray, labels: np.ndarray, loss_fn: FocalLoss,
                           label_names: Sequence[str]) -> dict[str, float]:
    """Objective loss (what training minimises, as HF's eval_loss), plain NLL, accuracy, F1s."""
    logits_t, labels_t = torch.from_numpy(logits).float(), torch.from_numpy(labels).long()
    with torch.no_grad():
        loss = float(loss_fn(logits_t, labels_t).mean())
        nll = float(torch.nn.functional.cross_entropy(logits_t, labels_t))
    predictions = logits.argmax(axis=1)
    classes = list(range(len(label_names)))
    per_class = f1_score(labels, predictions, labels=classes, average=None, zero_division=0)
    metrics = {
        "loss": loss,
        "nll": nll,
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(per_class.mean()),
    }
    metrics.update({f"f1_{name}": float(score) for name, score in zip(label_names, per_class)})
    return metrics


def classification_report(logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict:
    """Confusion matrix (rows: true, columns: predicted) and per-class precision/recall/F1/support."""
    predictions = logits.argmax(axis=1)
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    return {
        "labels": list(label_names),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
    }


def display_width(text: str) -> int:
    """Terminal columns taken by `text`: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _right(text: str, width: int) -> str:
    return " " * max(0, width - display_width(text)) + text


def format_report(report: dict) -> str:
    """Plain-text table for the terminal and TensorBoard's text view."""
    names = report["labels"]
    width = max(10, *(display_width(n) + 2 for n in names))
    lines = ["confusion matrix (rows: true, columns: predicted)",
             _right("", width) + "".join(_right(n, width) for n in names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(_right(name, width) + "".join(_right(str(v), width) for v in row))
    lines += ["", _right("class", width) + f"{'precision':>11}{'recall':>9}{'f1':>8}{'support':>9}"]
    for name, scores in report["per_class"].items():
        lines.append(_right(name, width) + f"{scores['precision']:>11.4f}{scores['recall']:>9.4f}"
                     f"{scores['f1']:>8.4f}{scores['support']:>9d}")
    return "\n".join(lines)


def format_distribution(title: str, columns: dict[str, Sequence[int]], label_names: Sequence[str]) -> str:
    """Class counts and shares side by side, e.g. predicted test labels next to the training labels."""
    width = max(8, *(display_width(n) + 2 for n in [title, *label_names]))
    lines = [_right(title, width) + "".join(f"{name:>22}" for name in columns)]
    totals = {name: max(1, sum(counts)) for name, counts in columns.items()}
    for k, label in enumerate(label_names):
        cells = "".join(f"{counts[k]:>14d} ({100 * counts[k] / totals[name]:5.1f}%)"
                        for name, counts in columns.items())
        lines.append(_right(label, width) + cells)
    return "\n".join(lines)
