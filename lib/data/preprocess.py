"""Text preprocessing fitted on the training split and saved with the run.

Prediction must apply exactly the transform training saw, so everything the pipeline learns from
data (which special-token patterns recur, which words are frequent enough to keep) is stored in
`preprocessor.json` and reloaded by predict.py and ensembles.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from lib.core.errors import UserError

FORMAT_VERSION = 1
NORMALIZATIONS = ("NFC", "NFKC", "none")
# train.py's and pretrain.py's defaults: a model is pretrained on texts normalised as fine-tuning shows them.
DEFAULT_NORMALIZATION = "NFC"
DEFAULT_MAX_CHAR_REPEAT = 3
DEFAULT_SPECIAL_PATTERNS = ("url", "email", "redacted")

# Recurring patterns replaced by one special token each. `redacted` is the NSMC convention of
# writing names as OO / OOO (capital letters O or the circle ○), never inside a Latin word.
SPECIAL_PATTERNS: dict[str, tuple[str, str]] = {
    "url": (r"(?:https?://|www\.)\S+", "[URL]"),
    "email": (r"[\w.+-]+@[\w-]+\.[\w.-]+", "[EMAIL]"),
    "redacted": (r"(?<![A-Za-z])[O○]{2,}(?![A-Za-z])", "[REDACTED]"),
}

_WHITESPACE = re.compile(r"\s+")


@dataclass
class TextPreprocessor:
    """Normalise, squash repeats, replace recurring patterns, drop rare words.

    Build it with the options, `fit` it on training texts, then `transform` any split.
    """

    unicode_normalization: str = DEFAULT_NORMALIZATION
    max_char_repeat: int = DEFAULT_MAX_CHAR_REPEAT
    special_patterns: tuple[str, ...] = ()
    special_pattern_min_count: int = 3
    num_rare_words_to_remove: int = 0
    # Learned by fit():
    active_patterns: list[str] = field(default_factory=list)
    kept_words: set[str] | None = None
    fitted: bool = False

    def fit(self, texts: Sequence[str]) -> "TextPreprocessor":
        base = [self._normalise(t) for t in texts]
        self.active_patterns = [
            name for name in self.special_patterns
            if sum(len(re.findall(SPECIAL_PATTERNS[name][0], t)) for t in base) >= self.special_pattern_min_count
        ]
        if self.num_rare_words_to_remove > 0:
            counts = Counter(word for text in base for word in self._replace_patterns(text).split())
            self.kept_words = {w for w, n in counts.items() if n > self.num_rare_words_to_remove}
        self.fitted = True
        return self

    @property
    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must treat as atomic (added to it, embeddings resized)."""
        return [SPECIAL_PATTERNS[name][1] for name in self.active_patterns]

    def transform(self, texts: Iterable[str]) -> list[str]:
        if not self.fitted:
            raise RuntimeError("TextPreprocessor.transform called before fit")
        return [self._transform_one(t) for t in texts]

    def _transform_one(self, text: str) -> str:
        text = self._replace_patterns(self._normalise(text))
        if self.kept_words is not None:
            specials = set(self.special_tokens)
            text = " ".join(w for w in text.split() if w in self.kept_words or w in specials)
        return text

    def _normalise(self, text: str) -> str:
        if self.unicode_normalization != "none":
            text = unicodedata.normalize(self.unicode_normalization, text)
        if self.max_char_repeat > 0:
            n = self.max_char_repeat
            text = re.sub(r"(.)\1{%d,}" % n, lambda m: m.group(1) * n, text)
        return _WHITESPACE.sub(" ", text).strip()

    def _replace_patterns(self, text: str) -> str:
        for name in self.active_patterns:
            pattern, token = SPECIAL_PATTERNS[name]
            text = re.sub(pattern, f" {token} ", text)
        return _WHITESPACE.sub(" ", text).strip()

    def save(self, path: Path) -> None:
        state = {
            "format_version": FORMAT_VERSION,
            "unicode_normalization": self.unicode_normalization,
            "max_char_repeat": self.max_char_repeat,
            "special_patterns": list(self.special_patterns),
            "special_pattern_min_count": self.special_pattern_min_count,
            "num_rare_words_to_remove": self.num_rare_words_to_remove,
            "active_patterns": self.active_patterns,
            "kept_words": sorted(self.kept_words) if self.kept_words is not None else None,
        }
        path.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "TextPreprocessor":
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: cannot read the saved preprocessor ({error})") from None
        if state.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path}: preprocessor format {state.get('format_version')!r}, "
                            f"expected {FORMAT_VERSION}")
        kept = state["kept_words"]
        return cls(
            unicode_normalization=state["unicode_normalization"],
            max_char_repeat=state["max_char_repeat"],
            special_patterns=tuple(state["special_patterns"]),
            special_pattern_min_count=state["special_pattern_min_count"],
            num_rare_words_to_remove=state["num_rare_words_to_remove"],
            active_patterns=list(state["active_patterns"]),
            kept_words=set(kept) if kept is not None else None,
            fitted=True,
        )
