"""Shared fixtures: a small separable 4-class review task and a fast tiny-model config."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lib.finetune.config import TrainConfig
from lib.loop.stop import StopRequest
from lib.pretrain.config import PretrainConfig

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


@pytest.fixture
def keep_torch_threads():
    """For tests of scripts that set torch's threads for themselves: later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


# Reviews made of fixed phrases: a masked word is predictable from its neighbours, as in real text
# (write_reviews' bags of random words would teach an MLM only word frequencies).
PHRASES = ["이 영화 정말 최고 의 명작", "배우 들 연기 가 너무 별로", "스토리 는 그냥 무난 하고 볼만",
           "음악 과 장면 이 진짜 감동", "결말 이 지루 해서 아쉽다", "ㅋㅋ 웃기 지만 노잼 쓰레기",
           "시간 가는 줄 몰랐다", "다시 보고 싶은 영화"]


def _write_texts(path: Path, rows: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "review"])
        writer.writerows((f"U{i:05d}", text) for i, text in enumerate(rows))
    return path


@pytest.fixture(scope="session")
def corpus(toy_data, tmp_path_factory) -> dict[str, Path]:
    """Unlabelled reviews, plus a file whose NSMC-style name redactions and URLs become special tokens."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(3)
    reviews = [" ".join(rng.sample(PHRASES, rng.randint(1, 4))) for _ in range(600)]
    extra = [f"OO 나오는 영화 {i}번째 http://example.com/{i} 최고" for i in range(6)]
    return {"reviews": _write_texts(folder / "texts.csv", reviews), "extra": _write_texts(folder / "extra.csv", extra),
            "toy_train": toy_data["train"]}


def tiny_pretrain_config(corpus: dict[str, Path], init: Path, out: Path, **overrides) -> PretrainConfig:
    """Task-adaptive pretraining of the tiny BERT on the phrases and the fine-tuning texts (labels unused)."""
    values = dict(texts=(str(corpus["reviews"]), str(corpus["toy_train"])), init=str(init), preset=None, eval_texts=60, max_length=64,
                  per_device_train_batch_size=8, learning_rate=3e-3, warmup_ratio=0.1, max_steps=40, eval_steps=20,
                  logging_steps=5, seed=11, output_dir=str(out.parent), run_name=out.name, cache_dir=None)
    values.update(overrides)
    return PretrainConfig(**values)
