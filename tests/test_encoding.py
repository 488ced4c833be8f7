"""GSM-7 / UCS-2 detection and segment counting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smsroute.encoding import GSM7_BASIC, GSM7_EXTENSION, analyze


def test_plain_ascii_is_gsm7_single_segment() -> None:
    assert analyze("Your code is 123456").encoding == "GSM-7"
    assert analyze("x" * 160).segments == 1


def test_161_gsm_characters_take_two_segments() -> None:
    assert analyze("x" * 161).segments == 2
    assert analyze("x" * 306).segments == 2
    assert analyze("x" * 307).segments == 3


def test_extension_characters_count_two_septets() -> None:
    info = analyze("€" * 80)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 160, 1)
    assert analyze("€" * 81).segments == 2


def test_escape_sequence_is_not_split_across_segments() -> None:
    # 152 plain septets then an escape pair: the pair does not fit in 153 and moves on.
    assert analyze("x" * 152 + "€" + "x" * 152).segments == 3


def test_non_gsm_character_switches_to_ucs2() -> None:
    info = analyze("Привет")
    assert (info.encoding, info.units, info.segments) == ("UCS-2", 6, 1)


def test_ucs2_limits_are_70_and_67() -> None:
    assert analyze("ж" * 70).segments == 1
    assert analyze("ж" * 71).segments == 2
    assert analyze("ж" * 134).segments == 2
    assert analyze("ж" * 135).segments == 3


def test_characters_outside_the_bmp_count_two_units() -> None:
    info = analyze("👋" * 35)
    assert (info.encoding, info.units, info.segments) == ("UCS-2", 70, 1)
    assert analyze("👋" * 36).segments == 2


def test_surrogate_pair_is_not_split_across_segments() -> None:
    # 66 units then an emoji (2 units) would straddle the 67-unit boundary.
    assert analyze("ж" * 66 + "👋" + "ж" * 66).segments == 3


gsm_text = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=800)


@given(gsm_text)
def test_gsm_segments_hold_at_most_153_septets(text: str) -> None:
    info = analyze(text)
    assert info.encoding == "GSM-7"
    if info.units <= 160:
        assert info.segments == (1 if text else 0)
    else:
        assert (info.segments - 1) * 153 < info.units <= info.segments * 153


@given(st.text(min_size=1, max_size=400).filter(lambda t: analyze(t).encoding == "UCS-2"))
def test_ucs2_units_match_utf16_length(text: str) -> None:
    assert analyze(text).units == len(text.encode("utf-16-le")) // 2
