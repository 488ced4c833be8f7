"""Destination numbers: E.164 normalisation, clear errors, masking."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from smsroute import InvalidNumber, NumberType, mask, normalize
from smsroute.numbers import number_type, scrub


def test_international_number_with_spaces_is_normalised() -> None:
    d = normalize("+49 151 23456789")
    assert (d.e164, d.country, d.number_type) == ("+4915123456789", "DE", NumberType.MOBILE)


def test_national_number_uses_default_region() -> None:
    assert normalize("(415) 555-0100", "US").e164 == "+14155550100"


def test_national_number_without_default_region_says_what_to_do() -> None:
    with pytest.raises(InvalidNumber, match="default_region"):
        normalize("(415) 555-0100")


def test_too_short_number_says_too_short() -> None:
    with pytest.raises(InvalidNumber, match="too short"):
        normalize("+4915")


def test_unassigned_range_is_invalid_with_country_code() -> None:
    with pytest.raises(InvalidNumber, match=r"not a valid number.*\+1"):
        normalize("+1 555 000 0000")


def test_text_is_not_a_number() -> None:
    with pytest.raises(InvalidNumber):
        normalize("call me maybe")


def test_empty_number_is_refused() -> None:
    with pytest.raises(InvalidNumber, match="empty"):
        normalize("   ")


def test_error_text_masks_the_number() -> None:
    with pytest.raises(InvalidNumber) as info:
        normalize("+1 555 000 0000")
    assert "5550000000" not in str(info.value).replace(" ", "")
    assert "*" in str(info.value)


def test_fixed_line_number_type_is_known() -> None:
    assert normalize("+49 30 901820").number_type is NumberType.FIXED_LINE


def test_mask_keeps_prefix_and_last_two_digits() -> None:
    assert mask("+4915123456789") == "+49151******89"


def test_scrub_masks_numbers_inside_provider_messages() -> None:
    text = scrub("The 'To' number +15005550001 is not a valid phone number.")
    assert "15005550001" not in text
    assert text.endswith("is not a valid phone number.")


def test_scrub_leaves_short_codes_and_error_codes_alone() -> None:
    assert scrub("error 21211 at step 3") == "error 21211 at step 3"


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_fast_e164_path_agrees_with_phonenumbers(raw: str) -> None:
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        with pytest.raises(InvalidNumber):
            normalize(raw)
        return
    valid = phonenumbers.is_valid_number(parsed)
    region = phonenumbers.region_code_for_number(parsed)
    try:
        d = normalize(raw)
    except InvalidNumber:
        assert not valid or region in (None, "001")
        return
    assert valid
    assert d.e164 == phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    assert d.country == region


def test_italian_leading_zero_survives() -> None:
    assert normalize("+39 06 6982 0000").e164 == "+390669820000"


# -- our number_type against phonenumbers' own --------------------------------------


def _example_numbers() -> list[phonenumbers.PhoneNumber]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(12):  # every PhoneNumberType value, UNKNOWN (99) aside
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                found.append(example)
    return found


def _random_numbers(per_code: int = 60) -> list[phonenumbers.PhoneNumber]:
    """Valid-looking and invalid numbers of every length every country code allows."""
    rng = random.Random(20261126)
    found = []
    for code, regions in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()):
        lengths: set[int] = set()
        for region in regions:
            metadata = (
                phonenumbers.PhoneMetadata.metadata_for_nongeo_region(code)
                if region == "001"
                else phonenumbers.PhoneMetadata.metadata_for_region(region)
            )
            if metadata is not None and metadata.general_desc is not None:
                lengths.update(n for n in metadata.general_desc.possible_length if n > 0)
        for _ in range(per_code * min(len(regions), 10)):  # shared codes: more samples
            length = rng.choice(sorted(lengths or {8}))
            national = rng.randrange(10 ** (length - 1), 10**length)
            found.append(phonenumbers.PhoneNumber(country_code=code, national_number=national))
    return found


def test_number_type_agrees_with_phonenumbers_on_every_regions_examples() -> None:
    numbers = _example_numbers()
    assert len(numbers) > 1000  # 1,374 with phonenumbers 9.0
    for number in numbers:
        kind, region = number_type(number)
        assert kind == phonenumbers.number_type(number), number
        if kind != PhoneNumberType.UNKNOWN:
            assert region == phonenumbers.region_code_for_number(number), number


def test_number_type_agrees_with_phonenumbers_on_random_numbers_of_every_code() -> None:
    numbers = _random_numbers()
    valid = 0
    for number in numbers:
        kind, region = number_type(number)
        expected = phonenumbers.number_type(number)
        if phonenumbers.region_code_for_number(number) == "001":
            assert (kind, region) == (PhoneNumberType.UNKNOWN, None)  # not a country: refused
            continue
        assert kind == expected, number
        if kind != PhoneNumberType.UNKNOWN:
            assert region == phonenumbers.region_code_for_number(number), number
            valid += 1
    assert valid > 1000  # the sample holds plenty of valid numbers, not only garbage


def test_the_log_check_every_test_ends_with_finds_a_whole_number() -> None:
    """What tests/conftest.py's ``no_whole_number_in_any_log`` looks for: a whole number
    is found, a masked one is not (so the check can fail)."""
    import logging

    from log_support import NumberWatch, whole_numbers

    from smsroute import mask

    assert whole_numbers("sent to +4915123456789 via twilio") == ["+4915123456789"]
    assert whole_numbers(f"sent to {mask('+4915123456789')}") == []
    assert whole_numbers("id SM0123456789abcdef, 1.5e+15") == []
    watch = NumberWatch()
    record = logging.LogRecord("smsroute", logging.INFO, "x", 1, "to %s", ("+14155550100",), None)
    watch.emit(record)
    assert watch.leaks == ["smsroute INFO: to +14155550100"]
