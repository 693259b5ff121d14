"""The text preprocessor: each transform, fitting on training text only, and the save/load round trip."""

import pytest

from lib.core.errors import UserError
from lib.data.preprocess import TextPreprocessor


def test_normalises_unicode_whitespace_and_squashes_repeats():
    pre = TextPreprocessor(max_char_repeat=3).fit(["x"])
    # "가" written as conjoining jamo is composed by NFC
    assert pre.transform(["\u1100\u1161  좋아요ㅋㅋㅋㅋㅋㅋ!!!!!\n ㅠㅠㅠㅠ"]) == ["가 좋아요ㅋㅋㅋ!!! ㅠㅠㅠ"]


def test_patterns_become_special_tokens_only_when_they_recur():
    train = ["see https://a.com", "www.b.kr good", "http://c.org/x", "mail me@x.com"]
    pre = TextPreprocessor(special_patterns=("url", "email", "redacted"), special_pattern_min_count=2).fit(train)
    assert pre.special_tokens == ["[URL]"]
    assert pre.transform(["link:http://z.com end", "Good OO movie me@x.com"]) == \
        ["link: [URL] end", "Good OO movie me@x.com"]


def test_redacted_names_are_not_taken_from_words():
    pre = TextPreprocessor(special_patterns=("redacted",), special_pattern_min_count=1).fit(["OO이다 OOO기"])
    assert pre.transform(["Good OO이다 ZOOM"]) == ["Good [REDACTED] 이다 ZOOM"]


def test_rare_words_are_learned_from_the_training_split_only():
    train = ["a a a b", "a b c", "d"]
    pre = TextPreprocessor(num_rare_words_to_remove=1).fit(train)
    assert pre.transform(train) == ["a a a b", "a b", ""]
    assert pre.transform(["a z b z"]) == ["a b"]  # words unseen in training count as rare
    assert TextPreprocessor(num_rare_words_to_remove=0).fit(train).transform(["a z"]) == ["a z"]


def test_save_and_load_apply_the_same_transform(tmp_path):
    train = ["영화 최고 https://x.com ㅋㅋㅋㅋㅋ", "영화 별로 https://y.com", "최고 최고", "OO 나옴 OO"]
    pre = TextPreprocessor(special_patterns=("url", "redacted"), special_pattern_min_count=2,
                           num_rare_words_to_remove=1).fit(train)
    pre.save(tmp_path / "p.json")
    loaded = TextPreprocessor.load(tmp_path / "p.json")
    texts = train + ["새 영화 최고 http://z.com OO"]
    assert loaded.transform(texts) == pre.transform(texts)
    assert loaded.special_tokens == pre.special_tokens == ["[URL]", "[REDACTED]"]


def test_a_foreign_file_is_refused(tmp_path):
    (tmp_path / "p.json").write_text('{"format_version": 99}')
    with pytest.raises(UserError, match="preprocessor format"):
        TextPreprocessor.load(tmp_path / "p.json")
