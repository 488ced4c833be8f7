"""Rule matching: first match wins, through the index."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute.config import Match, Rule
from smsroute.numbers import NumberType, normalize
from smsroute.rules import RuleIndex, Subject, matches


def subject(
    number: str,
    category: str = "transactional",
    sender: str | None = None,
    tags: tuple[str, ...] = (),
) -> Subject:
    return Subject(normalize(number), category, sender, tags)


def r(name: str, **match: object) -> Rule:
    return Rule(name=name, match=Match(**match), providers=("p",))  # type: ignore[arg-type]


RULES = [
    r("de-otp", countries=frozenset({"DE"}), categories=frozenset({"otp"})),
    r("o2-prefix", prefixes=("+49176",)),
    r("vip", tags=frozenset({"vip"})),
    r("fixed", number_types=frozenset({NumberType.FIXED_LINE})),
    r("brand", senders=frozenset({"Acme"})),
    r("default"),
]


def first(s: Subject) -> str:
    found = RuleIndex(RULES).first(s)
    assert found is not None
    return found.name


def test_first_matching_rule_wins() -> None:
    assert first(subject("+4915123456789", "otp", tags=("vip",))) == "de-otp"


def test_prefix_rule_matches_its_numbers() -> None:
    assert first(subject("+4917612345678")) == "o2-prefix"


def test_tag_rule_matches_any_listed_tag() -> None:
    assert first(subject("+14155550100", tags=("x", "vip"))) == "vip"


def test_number_type_rule() -> None:
    assert first(subject("+4930901820")) == "fixed"


def test_sender_rule() -> None:
    assert first(subject("+14155550100", sender="Acme")) == "brand"


def test_catch_all_takes_the_rest() -> None:
    assert first(subject("+14155550100")) == "default"


countries = ["DE", "FR", "GB", "US", "NL", "ES", "IT"]
numbers = [
    "+4915123456789",
    "+33612345678",
    "+447911123456",
    "+14155550100",
    "+31612345678",
    "+34612345678",
    "+393123456789",
    "+4917612345678",
]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_index_agrees_with_a_linear_scan(seed: int) -> None:
    rng = random.Random(seed)
    rules: list[Rule] = []
    for i in range(rng.randint(1, 40)):
        kw: dict[str, object] = {}
        if rng.random() < 0.5:
            kw["countries"] = frozenset(rng.sample(countries, rng.randint(1, 3)))
        elif rng.random() < 0.4:
            kw["prefixes"] = (rng.choice(["+49", "+4915", "+4917", "+33", "+1415", "+44"]),)
        if rng.random() < 0.4:
            kw["categories"] = frozenset({rng.choice(["otp", "marketing", "transactional"])})
        if rng.random() < 0.2:
            kw["tags"] = frozenset({"vip"})
        rules.append(r(f"r{i}", **kw))
    rules.append(r("default"))
    index = RuleIndex(rules)
    for number in numbers:
        for category in ("otp", "marketing", "transactional"):
            for tags in ((), ("vip",)):
                s = subject(number, category, tags=tags)
                linear = next(rule for rule in rules if matches(rule, s))
                assert index.first(s) is linear
