"""The send path's shortcuts give what the general code gives.

``cheapest`` orders a pair of providers with one comparison instead of a sort,
a number written in plain E.164 is classified without building a
phonenumbers PhoneNumber (bench/RESULTS.md, session 5), the frozen classes of
the send path are built without attrs' __init__ and form values are told apart
by string methods before any regex; these pin each to the general code's answer.
"""

from __future__ import annotations

import itertools
import pickle
import random
import weakref
from typing import Any
from urllib.parse import urlencode

import attrs
import phonenumbers
import pytest
from test_numbers import _example_numbers, _random_numbers

import smsroute.numbers as numbers_module
from smsroute.config import Match, Rule
from smsroute.errors import InvalidNumber
from smsroute.message import Attempt, Outcome, SendResult, new_attempt, new_send_result
from smsroute.providers.base import (
    HttpRequest,
    OutboundSMS,
    Reply,
    form_encode,
    new_http_request,
    new_outbound_sms,
    new_reply,
)
from smsroute.selection import Option, order

PRICES = [None, 0.0, 0.03, 0.05, 0.05, 0.09]


def test_cheapest_orders_a_pair_as_the_general_sort_does() -> None:
    rule = Rule(name="r", match=Match(), providers=("a", "b"), strategy="cheapest")
    for pa, pb in itertools.product(PRICES, repeat=2):
        options = [
            Option("a", pa, None, None, "closed", True),
            Option("b", pb, None, None, "closed", True),
        ]
        expected = sorted(options, key=lambda o: (o.price is None, o.price or 0.0))
        got = order(rule, options, random.Random(1))
        assert [o.provider for o in got] == [o.provider for o in expected], (pa, pb)


def _outcome(raw: str) -> object:
    try:
        return numbers_module._normalize(raw, None)
    except InvalidNumber as exc:
        return ("InvalidNumber", str(exc))


def test_the_plain_e164_shortcut_gives_what_the_general_parser_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sample = [*_example_numbers(), *_random_numbers()]
    raws = [phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164) for n in sample]
    raws += ["+4915123456789", "+390612345678", "+٤٩١٥١٢٣٤٥٦٧٨٩", "+80012345678", "+1555"]
    fast = [_outcome(raw) for raw in raws]
    shortcut_taken = sum(numbers_module._fast_e164(raw) is not None for raw in raws)
    assert shortcut_taken > 1000
    monkeypatch.setattr(numbers_module, "_fast_e164", lambda raw: None)
    general = [_outcome(raw) for raw in raws]
    for raw, a, b in zip(raws, fast, general, strict=True):
        assert a == b, numbers_module.mask(raw)


def _distinct_values(cls: type) -> dict[str, object]:
    """A value per field of ``cls`` that no default has, of a plausible type."""
    values: dict[str, object] = {}
    for i, field in enumerate(attrs.fields(cls)):
        if field.name in ("outcome",):
            values[field.name] = Outcome.THROTTLED
        elif field.name in ("attempts",):
            values[field.name] = (Attempt("p", Outcome.TIMEOUT, 1.5),)
        elif field.name == "part_ids":
            values[field.name] = ("a", "b")
        elif field.name == "last_resort":
            values[field.name] = True
        elif field.name in ("headers", "data"):
            values[field.name] = {"k": str(i)}
        else:
            values[field.name] = f"v{i}"
    return values


FAST_CONSTRUCTORS = [
    (Attempt, new_attempt),
    (SendResult, new_send_result),
    (OutboundSMS, new_outbound_sms),
    (Reply, new_reply),
    (HttpRequest, new_http_request),
]


@pytest.mark.parametrize(("cls", "make"), FAST_CONSTRUCTORS)
def test_a_fast_constructor_makes_what_attrs_init_makes(cls: Any, make: Any) -> None:
    values = _distinct_values(cls)
    fast: Any = make(*values.values())
    slow: Any = cls(**values)
    assert type(fast) is cls
    assert fast == slow
    assert repr(fast) == repr(slow)
    if cls is not HttpRequest:  # its headers are a dict: not hashable either way
        assert hash(fast) == hash(slow)
    assert attrs.asdict(fast, recurse=False) == values
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert weakref.ref(fast)() is fast
    for name in values:
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(fast, name, None)
    # The defaults are attrs' defaults.
    required = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING]
    args = [values[name] for name in required]
    assert make(*args) == cls(*args)
    assert attrs.evolve(fast, **{required[0]: "changed"}) == attrs.evolve(
        slow, **{required[0]: "changed"}
    )


@pytest.mark.parametrize(
    "value",
    ["", "+", "++1", "+49151", "+١٢٣", "²", "+²", "abc", "a-b_c.d~", "1", "+1 2", "a+b", "é", "+0"],
)
def test_form_encode_shortcuts_give_what_urlencode_gives(value: str) -> None:
    assert form_encode({"To": value, "a b": value}) == urlencode({"To": value, "a b": value})
