"""--truncation: which tokens of a long text survive, for head, tail and head+tail (Sun et al. 2019)."""

import numpy as np
import pytest

from lib.data.batching import encode_ids, leading_special_tokens, trailing_special_tokens, truncate
from lib.model.backbone import train_wordpiece

CLS, SEP = 101, 102


def _row(n_text: int) -> np.ndarray:
    return np.array([CLS, *range(1, n_text + 1), SEP], dtype=np.int32)


@pytest.mark.parametrize("how, head_tokens, kept", [
    ("head", None, [1, 2, 3, 4, 5, 6]),
    ("tail", None, [15, 16, 17, 18, 19, 20]),
    ("head+tail", 2, [1, 2, 17, 18, 19, 20]),
    ("head+tail", None, [1, 16, 17, 18, 19, 20]),  # a quarter of the 6-token budget, rounded down
    ("head+tail", 50, [1, 2, 3, 4, 5, 6]),  # more head than fits: all head
])
def test_each_rule_keeps_its_tokens_and_the_special_tokens(how, head_tokens, kept):
    (cut,) = truncate([_row(20)], max_length=8, trailing=1, how=how, head_tokens=head_tokens, leading=1)
    assert cut.tolist() == [CLS, *kept, SEP]


def test_short_rows_are_left_alone():
    row = _row(5)
    assert all(truncate([row], 8, 1, how, 3, 1)[0] is row for how in ("head", "tail", "head+tail"))


def test_tail_truncation_sees_past_the_tokenizers_own_limit():
    """The tokenizer cuts long texts at the head; tail truncation tokenises the whole text first."""
    words = [f"w{i}" for i in range(40)]
    tokenizer = train_wordpiece([" ".join(words)] * 3, 100, [], model_max_length=16)
    assert (leading_special_tokens(tokenizer), trailing_special_tokens(tokenizer)) == (1, 1)
    text = " ".join(words)
    head, tail, both = (encode_ids(tokenizer, [text], 10, how, 3)[0] for how in ("head", "tail", "head+tail"))
    decode = lambda ids: tokenizer.decode(ids[1:-1]).split()
    assert decode(head) == words[:8] and decode(tail) == words[-8:]
    assert decode(both) == words[:3] + words[-5:]
    assert all(len(ids) == 10 for ids in (head, tail, both))
