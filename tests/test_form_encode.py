"""The hot path's form encoder writes exactly what urllib.parse.urlencode writes."""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from smsroute.providers.base import form_encode


@given(st.dictionaries(st.text(), st.text() | st.from_regex(r"\+?[0-9]{0,15}", fullmatch=True)))
def test_form_encode_equals_urlencode(data: dict[str, str]) -> None:
    assert form_encode(data) == urlencode(data)


def test_twilio_form() -> None:
    form = {"To": "+4915123456789", "Body": "Grüße, 50% off & more", "From": "Acme", "Attempt": "2"}
    assert form_encode(form) == urlencode(form)
