"""The send path's shortcuts give what the general code gives.

``cheapest`` orders a pair of providers with one comparison instead of a sort,
and a number written in plain E.164 is classified without building a
phonenumbers PhoneNumber (bench/RESULTS.md, session 5); these pin each to the
general code's answer.
"""

from __future__ import annotations

import itertools
import random

import phonenumbers
import pytest
from test_numbers import _example_numbers, _random_numbers

import smsroute.numbers as numbers_module
from smsroute.config import Match, Rule
from smsroute.errors import InvalidNumber
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
