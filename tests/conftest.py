"""Shared fixtures: a small separable 4-class review task and a fast tiny-model config."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.finetune.config import TrainConfig
from lib.loop.stop import StopRequest

# Each class has its own cue words; filler words are shared, so the task is separable but not trivial.
CUES = {
    0: ["최악", "쓰레기", "노잼"],
    1: ["별로", "아쉽다", "지루"],
    2: ["괜찮다", "볼만", "무난"],
    3: ["최고", "명작", "감동"],
}
FILLER = ["영화", "배우", "연기", "스토리", "정말", "그냥", "이건", "진짜", "ㅋㅋ", "음악", "장면", "결말"]


def write_reviews(path: Path, n: int, seed: int, labelled: bool = True, prefix: str = "R") -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "review", "label"] if labelled else ["ID", "review"])
        for i in range(n):
            label = i % 4
            words = rng.sample(FILLER, rng.randint(2, 6)) + [rng.choice(CUES[label])]
            rng.shuffle(words)
            row = [f"{prefix}{i:05d}", " ".join(words)]
            writer.writerow(row + [label] if labelled else row)
    return path


def write_teacher_logits(path: Path, ids, logits) -> Path:
    """Teacher scores as predict.py --logits-out writes them."""
    np.savez(path, ids=np.asarray(ids, dtype=str), logits=np.asarray(logits, dtype=np.float32))
    return path


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    """Labelled rows, test rows, and unlabelled rows (ids U..., their label column unread) with the
    scores of a teacher that knows their class."""
    folder = tmp_path_factory.mktemp("toy")
    unlabeled = write_reviews(folder / "unlabeled.csv", 200, seed=11, prefix="U")
    frame = pd.read_csv(unlabeled)
    return {
        "train": write_reviews(folder / "train.csv", 480, seed=1),
        "test": write_reviews(folder / "test.csv", 40, seed=2, labelled=False, prefix="T"),
        "unlabeled": unlabeled,
        "teacher": write_teacher_logits(folder / "teacher.npz", frame["ID"], 4.0 * np.eye(4)[frame["label"]]),
    }


def tiny_config(toy_data: dict[str, Path], output_dir: Path, **overrides) -> TrainConfig:
    """A run that learns the toy task in a few seconds on a CPU."""
    values = dict(
        train_file=str(toy_data["train"]), output_dir=str(output_dir), run_name="toy", model="scratch:tiny",
        scratch_vocab_size=200, val_size=0.25, num_train_epochs=4, per_device_train_batch_size=16,
        learning_rate=2e-3, warmup_ratio=0.1, logging_steps=5, seed=7, cache_dir=str(output_dir / "cache"),
    )
    values.update(overrides)
    return TrainConfig(**values)


class StopAtStep(StopRequest):
    """Simulates Ctrl-C after a given optimizer step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def should_stop(self, global_step: int) -> bool:
        return global_step >= self.step
