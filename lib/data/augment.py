"""On-the-fly noise for training texts: the spacing, repetition and typo variation Korean reviews show.

Each operation has its own probability (`--augment spacing=0.1,repeat=0.05,jamo=0.05,delete=0.05,
swap=0.05`), so a sweep can tune them one by one. The probability is per unit (per eojeol for
spacing, deletion and swap; per run of a repeatable character; per Hangul syllable for typos): at 0
an operation never changes a text, at 1 it changes every unit it can.

Where it goes: raw training text -> `augment_rows` -> the run's fitted preprocessor -> tokenizer.
Augmenting before the preprocessor means the noise is normalised exactly as test text is (a
repeated ㅋ is squashed by `--max-char-repeat` in both). Only the training loop calls it, on the
rows of a training batch; evaluation and prediction use the texts encoded once, so validation and
test never see augmented text. The noise for one text is a pure function of (seed, epoch, row), so
a resumed run rebuilds the same augmented batches without saving any state.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lib.core.errors import UserError

# Hangul syllables U+AC00..U+D7A3 are 0xAC00 + (initial * 21 + medial) * 28 + final.
SYLLABLE_BASE = 0xAC00
NUM_MEDIALS = 21
NUM_FINALS = 28
NUM_SYLLABLES = 19 * NUM_MEDIALS * NUM_FINALS
# The same jamo as compatibility letters, in index order ("" is "no final consonant").
INITIALS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
MEDIALS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
FINALS = ("", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ",
          "ㅂ", "ㅄ", "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ")

# The standard two-set (dubeolsik) layout, rows as on a QWERTY keyboard (q..p, a..l, z..m).
_KEYBOARD_ROWS = ("ㅂㅈㄷㄱㅅㅛㅕㅑㅐㅔ", "ㅁㄴㅇㄹㅎㅗㅓㅏㅣ", "ㅋㅌㅊㅍㅠㅜㅡ")
_KEYBOARD_VOWELS = set("ㅛㅕㅑㅐㅔㅗㅓㅏㅣㅠㅜㅡ")
# Letters that sound alike or differ by one shift key (plain / tense / aspirated, merged vowels).
_SOUND_GROUPS = ("ㄱㄲㅋ", "ㄷㄸㅌ", "ㅂㅃㅍ", "ㅅㅆ", "ㅈㅉㅊ", "ㅐㅔ", "ㅒㅖ", "ㅙㅞㅚ", "ㅢㅣ")
# Final consonants pronounced alike at the end of a syllable (했/햇, 맛/맏, 앞/압).
_FINAL_SOUND_GROUPS = ("ㄱㄲㅋ", "ㄷㅅㅆㅈㅊㅌㅎ", "ㅂㅍ")
# Two-keystroke letters: a missed keystroke leaves one of the parts.
_COMPOUNDS = {"ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
              "ㄳ": "ㄱㅅ", "ㄵ": "ㄴㅈ", "ㄶ": "ㄴㅎ", "ㄺ": "ㄹㄱ", "ㄻ": "ㄹㅁ", "ㄼ": "ㄹㅂ", "ㄽ": "ㄹㅅ",
              "ㄾ": "ㄹㅌ", "ㄿ": "ㄹㅍ", "ㅀ": "ㄹㅎ", "ㅄ": "ㅂㅅ"}

# Characters whose runs reviews stretch and shrink: compatibility jamo (ㅋㅋ, ㅠㅠ) and expressive marks.
_REPEATABLE_RUN = re.compile(r"([\u3131-\u318E!?.~^;♡♥])\1*")
_MAX_EXTRA_REPEATS = 3
# Keeps augmentation draws apart from the other streams seeded with (seed, epoch).
_AUGMENT_STREAM = 0x617567


def _keyboard_neighbours(letter: str) -> set[str]:
    """Adjacent keys of the same kind (consonant or vowel), so the result is still a syllable."""
    for r, row in enumerate(_KEYBOARD_ROWS):
        c = row.find(letter)
        if c < 0:
            continue
        spots = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        keys = {_KEYBOARD_ROWS[i][j] for i, j in spots
                if 0 <= i < len(_KEYBOARD_ROWS) and 0 <= j < len(_KEYBOARD_ROWS[i])}
        return {k for k in keys if (k in _KEYBOARD_VOWELS) == (letter in _KEYBOARD_VOWELS)}
    return set()


def _confusions(letter: str, groups: Sequence[str]) -> set[str]:
    alike = {m for group in groups if letter in group for m in group}
    return (_keyboard_neighbours(letter) | alike | set(_COMPOUNDS.get(letter, ""))) - {letter}


def _substitution_table(inventory: Sequence[str], groups: Sequence[str], can_drop: bool) -> tuple[tuple[int, ...], ...]:
    """For each jamo index, the indices it may be mistyped as within the same slot."""
    table = []
    for letter in inventory:
        if not letter:  # no final consonant: typos that add one are left out
            table.append(())
            continue
        options = {inventory.index(m) for m in _confusions(letter, groups) if m in inventory}
        if can_drop:
            options.add(0)
        table.append(tuple(sorted(options)))
    return tuple(table)


INITIAL_SUBSTITUTES = _substitution_table(INITIALS, _SOUND_GROUPS, can_drop=False)
MEDIAL_SUBSTITUTES = _substitution_table(MEDIALS, _SOUND_GROUPS, can_drop=False)
FINAL_SUBSTITUTES = _substitution_table(FINALS, _SOUND_GROUPS + _FINAL_SOUND_GROUPS, can_drop=True)


def decompose(syllable: str) -> tuple[int, int, int]:
    """(initial, medial, final) indices of a precomposed Hangul syllable; final 0 means none."""
    offset = ord(syllable) - SYLLABLE_BASE
    if not 0 <= offset < NUM_SYLLABLES:
        raise ValueError(f"not a precomposed Hangul syllable: {syllable!r}")
    return offset // (NUM_MEDIALS * NUM_FINALS), offset // NUM_FINALS % NUM_MEDIALS, offset % NUM_FINALS


def compose(initial: int, medial: int, final: int) -> str:
    return chr(SYLLABLE_BASE + (initial * NUM_MEDIALS + medial) * NUM_FINALS + final)


OPERATIONS = ("spacing", "repeat", "jamo", "delete", "swap")


@dataclass(frozen=True)
class AugmentSpec:
    """Per-unit probability of each operation; all zero means no augmentation."""

    spacing: float = 0.0  # an eojeol is joined to the next one or split at a random point
    repeat: float = 0.0   # a run of ㅋ, ㅠ, !, ?, ~ ... is stretched by 1-3 or shrunk
    jamo: float = 0.0     # a syllable gets one jamo replaced by a keyboard neighbour or look-alike sound
    delete: float = 0.0   # an eojeol is dropped (never the last one left)
    swap: float = 0.0     # an eojeol trades places with the next one

    def __post_init__(self) -> None:
        for name in OPERATIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise UserError(f"--augment: {name}={value!r} is not a probability in [0, 1]")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in OPERATIONS)

    def __str__(self) -> str:
        """The canonical `--augment` text, which `parse_augment_spec` reads back to an equal spec."""
        parts = [f"{name}={float(getattr(self, name))!r}" for name in OPERATIONS if getattr(self, name) > 0]
        return ",".join(parts) or "none"


def parse_augment_spec(text: str) -> AugmentSpec:
    """Read `--augment`: comma-separated `operation=probability`, or `none`."""
    if text.strip().lower() in ("", "none", "off"):
        return AugmentSpec()
    values: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise UserError(f"--augment: expected operation=probability pairs such as "
                            f"'spacing=0.1,jamo=0.05', got {item.strip()!r} in {text!r}")
        if name not in OPERATIONS:
            raise UserError(f"--augment: unknown operation {name!r}; expected {', '.join(OPERATIONS)}")
        if name in values:
            raise UserError(f"--augment: {name} is given twice in {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--augment: {name}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise UserError(f"--augment: {name}={value!r} is not a probability in [0, 1]")
        values[name] = number
    return AugmentSpec(**values)


def augment_generator(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator for one training row in one epoch: same numbers, same noise, also after resume."""
    return np.random.default_rng([_AUGMENT_STREAM, seed, epoch, row])


def augment_text(text: str, spec: AugmentSpec, rng: np.random.Generator) -> str:
    """Apply every enabled operation in a fixed order: word-level first, then characters."""
    if spec.delete:
        text = delete_eojeols(text, spec.delete, rng)
    if spec.swap:
        text = swap_eojeols(text, spec.swap, rng)
    if spec.spacing:
        text = perturb_spacing(text, spec.spacing, rng)
    if spec.repeat:
        text = perturb_repeats(text, spec.repeat, rng)
    if spec.jamo:
        text = jamo_typos(text, spec.jamo, rng)
    return text


def augment_rows(texts: Sequence[str], rows: Sequence[int] | np.ndarray, spec: AugmentSpec, seed: int,
                 epoch: int) -> list[str]:
    """Augmented copies of `texts[rows]` for one training batch; `rows` index the training split."""
    if not spec.enabled:
        return [texts[int(row)] for row in rows]
    return [augment_text(texts[int(row)], spec, augment_generator(seed, epoch, int(row))) for row in rows]


def delete_eojeols(text: str, probability: float, rng: np.random.Generator) -> str:
    """Drop eojeols (a lost word); a review keeps at least one."""
    words = text.split()
    if len(words) < 2:
        return text
    keep = rng.random(len(words)) >= probability
    if keep.all():
        return text
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def swap_eojeols(text: str, probability: float, rng: np.random.Generator) -> str:
    """Swap neighbouring eojeols (Korean word order is loose; the label rarely depends on it)."""
    words = text.split()
    draws = rng.random(len(words))
    swapped, i = False, 0
    while i < len(words) - 1:
        if draws[i] < probability:
            words[i], words[i + 1] = words[i + 1], words[i]
            swapped, i = True, i + 2
        else:
            i += 1
    return " ".join(words) if swapped else text


def perturb_spacing(text: str, probability: float, rng: np.random.Generator) -> str:
    """A touched eojeol loses the space after it or gains one inside it (a coin decides where both can)."""
    words = text.split()
    touched = rng.random(len(words)) < probability
    if not touched.any():
        return text
    coins = rng.random(len(words))
    pieces: list[str] = []
    for i, word in enumerate(words):
        can_join, can_split = i + 1 < len(words), len(word) >= 2
        join = touched[i] and can_join and (not can_split or coins[i] < 0.5)
        if touched[i] and can_split and not join:
            cut = int(rng.integers(1, len(word)))
            word = word[:cut] + " " + word[cut:]
        pieces.append(word if join or i + 1 == len(words) else word + " ")
    return "".join(pieces)


def perturb_repeats(text: str, probability: float, rng: np.random.Generator) -> str:
    """Stretch a run (ㅋㅋ -> ㅋㅋㅋㅋ, ! -> !!) or, half of the time when it has two or more, shrink it."""
    runs = list(_REPEATABLE_RUN.finditer(text))
    chosen = rng.random(len(runs)) < probability
    if not chosen.any():
        return text
    pieces, end = [], 0
    for run, change in zip(runs, chosen):
        length = len(run.group(0))
        if change:
            if length >= 2 and rng.random() < 0.5:
                length = int(rng.integers(1, length))
            else:
                length += int(rng.integers(1, _MAX_EXTRA_REPEATS + 1))
        pieces += [text[end:run.start()], run.group(1) * length]
        end = run.end()
    pieces.append(text[end:])
    return "".join(pieces)


def jamo_typos(text: str, probability: float, rng: np.random.Generator) -> str:
    """Replace one jamo of chosen syllables: 했 -> 햇, 좋 -> 조, 게 -> 개, 를 -> 릉."""
    positions = [i for i, ch in enumerate(text) if 0 <= ord(ch) - SYLLABLE_BASE < NUM_SYLLABLES]
    chosen = rng.random(len(positions)) < probability
    if not chosen.any():
        return text
    chars = list(text)
    for i in np.asarray(positions)[chosen]:
        parts = list(decompose(chars[i]))
        tables = (INITIAL_SUBSTITUTES, MEDIAL_SUBSTITUTES, FINAL_SUBSTITUTES)
        slots = [slot for slot in range(3) if tables[slot][parts[slot]]]
        slot = slots[int(rng.integers(len(slots)))]
        options = tables[slot][parts[slot]]
        parts[slot] = options[int(rng.integers(len(options)))]
        chars[i] = compose(*parts)
    return "".join(chars)

