"""Any message through every adapter: it arrives intact, or is refused up front, and a
value a provider cannot carry is never blamed on that provider.

tests/test_message_fuzz.py holds the contract for the Twilio adapter; here it is run
through every adapter against its fake (Twilio, Vonage, Plivo, Telnyx, Infobip, Sinch,
Bandwidth, MessageBird, the generic ``http`` type with the text and the sender in a
JSON body, a form body, the URL query and a header, and SMPP against ``FakeSMSC``),
with one clause more, **fidelity**:

- ``send`` returns a :class:`~smsroute.SendResult` or raises :class:`InvalidNumber` /
  :class:`InvalidMessage`, and an invalid message reaches no provider;
- no attempt is a health failure (the fakes are healthy: a transient, auth or timeout
  outcome would be our bad request blamed on them), none is an "adapter error", no
  traceback and no ERROR is logged, and no number or text leaks;
- a value one provider cannot carry (an SMPP source_addr over its length, a CR in an
  HTTP header) is answered by the adapter without a request, UNROUTABLE with a detail
  naming the field and the limit: the next provider may carry it;
- when accepted, what the fake received is exactly the message's number, text and
  sender (in the provider's own documented form of a number): no field injected into
  another, nothing cut;
- the router keeps sending.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pytest
import yaml
from aiohttp import web
from hypothesis import event, example, given
from hypothesis import strategies as st
from local_aggregator import FORM_PATH, JSON_PATH, LocalAggregator
from log_support import every_log_record
from provider_support import provider_settings, routing_yaml
from test_message_fuzz import ANY_TEXT, NUMBERS, fuzz_settings, healthy, unleaked

from smsroute import BreakerState, InvalidMessage, InvalidNumber, Message, Outcome, Router
from smsroute.config import Config, parse_config
from smsroute.encoding import analyze
from smsroute.numbers import normalizer
from smsroute.testing import (
    FakeProvider,
    FakeTelnyx,
    FakeVonage,
    Incoming,
)
from smsroute.testing.__main__ import FAKES
from smsroute.testing.smsc import FakeSMSC

#: The sender each provider is configured with (used when the message has none).
CONFIGURED = "+14155552671"
TO = "+4915123456789"
GOOD = Message(to=TO, text="Your code is 123456", category="otp")

HTTP_FAKES: dict[str, Callable[[], FakeProvider]] = dict(FAKES)  # every HTTP fake, by type
#: The generic adapter: where its templates put the text and the sender.
HTTP_VARIANTS = ("http-json", "http-form", "http-query", "http-header")
KINDS = (*HTTP_FAKES, *HTTP_VARIANTS, "smpp")

# -- what is drawn -----------------------------------------------------------------------------

#: Texts that try to break out of their field: quotes, braces, '&', '=', newlines, a
#: header line, percent escapes, a template placeholder, the GSM-7 extension table.
HOSTILE_TEXTS = [
    'say "hi" {x} & y=z',
    "a&to=+4915000000000&text=x",
    "line1\nline2\r\nX-Injected: 1",
    "{text} {sender} {{to}} %41%00 \\u0000",
    "ends with spaces  ",
    "\ttabbed\t",
    "€uro [x] ~^|\\ {}",
    "Grüße 👋 <b>&amp;</b>",
    "ab\x1bc\x7fd",
    "null\x00byte",
    "x" * 800,
    "💩" * 60,
]
#: Senders a provider may not carry: CR/LF, NUL, non-ASCII, too long, padded, injecting.
HOSTILE_SENDERS = [
    "Shop",
    "My Shop",
    "+33612345678",
    "33612345678",
    "+49 151 2345 6789",
    "12345",
    'a"b',
    "a&b=c",
    "{sender}",
    "x\r\nX-Evil: 1",
    "A\x00B",
    "VeryLongSenderName",
    "+123456789012345678901",
    "Grüße",
    " Shop",
    "Shop ",
    "",
    "\t",
]
VALID_NUMBERS = st.sampled_from([TO, "+33612345678", "+436641234567", "01512 3456789"])
#: Any character a sender or text may really hold (no control, format or unassigned one).
PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Mostly messages a provider is given (valid number, printable text), so that fidelity
# is checked often; the rest of anything, as tests/test_message_fuzz.py draws it.
TEXT = st.one_of(
    st.sampled_from(HOSTILE_TEXTS),
    st.text(PRINTABLE, min_size=1, max_size=200),
    st.text(ASCII, min_size=1, max_size=200),
    st.text(PRINTABLE, min_size=1, max_size=60),
    ANY_TEXT,
)
SENDER = st.one_of(
    st.none(),
    st.sampled_from(HOSTILE_SENDERS),
    st.text(PRINTABLE, min_size=1, max_size=14),
    st.text(ASCII, min_size=1, max_size=24),
    st.text(max_size=14),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Three in four to a valid number (the rest: anything ``NUMBERS`` draws)."""
    to = draw(VALID_NUMBERS if draw(st.integers(0, 3)) else NUMBERS)
    return Message(to=to, text=draw(TEXT), sender=draw(SENDER), category="otp")


# -- the generic adapter's gateway -------------------------------------------------------------


class HeaderAggregator(LocalAggregator):
    """The JSON gateway, also reading the sender and the text from request headers."""

    async def read(self, request: web.Request) -> Incoming:
        incoming = await super().read(request)
        fields = dict(incoming.fields)
        fields["from"] = request.headers.get("X-Sender")
        fields["header_text"] = request.headers.get("X-Text")
        return Incoming(fields=fields, to=incoming.to)


def http_section(kind: str, gateway: LocalAggregator) -> dict[str, Any]:
    """The ``http`` provider of ``kind``: the text and the sender in its body, query or headers."""
    fields = {"to": "{to}", "from": "{sender}", "text": "{text}"}
    section: dict[str, Any] = {
        "type": "http",
        "base_url": gateway.url,
        "from": CONFIGURED,
        "url": JSON_PATH,
        "auth": gateway.auth_section(),
        "id_path": "data.messages[0].id",
        "code_path": "error.code",
        "code_outcomes": {"INVALID_NUMBER": "rejected", "NO_ROUTE": "unroutable"},
        "detail_path": "error.message",
        "timeout": "2s",
    }
    if kind == "http-json":
        section["json"] = fields
    elif kind == "http-form":  # the legacy gateway: HTTP 200 with a status inside
        section["form"] = {**fields, "to": "{to_digits}"}
        section.update(
            url=FORM_PATH,
            id_path="messages[0].message-id",
            code_path="messages[0].status",
            code_outcomes={"0": "accepted", "2": "rejected", "3": "rejected", "6": "unroutable"},
            detail_path="messages[0].error-text",
        )
    elif kind == "http-query":
        section["method"] = "GET"
        section["query"] = fields
    else:  # http-header
        section["json"] = {"to": "{to}", "text": "{text}"}
        section["headers"] = {"X-Sender": "{sender}", "X-Text": "{text}"}
    return section


# -- one router per adapter --------------------------------------------------------------------


@attrs.define
class Rig:
    kind: str
    router: Router
    fake: FakeProvider | FakeSMSC

    @property
    def requests(self) -> int:
        fake = self.fake
        return len(fake.submits) if isinstance(fake, FakeSMSC) else fake.requests

    def received(self) -> tuple[str, str | None, str, Mapping[str, Any]]:
        """(to, sender, text, fields) of the last message the fake accepted."""
        fake = self.fake
        if isinstance(fake, FakeSMSC):
            m = fake.messages[-1]
            return "+" + m.to, m.sender, m.text, {}
        r = fake.messages[-1]
        return r.to if r.to.startswith("+") else "+" + r.to, r.sender, r.text, r.fields

    def sender_of(self, message: Message) -> str:
        """The sender the router gives the provider: the message's own, unless the
        destination's country cannot take it (then the configured one; smsroute.senders)."""
        rt = self.router.dispatcher.runtime
        destination = E164(message.to)
        rule = rt.index.find(destination, message.category, message.sender, message.tags)
        assert rule is not None
        pcfg = rt.config.providers["a"]
        pick = rt.senders.choose(rule, pcfg, destination, message.sender or None, peek=True)
        return pick.sender or CONFIGURED

    def wire_sender(self, sender: str) -> str:
        """``sender`` as the provider's API writes it (a number in its own form)."""
        if self.kind == "vonage":  # numbers without '+' or spaces (Vonage's SDK)
            squeezed = sender.replace(" ", "")
            if squeezed.removeprefix("+").isdigit():
                return squeezed.removeprefix("+")
        # '+' and digits: an international number, written without '+'
        if self.kind in ("messagebird", "smpp") and sender.removeprefix("+").isdigit():
            return sender.removeprefix("+")
        return sender


def config_text(kind: str, fake: FakeProvider | FakeSMSC) -> str:
    if isinstance(fake, FakeSMSC):
        lines = [
            "type: smpp",
            "host: 127.0.0.1",
            f"port: {fake.port}",
            f"system_id: {fake.system_id}",
            f"password: {fake.password}",
            f'from: "{CONFIGURED}"',
            "timeout: 2s",
        ]
    elif isinstance(fake, LocalAggregator):
        lines = yaml.safe_dump(http_section(kind, fake), sort_keys=False).splitlines()
    else:
        extra = ["timeout: 2s"]
        if isinstance(fake, FakeTelnyx):  # alphanumeric senders need a messaging profile
            extra.append(f'messaging_profile_id: "{fake.messaging_profile_id}"')
        lines = provider_settings(fake, CONFIGURED, *extra)
    return routing_yaml({"a": lines}, default_region="DE")


def start_fake(kind: str) -> FakeProvider | FakeSMSC:
    if kind == "smpp":
        return FakeSMSC()
    if kind == "http-header":
        return HeaderAggregator("json", "bearer")
    if kind in HTTP_VARIANTS:
        return LocalAggregator("form" if kind == "http-form" else "json", "bearer")
    return HTTP_FAKES[kind]()


def router_config(kind: str, fake: FakeProvider | FakeSMSC) -> Config:
    return parse_config(config_text(kind, fake))


@pytest.fixture(params=KINDS)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """One router and its fake for all of a test's examples."""
    kind: str = request.param
    async with AsyncExitStack() as stack:
        fake = start_fake(kind)
        await stack.enter_async_context(fake)
        router = await stack.enter_async_context(Router(router_config(kind, fake)))
        yield Rig(kind, router, fake)


# -- the contract -----------------------------------------------------------------------------

E164 = normalizer("DE")
#: The detail of an adapter's refusal to carry a value (made without a request).
CANNOT_CARRY = "cannot carry"


async def check(rig: Rig, message: Message) -> None:
    before = rig.requests
    accepted_before = len(rig.fake.messages)
    with every_log_record() as records:
        try:
            result = await rig.router.send(message)
        except (InvalidNumber, InvalidMessage) as exc:
            event(f"refused: {str(exc)[:30]}")  # --hypothesis-show-statistics
            unleaked(str(exc), message)
            assert rig.requests == before, "an invalid message reached the provider"
        else:
            assert result.status in ("accepted", "failed"), result
            event(
                f"{result.status}: {[(a.outcome.value, a.detail) for a in result.attempts]}"[:110]
            )
            for attempt in result.attempts:
                detail = attempt.detail or ""
                assert not detail.startswith("adapter error"), attempt
                # The fakes are healthy: a health failure is our value blamed on them.
                assert not attempt.outcome.is_health_failure, attempt
                if CANNOT_CARRY in detail:  # answered without a request
                    assert attempt.outcome is Outcome.UNROUTABLE, attempt
                    assert rig.requests == before, attempt
                    unleaked(detail, message)
                    if message.sender and len(message.sender.strip()) >= 3:
                        assert message.sender not in detail, detail
            if result.reason is not None:
                unleaked(result.reason, message)
            if result.status == "accepted":
                assert len(rig.fake.messages) == accepted_before + 1
                faithful(rig, message)
    for level, line in records.records:
        assert "Traceback" not in line, line
        assert level < logging.ERROR, line
        unleaked(line, message)
    await healthy(rig.router)


def faithful(rig: Rig, message: Message) -> None:
    """What the fake received is the message's number, text and sender, whole."""
    to, sender, text, fields = rig.received()
    assert to == E164(message.to).e164
    assert text == message.text, (text, message.text)
    wanted = rig.sender_of(message)
    assert sender == rig.wire_sender(wanted), (sender, wanted)
    if rig.kind == "http-header":
        assert fields["header_text"] == message.text
    # Where the API is told the text's encoding, UCS-2 text is marked so (else it
    # arrives as question marks), and GSM-7 text is not.
    ucs2 = analyze(message.text).encoding == "UCS-2"
    if rig.kind == "vonage":
        assert fields["type"] == ("unicode" if ucs2 else "text")
    elif rig.kind == "messagebird":
        assert fields["datacoding"] == ("unicode" if ucs2 else "plain")
    elif isinstance(rig.fake, FakeSMSC):
        assert rig.fake.messages[-1].data_coding == (8 if ucs2 else 0)


SETTINGS = fuzz_settings(60)


@SETTINGS
@given(message=messages())
@example(message=attrs.evolve(GOOD, text='say "hi" {x} & y=z\r\n=%00'))
@example(message=attrs.evolve(GOOD, text="Grüße 👋 " * 5))
@example(message=attrs.evolve(GOOD, text="€uro [x] ~^|\\ {}"))
@example(message=attrs.evolve(GOOD, sender="x\r\nX-Evil: 1"))
@example(message=attrs.evolve(GOOD, sender="A\x00B"))
@example(message=attrs.evolve(GOOD, sender="VeryLongSenderName"))
@example(message=attrs.evolve(GOOD, sender="Grüße"))
@example(message=attrs.evolve(GOOD, sender="My Shop"))
@example(message=attrs.evolve(GOOD, sender=" Shop"))
@example(message=attrs.evolve(GOOD, text="null\x00byte"))
async def test_any_message_arrives_intact_or_is_refused(rig: Rig, message: Message) -> None:
    await check(rig, message)


# -- each defect the property found, shown on its own -----------------------------------------


async def failover_rig(first: str, stack: AsyncExitStack) -> tuple[Router, Any, LocalAggregator]:
    """A router trying a ``first`` provider, then the JSON gateway (which carries anything)."""
    fake = await stack.enter_async_context(start_fake(first))
    backup = await stack.enter_async_context(LocalAggregator("json", "bearer"))
    primary = yaml.safe_load(config_text(first, fake))["providers"]["a"]
    second = yaml.safe_load(config_text("http-json", backup))["providers"]["a"]
    document = {
        "defaults": {"default_region": "DE"},
        "providers": {"a": primary, "b": second},
        "rules": [{"name": "default", "providers": ["a", "b"]}],
    }
    router = await stack.enter_async_context(
        Router(parse_config(yaml.safe_dump(document, sort_keys=False)))
    )
    return router, fake, backup


@pytest.mark.parametrize(
    ("first", "sender", "limit"),
    [
        # a server strips a header value's spaces: " Shop" arrived as "Shop"
        ("http-header", " Shop", "header X-Sender: a header value is printable ASCII"),
        # no charset for a header's other bytes: sent as UTF-8, read as anyone likes
        ("http-header", "Grüße", "header X-Sender: a header value is printable ASCII"),
        # 18 characters went as an alphanumeric TP-OA, which holds 11
        ("smpp", "VeryLongSenderName", "an alphanumeric source_addr is at most 11 characters"),
        # over source_addr's 20: REJECTED "cannot encode the message", no failover
        ("smpp", "+123456789012345678901", "an SMPP source_addr is at most 20 characters"),
        # not ASCII: REJECTED "cannot encode the message", no failover
        ("smpp", "Grüße", "an SMPP source_addr is printable ASCII"),
    ],
)
async def test_a_sender_one_provider_cannot_carry_goes_to_the_next_unblamed(
    first: str, sender: str, limit: str
) -> None:
    async with AsyncExitStack() as stack:
        router, fake, backup = await failover_rig(first, stack)
        await router.send(GOOD)  # binds (SMPP) and warms up
        requests = len(fake.submits) if isinstance(fake, FakeSMSC) else fake.requests
        with every_log_record() as records:
            result = await router.send(attrs.evolve(GOOD, sender=sender))
        assert [(a.provider, a.outcome) for a in result.attempts] == [
            ("a", Outcome.UNROUTABLE),
            ("b", Outcome.ACCEPTED),
        ]
        detail = result.attempts[0].detail or ""
        assert detail.startswith("cannot carry the sender"), detail
        assert limit in detail, detail
        assert sender.strip() not in detail
        assert backup.messages[-1].sender == sender  # the next one carried it whole
        assert (len(fake.submits) if isinstance(fake, FakeSMSC) else fake.requests) == requests
        assert all(level < logging.WARNING for level, _ in records.records), records.records
        assert set(router.breaker_states().values()) <= {BreakerState.CLOSED}


@pytest.mark.parametrize("kind", ["twilio", "smpp", "http-header"])
@pytest.mark.parametrize(
    ("text", "sender"),
    [("Your code\x00 is 123456", None), (GOOD.text, "Shop\r\n"), (GOOD.text, "Sh\x00op")],
)
async def test_a_nul_or_a_control_character_no_provider_carries_is_refused_up_front(
    kind: str, text: str, sender: str | None
) -> None:
    """Sent before: a NUL in UCS-2 text to every provider (a C gateway cuts the text
    there), a CR/LF in a sender into an HTTP header (aiohttp raised: "adapter error")."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(start_fake(kind))
        router = await stack.enter_async_context(Router(router_config(kind, fake)))
        with pytest.raises(InvalidMessage, match=r"(NUL|U\+000D).*no provider can carry"):
            await router.send(attrs.evolve(GOOD, text=text, sender=sender))
        assert not fake.messages


async def test_vonage_keeps_the_spaces_of_a_sender_id() -> None:
    """It squeezed every sender's spaces out ("My Shop" went as "MyShop"): a number's only."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeVonage())
        router = await stack.enter_async_context(Router(router_config("vonage", fake)))
        for sender, sent in [("My Shop", "My Shop"), ("+49 151 2345 6789", "4915123456789")]:
            result = await router.send(attrs.evolve(GOOD, sender=sender))
            assert result.status == "accepted", result
            assert fake.messages[-1].sender == sent


@pytest.mark.parametrize("kind", ["twilio", "infobip"])
async def test_an_empty_sender_is_none_the_configured_sender_goes(kind: str) -> None:
    """An empty sender (a blank CSV column) went as no sender at all: Twilio answered
    21603 (UNROUTABLE), the others used the account's default instead of ``from``."""
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(start_fake(kind))
        router = await stack.enter_async_context(Router(router_config(kind, fake)))
        result = await router.send(attrs.evolve(GOOD, sender=""))
        assert result.status == "accepted", result
        assert isinstance(fake, FakeProvider)
        assert fake.messages[-1].sender == CONFIGURED
