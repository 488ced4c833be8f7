"""Anything a caller puts in a :class:`~smsroute.Message` gets a result or the documented
error, and never costs a provider anything.

``Router.send`` and ``Router.enqueue`` take a caller's message: its number, text,
sender, category, tags and metadata may come from anywhere (a form, a CSV, a file
read with the wrong encoding).  The contract, for any value of every field
(hypothesis: any Unicode, lone surrogates and control characters included, and
valid values beside them so that the rest of the path is reached):

- ``send`` returns a :class:`~smsroute.SendResult`, or raises :class:`InvalidNumber` or
  :class:`InvalidMessage` (``enqueue`` returns an id or raises the same two);
- a message the router refuses as invalid reaches no provider and counts against no
  provider's breaker or health: an adapter never meets a value it cannot send, so no
  "raised instead of answering" traceback, no transient failure blamed on it;
- the error's text holds neither the whole number nor the text;
- the router keeps working: a valid message after it is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import make_config, twilio_block
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from log_support import every_log_record

from smsroute import BreakerState, InvalidMessage, InvalidNumber, Message, Router
from smsroute.testing import FakeTwilio

GOOD = Message(to="+4915123456789", text="Your code is 123456", category="otp")

#: Any character: every category hypothesis draws, and lone surrogates (which a str may
#: hold, and no encoding can carry).
CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))
ANY_TEXT = st.one_of(
    st.text(CHAR, max_size=400),
    # a surrogate somewhere in otherwise ordinary text (drawn char by char above, one is rare)
    st.builds(
        lambda head, odd, tail: head + odd + tail,
        st.text(max_size=100),
        st.characters(categories=["Cs"]),
        st.text(max_size=100),
    ),
)
NUMBERS = st.one_of(
    st.sampled_from(["+4915123456789", "+14155550100", "015123456789", "+44 7700 900123"]),
    st.text(st.sampled_from("+0123456789 ()-.x"), max_size=25),
    ANY_TEXT,
)
TEXTS = st.one_of(st.sampled_from(["Your code is 123456", "Grüße 👋", "x" * 800]), ANY_TEXT)
SENDERS = st.one_of(st.none(), st.sampled_from(["+15005550006", "Shop"]), ANY_TEXT)
CATEGORIES = st.one_of(st.sampled_from(["otp", "transactional", "marketing"]), ANY_TEXT)
TAGS = st.lists(st.one_of(st.sampled_from(["promo", "vip"]), ANY_TEXT), max_size=4)
METADATA = st.dictionaries(
    ANY_TEXT, st.one_of(st.none(), st.integers(), ANY_TEXT, st.lists(ANY_TEXT)), max_size=3
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        to=draw(NUMBERS),
        text=draw(TEXTS),
        sender=draw(SENDERS),
        category=draw(CATEGORIES),
        tags=tuple(draw(TAGS)),
        metadata=draw(METADATA),
    )


@attrs.define
class Rig:
    router: Router
    fake: FakeTwilio


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """One router (with an outbox) and its fake for all of a test's examples."""
    async with FakeTwilio() as fake:
        config = make_config(
            "defaults:\n  default_region: DE\n"
            "providers:\n"
            + twilio_block("a", fake)
            + "\nrules:\n  - name: default\n    providers: [a]\n"
            + f"outbox:\n  path: {tmp_path / 'outbox.db'}\n"
        )
        async with Router(config) as router:
            yield Rig(router, fake)


def unleaked(text: str, message: Message) -> None:
    """Neither the whole number nor the text (when long enough to tell) is in ``text``,
    unless a field an error may name (the category, sender, a tag) holds it too."""
    named = "".join([message.category, message.sender or "", *message.tags])
    digits = "".join(c for c in message.to if c.isdigit())
    if len(digits) >= 7 and digits not in "".join(c for c in named if c.isdigit()):
        assert digits not in "".join(c for c in text if c.isdigit()), text
    if len(message.text.strip()) >= 12 and message.text not in named:
        assert message.text not in text, text


async def healthy(router: Router) -> None:
    """No breaker blames a provider, and a valid message is accepted."""
    states = router.breaker_states()
    assert all(s is BreakerState.CLOSED for s in states.values()), states
    result = await router.send(GOOD)
    assert result.status == "accepted", result


def fuzz_settings(examples: int) -> Any:
    """The settings of these property tests: one router reused by every example."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


SETTINGS = fuzz_settings(150)


@SETTINGS
@given(message=messages())
@example(message=attrs.evolve(GOOD, text="hi \ud800 there"))
@example(message=attrs.evolve(GOOD, sender="\udcff"))
@example(message=attrs.evolve(GOOD, text="Grüße \udfff"))
@example(message=attrs.evolve(GOOD, category="otp\x00"))
async def test_any_message_is_sent_or_refused_with_the_documented_error(
    rig: Rig, message: Message
) -> None:
    requests = rig.fake.requests
    with every_log_record() as records:
        try:
            result = await rig.router.send(message)
        except (InvalidNumber, InvalidMessage) as exc:
            unleaked(str(exc), message)
            assert rig.fake.requests == requests  # refused before any provider
        else:
            assert result.status in ("accepted", "failed", "refused"), result
            for attempt in result.attempts:  # a provider's answer, never our bad value
                assert not (attempt.detail or "").startswith("adapter error"), attempt
            if result.reason is not None:
                unleaked(result.reason, message)
    for level, line in records.records:
        assert "Traceback" not in line, line
        assert level < logging.ERROR, line
        unleaked(line, message)
    await healthy(rig.router)


@SETTINGS
@given(message=messages())
@example(message=attrs.evolve(GOOD, text="hi \ud800 there"))
@example(message=attrs.evolve(GOOD, sender="\udcff"))
async def test_any_message_is_enqueued_or_refused_with_the_documented_error(
    rig: Rig, message: Message
) -> None:
    with every_log_record() as records:
        try:
            message_id = await rig.router.enqueue(message)
        except (InvalidNumber, InvalidMessage) as exc:
            unleaked(str(exc), message)
        else:
            state = await rig.router.status(message_id)
            assert state is not None
            assert state.status == "pending"
    for _, line in records.records:
        assert "Traceback" not in line, line
        unleaked(line, message)


def test_the_strategies_reach_both_outcomes() -> None:
    """The property has teeth: valid messages and each kind of invalid one are drawn."""
    seen: dict[str, Any] = {}

    @settings(max_examples=300, database=None)
    @given(message=messages())
    def draw(message: Message) -> None:
        has = any("\ud800" <= c <= "\udfff" for c in message.text)
        seen["surrogate"] = seen.get("surrogate", False) or has
        seen["good"] = seen.get("good", False) or message.to == GOOD.to

    draw()
    assert seen == {"surrogate": True, "good": True}
