"""No surprise UCS-2: the characters that forced it are named, and ``encoding:
transliterate`` replaces look-alikes before segments and cost are counted (issue 18)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from conftest import make_config, twilio_block
from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute import ConfigError, Message, Router
from smsroute.encoding import GSM7_BASIC, GSM7_EXTENSION, analyze, culprits
from smsroute.message import Culprit
from smsroute.testing import FakeTwilio
from smsroute.transliterate import LOOK_ALIKES, transliterate

CURLY = "\u2019"  # RIGHT SINGLE QUOTATION MARK


def test_culprits_name_each_character_and_its_positions() -> None:
    text = "\u201cHi\u201d \u2013 it\u2019s me\u2019"
    info = analyze(text)
    assert info.encoding == "UCS-2"
    assert info.culprits == (
        Culprit("\u201c", (0,)),
        Culprit("\u201d", (3,)),
        Culprit("\u2013", (5,)),
        Culprit(CURLY, (9, 14)),
    )
    assert str(info.culprits[3]) == "U+2019 RIGHT SINGLE QUOTATION MARK at 9, 14"
    assert analyze("plain [GSM] text \u20ac").culprits == ()  # the extension table is GSM-7
    assert "\u201c" not in repr(info)  # characters of the text stay out of reprs


def test_culprits_are_bounded_for_a_text_in_another_script() -> None:
    found = culprits(
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?"
    )
    assert 0 < len(found) <= 10


def test_transliteration_maps_only_to_gsm7() -> None:
    gsm = GSM7_BASIC | GSM7_EXTENSION
    for source, target in LOOK_ALIKES.items():
        assert source not in gsm, source
        assert set(target) <= gsm, (source, target)
    text = "No change here."
    assert transliterate(text) is text


def test_one_curly_quote_costs_three_segments_and_transliteration_saves_two() -> None:
    text = ("x" * 156) + f"it{CURLY}s"  # 160 characters
    assert len(text) == 160
    before = analyze(text)
    assert (before.encoding, before.segments) == ("UCS-2", 3)
    after = analyze(transliterate(text))
    assert (after.encoding, after.segments) == ("GSM-7", 1)


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_transliteration_never_adds_a_culprit(text: str) -> None:
    out = transliterate(text)
    gsm = GSM7_BASIC | GSM7_EXTENSION
    assert set(out) - gsm <= set(text) - gsm  # what is left outside GSM-7 was there before
    if analyze(text).encoding == "UCS-2":
        assert analyze(out).segments <= analyze(text).segments


# -- through the router ----------------------------------------------------------------------


def config(fake: FakeTwilio, categories: str = "", rule_extra: str = "") -> str:
    return f"""
providers:
{twilio_block("a", fake, prices="{default: 0.01}")}
{categories}
rules:
  - name: default
    providers: [a]{rule_extra}
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as f:
        yield f


LONG = ("x" * 156) + f"it{CURLY}s"


async def test_the_result_and_explain_name_the_culprits_without_transliteration(
    fake: FakeTwilio,
) -> None:
    async with Router(make_config(config(fake)), metrics=False) as router:
        message = Message(to="+14155550100", text=LONG, category="marketing")
        result = await router.send(message)
        assert result.ok
        assert result.encoding == "UCS-2"
        assert result.segments == 3
        assert result.culprits == (Culprit(CURLY, (158,)),)
        assert not result.transliterated
        assert fake.messages[0].text == LONG
        plan = router.explain(message)
        assert plan.culprits == result.culprits
        assert plan.segments == 3


async def test_transliterate_per_category_sends_one_segment(fake: FakeTwilio) -> None:
    cats = "categories:\n  marketing: {encoding: transliterate}"
    async with Router(make_config(config(fake, cats)), metrics=False) as router:
        marketing = Message(to="+14155550100", text=LONG, category="marketing")
        result = await router.send(marketing)
        assert result.ok
        assert result.transliterated
        assert (result.encoding, result.segments, result.culprits) == ("GSM-7", 1, ())
        assert result.cost == pytest.approx(0.01)  # one segment's price, not three
        assert fake.messages[-1].text == LONG.replace(CURLY, "'")
        plan = router.explain(marketing)
        assert plan.transliterated
        assert plan.segments == 1
        # Never for otp, and not for a category that did not ask.
        for category in ("otp", "transactional"):
            other = await router.send(Message(to="+14155550100", text=LONG, category=category))
            assert not other.transliterated
            assert other.segments == 3
            assert fake.messages[-1].text == LONG


async def test_transliterate_per_rule_and_a_rule_can_turn_it_off(fake: FakeTwilio) -> None:
    text = f"""
providers:
{twilio_block("a", fake)}
categories:
  marketing: {{encoding: transliterate}}
rules:
  - name: exact
    match: {{tags: exact}}
    providers: [a]
    encoding: auto
  - name: default
    providers: [a]
    encoding: transliterate
"""
    async with Router(make_config(text), metrics=False) as router:
        exact = await router.send(
            Message(to="+14155550100", text=LONG, category="marketing", tags=("exact",))
        )
        assert not exact.transliterated
        assert exact.segments == 3
        # The catch-all rule transliterates transactional, but never otp.
        tx = await router.send(Message(to="+14155550100", text=LONG, category="transactional"))
        assert tx.transliterated
        assert tx.segments == 1
        otp = await router.send(Message(to="+14155550100", text=LONG, category="otp"))
        assert not otp.transliterated
        assert otp.segments == 3


def test_transliterate_is_refused_for_otp_at_load_time() -> None:
    base = 'providers:\n  a: {type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}\n'
    with pytest.raises(ConfigError) as info:
        make_config(
            base
            + "categories:\n  otp: {encoding: transliterate}\nrules:\n  - {name: d, providers: [a]}\n"
        )
    assert "categories.otp.encoding" in str(info.value)
    assert ":4:" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_config(
            base
            + "rules:\n  - {name: codes, match: {category: [otp]}, providers: [a], encoding: transliterate}\n"
            + "  - {name: d, providers: [a]}\n"
        )
    assert "rules[0].encoding" in str(info.value)
    assert "refused for otp" in str(info.value)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=15),
        st.sampled_from(["auto", "transliterate", "gsm7", "Transliterate"]),
    ),
    st.sampled_from(["otp", "transactional", "marketing", "news"]),
)
@settings(max_examples=150, deadline=None)
def test_any_encoding_value_loads_or_is_one_config_error(value: object, category: str) -> None:
    text = (
        'providers:\n  a: {type: twilio, account_sid: AC0123, auth_token: t, from: "+15005550006"}\n'
        f"categories:\n  {category}: {{encoding: {json.dumps(value)}}}\n"
        "rules:\n  - {name: d, providers: [a]}\n"
    )
    try:
        loaded = make_config(text)
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = []
    if problems:
        assert all(":4:" in str(p) for p in problems)
        return
    mode = loaded.categories[category].encoding
    assert mode in ("auto", "transliterate")
    assert not (category == "otp" and mode == "transliterate")
