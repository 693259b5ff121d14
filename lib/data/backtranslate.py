"""Back translation: paraphrase each training review through a pivot language, keeping its label.

    review --forward model--> pivot text --backward model--> paraphrase (a new row, ID `<ID>_bt`)

The two translation models are the whole plug: any `AutoModelForSeq2SeqLM` hub id or local folder
(a Marian ko->en and en->ko pair, or one T5-style model given twice with two task prefixes). Nothing
here knows a language. The step runs once, apart from training, and writes an ordinary CSV that
train.py reads, so a run never depends on a translation model or a network. Paraphrases that come
back empty or unchanged add nothing to training and are dropped (and counted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lib.core.device import resolve_device
from lib.core.errors import UserError
from lib.core.files import atomic_write_text
from lib.core.hub import first_line, loadable
from lib.core.progress import progress_bar
from lib.data.tables import Columns, read_table

log = logging.getLogger(__name__)

ID_SUFFIX = "_bt"


@dataclass(frozen=True)
class GenerationSettings:
    """How both directions decode; checked here so a bad flag fails before any model is loaded."""

    batch_size: int = 32
    max_length: int = 256  # source tokens kept per text; longer ones are truncated
    max_new_tokens: int = 128
    num_beams: int = 1
    sample: bool = False  # sampling gives more varied paraphrases than greedy or beam search
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if not self.temperature > 0:
            raise UserError(f"--temperature {self.temperature}: must be above 0")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be in (0, 1]")

    def generate_kwargs(self) -> dict:
        kwargs = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=self.sample)
        if self.sample:  # passed only when used: generate() warns about sampling options it ignores
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Translator:
    """One direction: a seq2seq model, its tokenizer, and the text put before every input."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    prefix: str = ""  # T5-style task prefix, e.g. "translate Korean to English: "


@dataclass(frozen=True)
class BackTranslationSummary:
    rows_in: int
    written: int  # rows in the output file
    empty: int
    unchanged: int
    seconds: float  # translation only, model loading excluded

    def __str__(self) -> str:
        return (f"{self.rows_in} rows in, {self.written} rows written, {self.empty + self.unchanged} dropped "
                f"({self.empty} empty, {self.unchanged} unchanged), {self.seconds:.1f} s, "
                f"{self.rows_in / max(self.seconds, 1e-9):.1f} rows/s")


def load_translator(name_or_path: str, flag: str, prefix: str, device: torch.device) -> Translator:
    """Load one direction; an id that is neither local, cached nor reachable fails at once in one line."""
    require_loadable(name_or_path, flag)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path)  # first: its errors name the missing file
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise UserError(f"{flag} {name_or_path}: cannot load a seq2seq translation model "
                        f"({first_line(error)})") from None
    return Translator(tokenizer, model.to(device).eval(), prefix)


def translate(translator: Translator, texts: Sequence[str], settings: GenerationSettings,
              device: torch.device) -> list[str]:
    """Translate one batch."""
    encoded = translator.tokenizer([translator.prefix + text for text in texts], padding=True, truncation=True,
                                   max_length=settings.max_length, return_tensors="pt")
    # Only ids and mask: some tokenizers add token_type_ids, which encoder-decoder models reject.
    generated = translator.model.generate(input_ids=encoded["input_ids"].to(device),
                                          attention_mask=encoded["attention_mask"].to(device),
                                          **settings.generate_kwargs())
    return [text.strip() for text in translator.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def back_translate(texts: Sequence[str], forward: Translator, backward: Translator, settings: GenerationSettings,
                   device: torch.device, show_progress: bool) -> list[str]:
    """Paraphrases of `texts`, in their order.

    Batches are cut from the texts sorted longest first: little padding, and an out-of-memory
    error shows in the first batch rather than an hour in.
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    paraphrases = [""] * len(texts)
    with torch.inference_mode(), progress_bar(len(texts), "back-translate", show_progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            pivot = translate(forward, [texts[i] for i in batch], settings, device)
            for i, paraphrase in zip(batch, translate(backward, pivot, settings, device)):
                paraphrases[i] = paraphrase
            bar.update(len(batch))
    return paraphrases


def select_paraphrases(originals: Sequence[str], paraphrases: Sequence[str]) -> tuple[list[int], int, int]:
    """Rows whose paraphrase is new text, and how many were dropped as empty and as unchanged.

    Texts are compared with whitespace collapsed: a spacing-only change is not what back
    translation is for (`--augment spacing=...` makes those during training).
    """
    kept, empty, unchanged = [], 0, 0
    for i, (original, paraphrase) in enumerate(zip(originals, paraphrases)):
        if not original.strip() or not paraphrase.strip():
            empty += 1
        elif original.split() == paraphrase.split():
            unchanged += 1
        else:
            kept.append(i)
    return kept, empty, unchanged


def require_loadable(name_or_path: str, flag: str) -> None:
    if not loadable(name_or_path):
        raise UserError(f"{flag} {name_or_path}: not a local folder, not in the Hugging Face cache, and the hub "
                        f"cannot be reached (offline?); pass a local folder holding a translation model")


def back_translate_file(train: Path, out: Path, columns: Columns, forward: str, backward: str,
                        settings: GenerationSettings, *, forward_prefix: str = "", backward_prefix: str = "",
                        max_rows: int | None = None, seed: int = 0, device: str = "auto",
                        show_progress: bool = False) -> BackTranslationSummary:
    """Write `out`: one `<ID>_bt` row per new paraphrase, for train.py --augmented-train-file.

    Every check on flags and the input runs before a model is loaded; the file is written under a
    temporary name and renamed, so a failed or interrupted run never leaves a partial CSV at `out`.
    """
    if Path(out).resolve() == Path(train).resolve():
        raise UserError(f"--out {out}: is the input file; choose another path")
    if max_rows is not None and max_rows <= 0:
        raise UserError(f"--max-rows {max_rows}: must be at least 1")
    require_loadable(forward, "--forward")  # an unreachable hub id fails in seconds, before the data is read
    require_loadable(backward, "--backward")
    table = read_table(train, columns, labelled=True, flag="--train")
    if max_rows is not None and max_rows < len(table):
        table = table.subset(np.sort(np.random.default_rng(seed).choice(len(table), max_rows, replace=False)))
    new_ids = np.char.add(table.ids, ID_SUFFIX)
    torch_device = resolve_device(device)
    forward_model = load_translator(forward, "--forward", forward_prefix, torch_device)
    backward_model = (load_translator(backward, "--backward", backward_prefix, torch_device)
                      if backward != forward else Translator(forward_model.tokenizer, forward_model.model,
                                                             backward_prefix))

    started = time.perf_counter()
    with torch.random.fork_rng():  # seeded sampling without changing the caller's random state
        torch.manual_seed(seed)
        paraphrases = back_translate(table.texts, forward_model, backward_model, settings, torch_device,
                                     show_progress)
    seconds = time.perf_counter() - started
    kept, empty, unchanged = select_paraphrases(table.texts, paraphrases)

    augmented = pd.DataFrame({columns.id: new_ids[kept], columns.text: [paraphrases[i] for i in kept],
                              columns.label: table.labels[kept]})
    if not kept:
        log.warning("no paraphrase differs from its review; %s holds no back-translated rows", out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out), augmented.to_csv(index=False))
    return BackTranslationSummary(len(table), len(augmented), empty, unchanged, seconds)
