"""Training-text augmentation: jamo arithmetic, each operation's probability, determinism, specs."""

import numpy as np
import pytest

from lib.core.errors import UserError
from lib.data.augment import (FINAL_SUBSTITUTES, FINALS, INITIAL_SUBSTITUTES, INITIALS, MEDIAL_SUBSTITUTES, MEDIALS,
                              NUM_SYLLABLES, OPERATIONS, SYLLABLE_BASE, AugmentSpec, augment_generator, augment_rows,
                              augment_text, compose, decompose, jamo_typos, parse_augment_spec)

TEXTS = [
    "스릴러는 아니었지만 돼개 웃곀ㅋㅋㅋㅋ 진짜 재밌다!!",
    "명작의 끝판왕 엔딩정말 기가막히네 ㅠㅠ",
    "배우들 연기는 좋았는데 스토리가 너무 뻔해요...",
    "유쾌해서 좋은영화 강추 ㅎㅎ 또 보고 싶다~",
]


def test_every_syllable_round_trips_through_its_jamo():
    for code in range(SYLLABLE_BASE, SYLLABLE_BASE + NUM_SYLLABLES):
        initial, medial, final = decompose(chr(code))
        assert 0 <= initial < len(INITIALS) and 0 <= medial < len(MEDIALS) and 0 <= final < len(FINALS)
        assert compose(initial, medial, final) == chr(code)
    assert decompose("한") == (INITIALS.index("ㅎ"), MEDIALS.index("ㅏ"), FINALS.index("ㄴ"))
    assert decompose("가") == (0, 0, 0) and compose(18, 20, 27) == "힣"
    with pytest.raises(ValueError):
        decompose("a")


def test_substitution_tables_always_change_a_jamo():
    slots = ((INITIAL_SUBSTITUTES, INITIALS), (MEDIAL_SUBSTITUTES, MEDIALS), (FINAL_SUBSTITUTES, FINALS))
    for table, inventory in slots:
        assert len(table) == len(inventory)
        for index, options in enumerate(table):
            assert index not in options and all(0 <= o < len(inventory) for o in options)
            assert options or inventory[index] == ""  # only "no final" has nothing to turn into
    assert INITIALS.index("ㅋ") in INITIAL_SUBSTITUTES[INITIALS.index("ㄱ")]  # same sound, tense/aspirated
    assert MEDIALS.index("ㅔ") in MEDIAL_SUBSTITUTES[MEDIALS.index("ㅐ")]
    assert FINALS.index("ㅅ") in FINAL_SUBSTITUTES[FINALS.index("ㅆ")]  # 했 -> 햇
    assert 0 in FINAL_SUBSTITUTES[FINALS.index("ㄶ")]  # a dropped final


def test_jamo_typo_changes_exactly_one_jamo_of_each_chosen_syllable():
    text = "".join(chr(SYLLABLE_BASE + i) for i in range(0, NUM_SYLLABLES, 7)) + " abc ㅋㅋ 123"
    typed = jamo_typos(text, 1.0, np.random.default_rng(0))
    assert len(typed) == len(text) and typed.endswith(" abc ㅋㅋ 123")
    for before, after in zip(text, typed):
        if 0 <= ord(before) - SYLLABLE_BASE < NUM_SYLLABLES:
            assert sum(a != b for a, b in zip(decompose(before), decompose(after))) == 1
    syllables = "가" * 20_000
    changed = sum(a != b for a, b in zip(syllables, jamo_typos(syllables, 0.1, np.random.default_rng(1))))
    assert 0.09 < changed / len(syllables) < 0.11


@pytest.mark.parametrize("operation", OPERATIONS)
def test_each_operation_changes_text_at_one_and_never_at_zero(operation):
    for row, text in enumerate(TEXTS):
        assert augment_text(text, AugmentSpec(**{operation: 1.0}), augment_generator(0, 0, row)) != text
        for epoch in range(20):
            assert augment_text(text, AugmentSpec(**{operation: 0.0}), augment_generator(0, epoch, row)) == text


def test_only_the_named_operation_acts():
    text = "스토리가 너무 뻔해요"
    spacings = {len(augment_text(text, AugmentSpec(spacing=1.0), augment_generator(s, 0, 0)).split())
                for s in range(20)}
    assert min(spacings) < 3 < max(spacings)  # spaces both removed and inserted
    assert augment_text("재밌다", AugmentSpec(spacing=1.0), augment_generator(0, 0, 0)) in ("재 밌다", "재밌 다")
    for seed in range(20):
        assert augment_text(text, AugmentSpec(repeat=1.0), augment_generator(seed, 0, 0)) == text  # nothing to repeat
        deleted = augment_text(text, AugmentSpec(delete=1.0), augment_generator(seed, 0, 0))
        assert len(deleted.split()) == 1 and deleted in text.split()  # never empties a review
        spaced = augment_text(text, AugmentSpec(spacing=1.0), augment_generator(seed, 0, 0))
        assert spaced.replace(" ", "") == text.replace(" ", "")
        swapped = augment_text(text, AugmentSpec(swap=1.0), augment_generator(seed, 0, 0))
        assert sorted(swapped.split()) == sorted(text.split())
        repeated = augment_text("재밌다!! ㅋㅋ", AugmentSpec(repeat=1.0), augment_generator(seed, 0, 0))
        assert repeated.startswith("재밌다!") and set(repeated) == set("재밌다!! ㅋㅋ") and repeated != "재밌다!! ㅋㅋ"


def test_augmentation_is_a_function_of_seed_epoch_and_row():
    spec = parse_augment_spec("spacing=0.3,repeat=0.3,jamo=0.1,delete=0.1,swap=0.2")
    texts = TEXTS * 25
    rows = np.arange(len(texts))
    first = augment_rows(texts, rows, spec, seed=3, epoch=1)
    assert first == augment_rows(texts, rows, spec, seed=3, epoch=1)
    # A row's noise does not depend on which batch it lands in (resume rebuilds batches).
    assert augment_rows(texts, rows[::-1][:7], spec, seed=3, epoch=1) == first[::-1][:7]
    assert first != augment_rows(texts, rows, spec, seed=3, epoch=2)
    assert first != augment_rows(texts, rows, spec, seed=4, epoch=1)
    assert sum(a != b for a, b in zip(first, texts)) > len(texts) // 2
    assert augment_rows(texts, rows[:5], AugmentSpec(), seed=3, epoch=1) == texts[:5]


def test_spec_parses_and_prints_back():
    spec = parse_augment_spec(" spacing=0.1, jamo=0.05 ,swap=1")
    assert spec == AugmentSpec(spacing=0.1, jamo=0.05, swap=1.0) and spec.enabled
    assert parse_augment_spec(str(spec)) == spec and str(spec) == "spacing=0.1,jamo=0.05,swap=1.0"
    precise = AugmentSpec(repeat=0.123456789, delete=np.float64(0.05))
    assert parse_augment_spec(str(precise)) == precise
    assert parse_augment_spec("none") == AugmentSpec() == parse_augment_spec("") and not AugmentSpec().enabled
    assert str(AugmentSpec()) == "none"


@pytest.mark.parametrize("text", ["spacing", "foo=0.1", "spacing=x", "spacing=1.5", "jamo=-0.1",
                                  "spacing=0.1,spacing=0.2", "repeat=nan", "=0.1", "spacing=0.1,,jamo=0.1"])
def test_bad_specs_name_the_flag(text):
    with pytest.raises(UserError, match="--augment"):
        parse_augment_spec(text)


def test_spec_fields_are_validated_when_built_directly():
    with pytest.raises(UserError, match="--augment: delete=2"):
        AugmentSpec(delete=2)
