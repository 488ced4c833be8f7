"""The hot path's form encoder writes exactly what urllib.parse.urlencode writes."""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from smsroute.providers.base import form_encode

VALUES = (
    st.text()
    | st.from_regex(r"\+?[0-9]{0,15}", fullmatch=True)
    # plain words and spaces, and near misses: the encoder's shortcuts for them
    | st.from_regex(r"[A-Za-z0-9_.~ +-]*", fullmatch=True)
    | st.from_regex(r"[A-Za-z0-9 ]*[^A-Za-z0-9 ]?[A-Za-z0-9 ]*", fullmatch=True)
)


@given(st.dictionaries(st.text(), VALUES))
def test_form_encode_equals_urlencode(data: dict[str, str]) -> None:
    assert form_encode(data) == urlencode(data)


def test_plain_words_and_spaces() -> None:
    for text in ("Your code is 123456", " lead and trail ", "a  b", "", " ", "x-y_z.w~v"):
        assert form_encode({"Body": text}) == urlencode({"Body": text})


def test_twilio_form() -> None:
    form = {"To": "+4915123456789", "Body": "Grüße, 50% off & more", "From": "Acme", "Attempt": "2"}
    assert form_encode(form) == urlencode(form)
