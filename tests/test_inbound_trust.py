"""A webhook is trusted only by the credentials of the provider whose endpoint it
reaches: a request genuinely valid for one provider account, aimed at another's
endpoint, changes nothing.

The contract, for every provider type whose webhooks can be verified (twilio,
plivo, sinch, messagebird, telnyx, vonage, bandwidth, infobip with callback
credentials, http with an hmac ``webhook_auth``), each configured to verify:

* An inbound message decides opt-outs (STOP opts the sender out, START back in).
  An inbound correctly signed by account B of the same type, or by a provider of
  another type, posted to provider A's inbound URL is refused (403; 400 or 405
  across types, when the request cannot even be read as A's) and opts nobody in
  or out, nor reaches an ``on_inbound`` callback.  The very same request is
  accepted at its own provider's URL: it was valid, only aimed at the wrong data.
* A valid inbound of A replayed at A's status (receipt) URL moves no message and
  no opt-out, and is never answered 5xx.
* A delivery receipt signed by account B for a message sent through A (A's id,
  in the shape both accounts give) is refused at A's status URL and moves nothing;
  at B's own status URL it is accepted and still moves nothing (B did not send it).

After every attack the router keeps working: A's own genuine request is accepted
and applied.  Real sockets throughout: the fakes build and sign the requests as
each provider does, the router's webhook app listens.  (Without verification
configured, sinch, messagebird, telnyx, vonage, bandwidth and infobip accept
unsigned webhooks: documented, warned about by ``smsroute check``, not tested here.)
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import yaml
from conftest import Hooks, call, make_config, state_of
from local_aggregator import LocalAggregator
from provider_support import otp_to, provider_settings, routing_yaml, serving
from test_http_adapter import section

from smsroute import DeliveryReport, InboundMessage, Router
from smsroute.testing import (
    FakeBandwidth,
    FakeInfobip,
    FakeMessageBird,
    FakePlivo,
    FakeProvider,
    FakeSinch,
    FakeTelnyx,
    FakeTwilio,
    FakeVonage,
)

HANDSET = "+4915123456789"
OUR_NUMBER = "+14155550100"
OTP = otp_to(HANDSET)
#: Every provider type whose webhooks the router can verify.
KINDS = [
    "twilio",
    "plivo",
    "sinch",
    "messagebird",
    "telnyx",
    "vonage",
    "bandwidth",
    "infobip",
    "http",
]

Request = tuple[str, str, dict[str, str], bytes]


@attrs.frozen
class Account:
    """One provider account: its running fake, and the YAML lines of a provider
    pointed at it with its webhooks' verification configured."""

    kind: str
    fake: FakeProvider
    settings: list[str]


def new_fake(kind: str, status_url: str) -> FakeProvider:
    """A fake of ``kind`` with fresh credentials and webhook secrets of its own."""
    if kind == "vonage":
        return FakeVonage(signature_secret=secrets.token_hex(16), signature_method="sha256")
    if kind == "bandwidth":  # status callbacks go to the Application's URL
        return FakeBandwidth(callback_url=status_url)
    if kind == "infobip":
        return FakeInfobip(
            callback_username="cb-" + secrets.token_hex(4),
            callback_password=secrets.token_urlsafe(12),
        )
    if kind == "http":
        return LocalAggregator("json", "bearer", webhook_auth="hmac")
    fakes: dict[str, type[FakeProvider]] = {
        "twilio": FakeTwilio,
        "plivo": FakePlivo,
        "sinch": FakeSinch,
        "messagebird": FakeMessageBird,
        "telnyx": FakeTelnyx,
    }
    return fakes[kind]()


def verifying_settings(fake: FakeProvider) -> list[str]:
    """A provider's YAML lines: ``fake``'s credentials, its webhooks verified."""
    extra: list[str] = []  # twilio and plivo: auth_token is among the credentials
    match fake:
        case LocalAggregator():
            return yaml.safe_dump(section("aggregator", fake), sort_keys=False).splitlines()
        case FakeVonage():
            return [
                "type: vonage",
                f"base_url: {fake.url}",
                f'api_key: "{fake.api_key}"',
                f'from: "{OUR_NUMBER}"',
                f'signature_secret: "{fake.signature_secret}"',
                f"signature_method: {fake.signature_method}",
            ]
        case FakeSinch():
            extra = [f'webhook_secret: "{fake.webhook_secret}"']
        case FakeMessageBird():
            extra = [f'signing_key: "{fake.signing_key}"']
        case FakeTelnyx():
            extra = [f"public_key: {fake.public_key}"]
        case FakeBandwidth() | FakeInfobip():
            extra = [
                f'callback_username: "{fake.callback_username}"',
                f'callback_password: "{fake.callback_password}"',
            ]
    sender = "InfoSMS" if isinstance(fake, FakeInfobip) else OUR_NUMBER
    return provider_settings(fake, sender, *extra)


@asynccontextmanager
async def accounts(
    hooks: Hooks, kinds: Mapping[str, str]
) -> AsyncIterator[tuple[Router, dict[str, Account], list[InboundMessage]]]:
    """A running fake per provider ``name: kind``, a router routing through them in
    that order (its webhook app on ``hooks``), and the inbound messages it dispatched."""
    async with AsyncExitStack() as stack:
        found: dict[str, Account] = {}
        for name, kind in kinds.items():
            fake = await stack.enter_async_context(new_fake(kind, url(hooks, name, "status")))
            found[name] = Account(kind, fake, verifying_settings(fake))
        text = routing_yaml({n: a.settings for n, a in found.items()}, webhook_url=hooks.url)
        router = await stack.enter_async_context(serving(hooks, make_config(text)))
        inbound: list[InboundMessage] = []
        router.on_inbound(inbound.append)
        yield router, found, inbound


def url(hooks: Hooks, provider: str, kind: str = "inbound") -> str:
    return f"{hooks.url}/{provider}/{kind}"


def inbound(account: Account, target: str, text: str) -> Request:
    """``account``'s genuine inbound ``text`` from HANDSET, signed for ``target``."""
    return account.fake.inbound_request(target, HANDSET, OUR_NUMBER, text)


async def post(request: Request, at: str | None = None) -> int:
    """``request`` as sent, or moved to the URL ``at`` (its query, if any, kept)."""
    method, target, headers, body = request
    if at is not None:
        _, sep, query = target.partition("?")
        target = at + sep + query
    return await call(method, target, headers, body)


def accepted(status: int) -> bool:
    return 200 <= status < 300


# -- 1. two accounts of one type: inbound ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_inbound_valid_for_another_account_of_the_same_type_moves_no_opt_out(
    hooks: Hooks, kind: str
) -> None:
    """Provider A's inbound URL takes only what A's account signed.

    A START signed by account B, whether signed for B's URL (a replay) or for A's
    own URL (B's console pointed at A), is refused at A's URL and the number stays
    opted out; the same START at B's URL opts it in, so it was genuine.  Likewise a
    genuine STOP of B opts nobody out at A's URL.  A's own STOP still works after.
    """
    providers = {"primary": kind, "secondary": kind}
    async with accounts(hooks, providers) as (router, found, seen):
        a, b = found["primary"], found["secondary"]
        url_a, url_b = url(hooks, "primary"), url(hooks, "secondary")
        assert accepted(await post(inbound(a, url_a, "STOP")))
        assert router.is_opted_out(HANDSET)

        start_for_b = inbound(b, url_b, "START")
        assert await post(start_for_b, at=url_a) == 403
        assert await post(inbound(b, url_a, "START")) == 403
        assert router.is_opted_out(HANDSET)
        assert [(m.provider, m.keyword) for m in seen] == [("primary", "STOP")]

        assert accepted(await post(start_for_b))  # valid where it belongs
        assert not router.is_opted_out(HANDSET)

        stop_for_b = inbound(b, url_b, "STOP")
        assert await post(stop_for_b, at=url_a) == 403
        assert await post(inbound(b, url_a, "STOP")) == 403
        assert not router.is_opted_out(HANDSET)
        assert [(m.provider, m.keyword) for m in seen] == [
            ("primary", "STOP"),
            ("secondary", "START"),
        ]

        assert accepted(await post(inbound(a, url_a, "STOP")))  # A's own still counts
        assert router.is_opted_out(HANDSET)
        assert accepted(await post(stop_for_b))
        assert [m.provider for m in seen] == ["primary", "secondary", "primary", "secondary"]


# -- 2. providers of different types: inbound ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_inbound_valid_for_one_type_is_refused_at_every_other_types_endpoint(
    hooks: Hooks, kind: str
) -> None:
    """A genuine STOP of a ``kind`` provider, as signed for its own URL or signed for
    the victim's URL, is refused at the inbound URL of a provider of each other type
    (403; 400 or 405 when the victim cannot read it as its own), and opts nobody out.
    At its own URL it is accepted, and each victim still takes its own requests."""
    names = {k: k for k in KINDS}  # each provider named after its type
    async with accounts(hooks, names) as (router, found, seen):
        attacker = found[kind]
        own = inbound(attacker, url(hooks, kind), "STOP")
        answers: dict[str, tuple[int, int]] = {}
        for victim in KINDS:
            if victim == kind:
                continue
            at = url(hooks, victim)
            answers[victim] = (await post(own, at=at), await post(inbound(attacker, at, "STOP")))
        assert {v: a for v, a in answers.items() if not set(a) <= {400, 403, 405}} == {}
        assert not router.is_opted_out(HANDSET)
        assert seen == []

        assert accepted(await post(own))
        assert router.is_opted_out(HANDSET)
        for victim in KINDS:  # every endpoint still takes its own
            assert accepted(await post(inbound(found[victim], url(hooks, victim), "START")))
        assert not router.is_opted_out(HANDSET)
        assert [m.provider for m in seen] == [kind, *KINDS]


# -- 3. an inbound replayed at the status URL -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_inbound_replayed_at_the_status_url_moves_nothing(hooks: Hooks, kind: str) -> None:
    """A's genuine STOP, replayed at A's status URL (as signed for the inbound URL,
    or as signed for the status URL by a console pointing there), is answered 200
    (ignored), 400 or 403, never 5xx, and neither opts the sender out nor moves the
    message sent to that number.  At the inbound URL it then opts the number out, and a genuine
    receipt still moves the message."""
    async with accounts(hooks, {"primary": kind}) as (router, found, seen):
        a = found["primary"]
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(OTP)
        assert (result.ok, result.provider) == (True, "primary")
        status_url = url(hooks, "primary", "status")
        stop = inbound(a, url(hooks, "primary"), "STOP")
        answers = (await post(stop, at=status_url), await post(inbound(a, status_url, "STOP")))
        assert set(answers) <= {200, 400, 403}, answers  # ignored, unreadable or forbidden
        assert not router.is_opted_out(HANDSET)
        assert seen == []
        assert await state_of(router, result.message_id) == "accepted"
        assert reports == []

        assert accepted(await post(stop))
        assert router.is_opted_out(HANDSET)
        receipt = a.fake.receipt_request(a.fake.messages[-1], "delivered", None)
        assert accepted(await post(receipt))
        assert await state_of(router, result.message_id) == "delivered"
        assert [(r.provider, r.status) for r in reports] == [("primary", "delivered")]


# -- 4. two accounts of one type: receipts ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_receipt_signed_by_another_account_of_the_same_type_moves_nothing(
    hooks: Hooks, kind: str
) -> None:
    """A receipt naming a message A sent (A's id for it, our id where the provider
    echoes it), genuinely signed by account B, is refused at A's status URL, as
    delivered and as undelivered (which would resend it): the message stays
    accepted.  At B's own status URL the same receipt passes B's check (2xx) and
    still moves nothing, B did not send that message.  A's own receipt moves it."""
    async with accounts(hooks, {"primary": kind, "secondary": kind}) as (router, found, _):
        a, b = found["primary"], found["secondary"]
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(OTP)
        assert (result.ok, result.provider) == (True, "primary")
        record = a.fake.messages[-1]
        assert record.status_callback is not None
        assert record.status_callback.startswith(url(hooks, "primary", "status"))
        for outcome in ("delivered", "undelivered"):
            assert await post(b.fake.receipt_request(record, outcome, None)) == 403, outcome
            assert await state_of(router, result.message_id) == "accepted", outcome

        at_b = record.status_callback.replace("/primary/status", "/secondary/status", 1)
        for outcome in ("delivered", "undelivered"):
            genuine_for_b = attrs.evolve(record, status_callback=at_b)
            assert accepted(await post(b.fake.receipt_request(genuine_for_b, outcome, None)))
            assert await state_of(router, result.message_id) == "accepted", outcome
        state = await router.status(result.message_id)
        assert state is not None
        assert (state.provider, state.provider_message_id) == (
            "primary",
            record.provider_message_id,
        )
        assert reports == []

        assert accepted(await post(a.fake.receipt_request(record, "delivered", None)))
        assert await state_of(router, result.message_id) == "delivered"
        assert [(r.provider, r.status) for r in reports] == [("primary", "delivered")]
