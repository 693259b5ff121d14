"""Model soups (Wortsman et al. 2022): one model whose weights are the average of runs fine-tuned from
the same initial weights, so it predicts at the cost of one run where a vote of them costs N.

Averaging only makes sense for runs that started from one model and share its shape and inputs, so
a soup refuses, in one line each, runs with other initial weights (`initial_weights.json`, written
by every run), architectures, tokenizers, preprocessors, label sets or validation rows. The uniform
soup averages every run; the greedy soup sorts them by a validation metric and adds each only if the
soup's score does not drop. Both are scored beside each run and the vote of the same runs.

The saved soup is an ordinary run folder, so predict.py, `ensemble.py vote` and further soups read it:

    config.json, plan.json, preprocessor.json, tokenizer/, initial_weights.json   from the best run
    best/             the averaged model and tokenizer (save_pretrained)
    val_logits.npz    the soup's validation ids, labels and logits
    result.json       kept = best, the soup's metrics (its loss is plain cross entropy: runs may have
                      trained on different objectives), its ingredients and the comparison table
    environment.json  versions, device, command line
    submission.csv    when the runs' config names a test file
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedModel

from lib.core.cache import tokenizer_digest
from lib.core.device import resolve_device
from lib.core.errors import UserError
from lib.core.files import atomic_directory
from lib.data.batching import EncodedTexts, encode, pad_multiple
from lib.data.preprocess import TextPreprocessor
from lib.data.tables import class_distribution, positions
from lib.ensemble.members import AlignedValidation, Member, align_validation, free_memory, open_member
from lib.ensemble.pooling import equal_weights, pool
from lib.ensemble.vote import ScoreTable, score
from lib.finetune.config import CLASSICAL_MODEL, TrainConfig
from lib.finetune.evaluate import predict_logits
from lib.finetune.losses import FocalLoss
from lib.finetune.metrics import classification_metrics, classification_report
from lib.finetune.plan import TrainingPlan
from lib.finetune.predict import Inference, inference_precision, predict_table, write_predictions
from lib.finetune.run_folder import RunFolder
from lib.finetune.splits import load_splits
from lib.loop import swa
from lib.loop.work_folder import environment_record
from lib.model.backbone import load_classifier
from lib.model.heads import DROPOUT_SAMPLES_KEY, POOLING_KEY

log = logging.getLogger(__name__)

SOUP_METRICS = ("accuracy", "macro_f1", "nll")


@dataclass(frozen=True)
class Ingredient:
    """A finished run that may go into a soup: its validation logits and the kept model's folder."""

    member: Member
    cfg: TrainConfig
    plan: TrainingPlan
    model_dir: Path
    initial_weights: dict

    @property
    def path(self) -> Path:
        return self.member.path


def open_ingredient(path: Path) -> Ingredient:
    """Read a run folder as a soup ingredient; each way it cannot be one is a UserError naming it."""
    member = open_member(path)
    if member.runs != (member.path,):
        raise UserError(f"{path}: a cross-validation folder; its fold runs hold models of different rows, "
                        "give the runs to soup one by one")
    run = RunFolder(member.path)
    cfg = TrainConfig.load(run.config)
    if cfg.model == CLASSICAL_MODEL:
        raise UserError(f"{path}: a --model {CLASSICAL_MODEL} run has no network weights to average")
    if not run.initial_weights.is_file():
        raise UserError(f"{path}: no {run.initial_weights.name}; it was trained before runs recorded their "
                        "initial weights, so a soup cannot check it (train it again)")
    kept = run.read_json(run.result).get("kept", "best")
    model_dir = run.path / kept
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{path}: has no {kept}/ model")
    return Ingredient(member, cfg, TrainingPlan.load(run.plan), model_dir, run.read_json(run.initial_weights))


def check_soupable(ingredients: list[Ingredient]) -> None:
    """Refuse runs whose weights or inputs differ from the first one's; label sets and validation
    rows are checked with the validation logits (`align_validation`)."""
    first = ingredients[0]
    for other in ingredients[1:]:
        if other.initial_weights["backbone_sha256"] != first.initial_weights["backbone_sha256"]:
            raise UserError(f"{other.path}: starts from other initial weights ({_origin(other)}) than {first.path} "
                            f"({_origin(first)}); a soup averages runs fine-tuned from one initial model "
                            "(one --model, and one --init-seed for what the run draws)")
        if _architecture(other.model_dir) != _architecture(first.model_dir):
            raise UserError(f"{other.path}: another architecture than {first.path} (model class, pooling head or "
                            "weight shapes differ); only weights of one shape can be averaged")
        if _tokenizer(other) != _tokenizer(first):
            raise UserError(f"{other.path}: another tokenizer than {first.path}; a soup reads its inputs through one")
        if _preprocessor(other) != _preprocessor(first):
            raise UserError(f"{other.path}: another text preprocessor than {first.path} (preprocessor.json "
                            "differs); a soup reads its inputs through one")
        if (other.plan.max_length, other.cfg.truncation) != (first.plan.max_length, first.cfg.truncation):
            log.warning("%s truncates to %d tokens (%s), %s to %d (%s); the soup uses the latter", other.path,
                        other.plan.max_length, other.cfg.truncation, first.path, first.plan.max_length,
                        first.cfg.truncation)


def _origin(ingredient: Ingredient) -> str:
    record = ingredient.initial_weights
    return f"{record['model']}, --init-seed {record['init_seed']}, backbone {record['backbone_sha256'][:12]}"


def _architecture(model_dir: Path) -> tuple:
    """Model class, pooling head and the name and shape of every saved tensor."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    shapes = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
    if not shapes:
        raise UserError(f"{model_dir}: no safetensors weights to average")
    return (tuple(config.get("architectures") or ()), config.get(POOLING_KEY), config.get(DROPOUT_SAMPLES_KEY),
            tuple(sorted(shapes.items())))


def _tokenizer(ingredient: Ingredient) -> str:
    return tokenizer_digest(AutoTokenizer.from_pretrained(RunFolder(ingredient.path).tokenizer))


def _preprocessor(ingredient: Ingredient) -> dict:
    return json.loads(RunFolder(ingredient.path).preprocessor.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Soup:
    """Which ingredients (indices) were averaged, the averaged model, its validation logits and scores."""

    members: list[int]
    model: PreTrainedModel
    val_logits: np.ndarray
    scores: dict[str, float]


class SoupBuilder:
    """Averages ingredients and scores the average on their shared validation rows (loaded one at a time)."""

    def __init__(self, ingredients: list[Ingredient], val: AlignedValidation, inference: Inference) -> None:
        self.ingredients, self.labels = ingredients, val.labels
        self.base = ingredients[0]
        self.device = resolve_device(inference.device)
        self.precision = inference_precision(self.base.plan.precision, self.device, inference.precision)
        self.batch_size = inference.batch_size or self.base.cfg.per_device_eval_batch_size
        self.show_progress = inference.show_progress
        self.val_data = self._validation_rows(val.ids)

    def _validation_rows(self, val_ids: np.ndarray) -> EncodedTexts:
        """The validation texts, re-read from the data the runs were trained on, in `val_ids` order."""
        cfg, plan = self.base.cfg, self.base.plan
        # only the validation split is needed: the rows added to training need not be at hand
        splits = load_splits(dataclasses.replace(cfg, augmented_train_file=None, unlabeled_file=None,
                                                 teacher_logits=None))
        order = positions(splits.val.ids, val_ids)
        if (order < 0).any() or len(splits.val.ids) != len(val_ids):
            raise UserError(f"{self.base.path}: the validation rows of {cfg.val_file or cfg.train_file} are no longer "
                            "those it was scored on; the data changed since it trained")
        texts = TextPreprocessor.load(RunFolder(self.base.path).preprocessor).transform(
            [splits.val.texts[i] for i in order])
        tokenizer = AutoTokenizer.from_pretrained(RunFolder(self.base.path).tokenizer)
        return encode(tokenizer, texts, plan.max_length, pad_to_multiple_of=pad_multiple(self.device, self.precision,
                                                                                         compiled=False),
                      truncation=cfg.truncation, head_tokens=cfg.head_tokens)

    def cook(self, members: list[int]) -> Soup:
        """The equal-weight average of `members` and its validation logits."""
        load = lambda folder: load_classifier(folder, self.base.plan.num_labels, self.base.plan.label_names, None)
        model = swa.average_checkpoints([self.ingredients[i].model_dir for i in members], load).to(self.device)
        logits = predict_logits(model, self.val_data, self.batch_size, self.precision, self.device, "soup",
                                self.show_progress)
        free_memory()
        return Soup(list(members), model, logits, score(logits, self.labels, self.base.plan.num_labels))


def soup(paths: list[Path], *, greedy: bool, metric: str, save: Path | None, overwrite: bool, inference: Inference,
         argv: list[str]) -> str:
    """Score each run, the uniform soup, the greedy soup and the vote side by side; save one soup if asked.

    Returns the report. With `greedy` the greedy soup is saved, else the uniform one.
    """
    if metric not in SOUP_METRICS:
        raise UserError(f"--metric {metric}: expected one of {', '.join(SOUP_METRICS)}")
    if save is not None:
        _check_can_save(Path(save), overwrite, paths)
    ingredients = [open_ingredient(path) for path in paths]
    val = align_validation([i.member for i in ingredients])
    num_labels = len(val.scores[0][0])
    scores = [score(s, val.labels, num_labels) for s in val.scores]
    sign = 1.0 if metric == "nll" else -1.0
    ranked = sorted(range(len(ingredients)), key=lambda i: sign * scores[i][metric])  # best first; ties: given order
    ingredients = [ingredients[i] for i in ranked]
    val_scores = val.scores[ranked]
    check_soupable(ingredients)

    builder = SoupBuilder(ingredients, val, inference)
    uniform = builder.cook(list(range(len(ingredients))))
    not_worse = lambda trial, current: sign * trial.scores[metric] <= sign * current.scores[metric]
    greedy_members, greedy_soup = swa.greedy_soup(list(range(len(ingredients))), builder.cook, not_worse)

    table = ScoreTable(val.labels, num_labels)
    for ingredient, member_scores in zip(ingredients, val_scores):
        table.add_member(f"{ingredient.path} ({ingredient.cfg.model})", member_scores)
    table.add(f"uniform soup of {len(ingredients)}", uniform.val_logits)
    table.add(f"greedy soup of {len(greedy_members)} (by {metric})", greedy_soup.val_logits)
    table.add("vote (logits, equal weights)", pool(val_scores, equal_weights(len(ingredients)), "logits"))
    chosen = greedy_soup if greedy else uniform
    parameters = sum(p.numel() for p in chosen.model.parameters())
    sections = [
        f"validation: {len(val.ids)} rows shared by {len(ingredients)} run(s); initial weights: "
        f"{_origin(ingredients[0])}",
        table.render(),
        f"greedy soup (by {metric}): " + ", ".join(f"{ingredient.path} {'in' if i in greedy_members else 'left out'}"
                                                   for i, ingredient in enumerate(ingredients)),
        f"prediction cost: a soup runs 1 model ({parameters / 1e6:.2f}M parameters) per row; "
        f"the vote runs {len(ingredients)} ({len(ingredients) * parameters / 1e6:.2f}M)",
    ]
    if save is not None:
        _save(Path(save), chosen, "greedy" if greedy else "uniform", metric, ingredients, val, table, builder, argv)
        sections.append(f"saved the {'greedy' if greedy else 'uniform'} soup to {save}; predict with: "
                        f"python predict.py {save} --test <file>")
    return "\n".join(sections)


def _check_can_save(path: Path, overwrite: bool, paths: list[Path]) -> None:
    if any(path.resolve() == Path(p).resolve() for p in paths):
        raise UserError(f"--save: {path} is one of the runs to soup; choose another folder")
    if path.exists() and not overwrite:
        raise UserError(f"--save: {path} already exists; choose another folder or pass --overwrite")
    if path.exists() and not RunFolder(path).result.is_file():
        raise UserError(f"--save: {path} exists and is not a run folder; refusing to replace it")


def _save(path: Path, chosen: Soup, kind: str, metric: str, ingredients: list[Ingredient], val: AlignedValidation,
          table: ScoreTable, builder: SoupBuilder, argv: list[str]) -> None:
    """Write the soup as a run folder, atomically; its config, plan and inputs are the best run's."""
    base, source = ingredients[0], RunFolder(ingredients[0].path)
    cfg, plan = dataclasses.replace(base.cfg, output_dir=str(path.parent), run_name=path.name), base.plan
    metrics = classification_metrics(chosen.val_logits, val.labels, FocalLoss(plan.num_labels), plan.label_names)
    result = {
        "kept": "best",
        "selection_metric": metric,
        "best": metrics,
        "models": {"best": metrics},
        "report": classification_report(chosen.val_logits, val.labels, plan.label_names),
        "soup": {
            "kind": kind,
            "metric": metric,
            "ingredients": [{"path": os.path.relpath(i.path.resolve(), path.resolve()), "model": i.model_dir.name,
                             "in_soup": k in chosen.members} for k, i in enumerate(ingredients)],
            "initial_weights": base.initial_weights,
        },
        "comparison": {name: row for name, row in table.rows},
    }
    test = None
    if cfg.test_file and Path(cfg.test_file).is_file():
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
        test = predict_table(cfg, plan, TextPreprocessor.load(source.preprocessor), tokenizer, chosen.model,
                             cfg.test_file, builder.device, builder.show_progress, builder.batch_size,
                             builder.precision)
        result["test_predicted_counts"] = class_distribution(test[1].argmax(axis=1), plan.num_labels)
    elif cfg.test_file:
        log.warning("--test-file %s of %s is not here; the soup folder has no submission.csv", cfg.test_file,
                    base.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(path) as folder:
        run = RunFolder(folder)
        cfg.save(run.config)
        for name in (source.plan, source.preprocessor, source.initial_weights):
            shutil.copy2(name, folder / name.name)
        shutil.copytree(source.tokenizer, run.tokenizer)
        chosen.model.save_pretrained(run.best)
        AutoTokenizer.from_pretrained(source.tokenizer).save_pretrained(run.best)
        run.save_val_logits(val.ids, val.labels, chosen.val_logits)
        run.write_json(run.environment, environment_record(builder.device, argv))
        if test is not None:
            write_predictions(run.submission, test[0], test[1], cfg.id_column)
        run.write_json(run.result, result)
