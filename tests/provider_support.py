"""Helpers shared by the provider tests: adapters against their fakes, and webhooks.

Imported as ``from provider_support import ...`` (pytest puts tests/ on sys.path).
What every provider's tests do the same way is here, once: run a fake, point an
adapter or a config at it, send, capture the exchange, wait for a receipt, opt a
number out.  What is particular to one provider (its numbers, its spec's server,
its payloads, what its tests assert) stays in that provider's test module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import pytest
import yaml
from conftest import Hooks, call, make_config, reaches, state_of
from multidict import CIMultiDict, CIMultiDictProxy
from openapi_core.testing import MockRequest, MockResponse

from smsroute import Config, DeliveryReport, InboundMessage, Message, Outcome, Router, SendResult
from smsroute.config import ProviderConfig
from smsroute.encoding import analyze
from smsroute.providers.base import HttpProvider, OutboundSMS, Reply
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
    ReceivedMessage,
)

OUR_MESSAGE_ID = "0123456789abcdef0123456789abcdef"

P = TypeVar("P", bound=HttpProvider)
E = TypeVar("E", bound="Exchange")
F = TypeVar("F", bound=FakeProvider)


# -- the fakes, and what points at them --------------------------------------------------------

# Each fake: the provider ``type`` it stands for, and its attributes that are that
# provider's credentials (named as the config and the adapter's options name them).
FAKES: dict[type[FakeProvider], tuple[str, tuple[str, ...]]] = {
    FakeBandwidth: ("bandwidth", ("account_id", "username", "password", "application_id")),
    FakeInfobip: ("infobip", ("api_key",)),
    FakeMessageBird: ("messagebird", ("access_key",)),
    FakePlivo: ("plivo", ("auth_id", "auth_token")),
    FakeSinch: ("sinch", ("service_plan_id", "api_token")),
    FakeTelnyx: ("telnyx", ("api_key",)),
    FakeTwilio: ("twilio", ("account_sid", "auth_token")),
    FakeVonage: ("vonage", ("api_key", "api_secret")),
}


def fake_fixture(start: Callable[[], F]) -> Any:
    """A fixture giving each test its own running ``start()`` fake, stopped after it.

    pytest names it after the module attribute it is bound to, as in
    ``fake = fake_fixture(FakeSinch)``.
    """

    async def running() -> AsyncIterator[F]:
        async with start() as fake:
            yield fake

    return pytest.fixture(running)


def credentials(fake: FakeProvider) -> dict[str, Any]:
    """The options that authenticate with ``fake``, by their option names."""
    _, names = FAKES[type(fake)]
    return {name: getattr(fake, name) for name in names}


def provider_settings(fake: FakeProvider, sender: str | None, *extra: str) -> list[str]:
    """The YAML lines of a provider pointed at ``fake``: its type, base_url and
    credentials, ``from: sender`` when there is one, then the ``extra`` lines."""
    kind, _ = FAKES[type(fake)]
    lines = [f"type: {kind}", f"base_url: {fake.url}"]
    lines += [f'{name}: "{value}"' for name, value in credentials(fake).items()]
    if sender is not None:
        lines.append(f'from: "{sender}"')
    return [*lines, *extra]


# -- one adapter against its fake ------------------------------------------------------------


def outbound_sms(
    text: str = "Your code is 123456",
    *,
    to: str,
    country: str,
    sender: str | None,
    status_callback: str | None = None,
    message_id: str = OUR_MESSAGE_ID,
    attempt: int = 1,
) -> OutboundSMS:
    """An OTP as the router hands it to an adapter, encoding and segments as analysed.

    Each module binds its own number, country and sender with ``functools.partial``.
    """
    info = analyze(text)
    return OutboundSMS(
        message_id=message_id,
        to=to,
        country=country,
        text=text,
        sender=sender,
        encoding=info.encoding,
        segments=info.segments,
        category="otp",
        attempt=attempt,
        status_callback=status_callback,
    )


def adapter(
    kind: type[P],
    fake: FakeProvider,
    options: Mapping[str, Any],
    *,
    sender: str | None,
    name: str | None = None,
) -> P:
    """A ``kind`` adapter pointed at ``fake``: its credentials, with ``options`` over them."""
    return kind(
        ProviderConfig(
            name=name or kind.type_name,
            type=kind.type_name,
            base_url=fake.url,
            sender=sender,
            options={**credentials(fake), **options},
        )
    )


async def send_sms(provider: HttpProvider, sms: OutboundSMS) -> Reply:
    """``sms`` through the adapter's own ``send``, on a session of its own."""
    async with aiohttp.ClientSession() as session:
        return await provider.send(sms, session)


async def send_sms_captured(provider: HttpProvider, sms: OutboundSMS, wire: E) -> tuple[E, Reply]:
    """``send_sms``, with both directions of the exchange captured in ``wire``."""
    async with aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session:
        reply = await provider.send(sms, session)
    return wire, reply


def http_headers(**values: str) -> CIMultiDictProxy[str]:
    """Headers as an adapter's ``parse_response`` is given them."""
    return CIMultiDictProxy(CIMultiDict(values))


@attrs.define
class Exchange:
    """One request/response pair as it crossed the socket (aiohttp tracing).

    The bytes validated against a spec are the bytes sent.  Each provider's
    module subclasses it with ``spec_request``: the request as if sent to the
    spec's own server.
    """

    method: str = ""
    url: str = ""
    request_headers: CIMultiDict[str] = attrs.field(factory=CIMultiDict)
    request_body: bytes = b""
    status: int = 0
    response_headers: CIMultiDict[str] = attrs.field(factory=CIMultiDict)
    response_body: bytes = b""

    def trace_config(self) -> aiohttp.TraceConfig:
        async def headers_sent(_s: Any, _c: Any, p: aiohttp.TraceRequestHeadersSentParams) -> None:
            self.method, self.url = p.method, str(p.url)
            self.request_headers = CIMultiDict(p.headers)

        async def chunk_sent(_s: Any, _c: Any, p: aiohttp.TraceRequestChunkSentParams) -> None:
            self.request_body += p.chunk

        async def request_end(_s: Any, _c: Any, p: aiohttp.TraceRequestEndParams) -> None:
            self.status, self.response_headers = p.response.status, CIMultiDict(p.response.headers)

        async def chunk_received(
            _s: Any, _c: Any, p: aiohttp.TraceResponseChunkReceivedParams
        ) -> None:
            self.response_body += p.chunk

        tc = aiohttp.TraceConfig()
        tc.on_request_headers_sent.append(headers_sent)
        tc.on_request_chunk_sent.append(chunk_sent)
        tc.on_request_end.append(request_end)
        tc.on_response_chunk_received.append(chunk_received)
        return tc

    def request_to(self, server: str, path: str, method: str | None = None) -> MockRequest:
        """The captured request for openapi-core, as if sent to ``server`` at ``path``."""
        return MockRequest(
            server,
            method or self.method,
            path,
            headers=dict(self.request_headers),
            data=self.request_body,
            content_type=self.request_headers.get("Content-Type", ""),
        )

    def request_moved(self, server: str, base_url: str) -> MockRequest:
        """As if sent to ``server`` instead of ``base_url`` (the fake's): the same path."""
        assert self.url.startswith(base_url + "/"), self.url
        return self.request_to(server, self.url.removeprefix(base_url))

    def spec_response(self) -> MockResponse:
        return MockResponse(
            self.response_body,
            status_code=self.status,
            headers=dict(self.response_headers),
            content_type=self.response_headers.get("Content-Type", ""),
        )

    def json(self) -> Any:
        return json.loads(self.response_body)


def load_spec(path: Path) -> dict[str, Any]:
    """A published spec (JSON or YAML) from tests/specs (vendored: a missing one is a failure)."""
    text = path.read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return doc


# -- configs and the router --------------------------------------------------------------------


def routing_yaml(providers: Mapping[str, Sequence[str]], **defaults: object) -> str:
    """A config of ``providers`` (name: its YAML lines), tried in order by one rule.

    ``defaults`` become the ``defaults:`` section, in the order given.
    """
    lines = ["defaults:", *(f"  {k}: {v}" for k, v in defaults.items())] if defaults else []
    lines.append("providers:")
    for name, settings in providers.items():
        lines += [f"  {name}:", *(f"    {line}" for line in settings)]
    lines += ["rules:", "  - name: default", f"    providers: [{', '.join(providers)}]"]
    return "\n".join(lines) + "\n"


def failover_yaml(
    a: FakeProvider,
    b: FakeProvider,
    sender: str,
    *extra: str,
    names: tuple[str, str] = ("primary", "secondary"),
    **defaults: object,
) -> str:
    """Providers pointed at ``a`` then ``b`` (300 ms timeouts, then ``extra`` lines each),
    tried in that order by one rule."""
    first, second = names
    lines = ("timeout: 300ms", *extra)
    providers = {
        first: provider_settings(a, sender, *lines),
        second: provider_settings(b, sender, *lines),
    }
    return routing_yaml(providers, **defaults)


def attempts(result: SendResult) -> list[tuple[str, Outcome]]:
    """Each provider tried for ``result``, in order, with what it answered."""
    return [(a.provider, a.outcome) for a in result.attempts]


async def route(config_text: str, message: Message, **router_options: Any) -> SendResult:
    """``message`` sent once through a router built from ``config_text``."""
    async with Router(make_config(config_text), **router_options) as router:
        return await router.send(message)


def otp_to(number: str) -> Message:
    return Message(to=number, text="Your code is 123456", category="otp")


def promo_to(number: str) -> Message:
    return Message(to=number, text="Sale!", category="marketing")


# -- webhooks: a fake calling the router over real sockets -------------------------------------


@asynccontextmanager
async def serving(hooks: Hooks, config: Config, **router_options: Any) -> AsyncIterator[Router]:
    """A router for ``config``, its webhook app served on ``hooks`` while it runs."""
    async with Router(config, **router_options) as router:
        await hooks.serve(router)
        yield router


async def sent_record(
    router: Router, fake: FakeProvider, message: Message
) -> tuple[str, ReceivedMessage]:
    """Send ``message``: our id and what the fake recorded of it."""
    result = await router.send(message)
    assert result.ok
    record = fake.messages[-1]
    assert record.provider_message_id == result.provider_message_id
    return result.message_id, record


async def receipt_round_trip(
    router: Router,
    fake: FakeProvider,
    message: Message,
    outcome: str = "delivered",
    error_code: Any = None,
) -> tuple[SendResult, list[DeliveryReport]]:
    """Send ``message`` with ``fake`` set to report ``outcome`` on it; once that receipt
    was answered, the send's result and the delivery reports the router gave."""
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    fake.receipts(outcome, error_code=error_code)
    result = await router.send(message)
    async with asyncio.timeout(5):
        await fake.wait_receipts(1)
    return result, reports


async def delivered_round_trip(
    router: Router, fake: FakeProvider, message: Message
) -> tuple[SendResult, list[DeliveryReport]]:
    """``receipt_round_trip`` of a delivery: answered 200, and the message is delivered."""
    result, reports = await receipt_round_trip(router, fake, message)
    assert fake.receipts_sent == [(result.provider_message_id, "delivered", 200)]
    assert await state_of(router, result.message_id) == "delivered"
    return result, reports


async def assert_failed_receipt_classified(
    router: Router,
    fake: FakeProvider,
    message: Message,
    outcome: str,
    error_code: Any,
    expected: tuple[str, str | None, bool | None],
) -> None:
    """The report of an ``outcome`` receipt is ``expected`` (status, error code, retryable)."""
    result, reports = await receipt_round_trip(router, fake, message, outcome, error_code)
    assert [(r.status, r.error_code, r.retryable) for r in reports] == [expected]
    assert await state_of(router, result.message_id) == expected[0]


async def assert_early_receipt_correlated(
    router: Router, fake: FakeProvider, message: Message
) -> None:
    """A receipt that beats the send's own answer is parked, then applied."""
    fake.receipts("delivered", before_answer=True)
    result = await router.send(message)
    assert fake.receipts_sent == [(result.provider_message_id, "delivered", 200)]
    async with asyncio.timeout(5):
        await reaches(router, result.message_id, "delivered")


async def assert_stop_opts_out_marketing_not_otp(
    router: Router,
    fake: FakeProvider,
    url: str,
    *,
    sender: str,
    recipient: str,
    text: str,
    opted_out: str | None = None,
) -> list[InboundMessage]:
    """An inbound STOP (as ``text``) from ``sender`` posted to ``url``: the number is
    opted out (as written ``opted_out``), a marketing send to it is refused without
    calling any provider, and an OTP to it still goes.  The inbound messages seen."""
    inbound: list[InboundMessage] = []
    router.on_inbound(inbound.append)
    status = await fake.send_inbound(url, sender=sender, recipient=recipient, text=text)
    assert status == 200
    assert inbound[0].keyword == "STOP"
    assert router.is_opted_out(opted_out or sender)
    sent_before = fake.requests
    refused = await router.send(promo_to(sender))
    assert (refused.status, refused.reason, refused.outcome) == (
        "failed",
        "opted_out",
        Outcome.REJECTED,
    )
    assert fake.requests == sent_before  # no provider was called
    assert (await router.send(otp_to(sender))).ok
    return inbound


async def assert_events_at_the_other_url_ignored(
    router: Router, fake: FakeProvider, base: str, *, handset: str, our_number: str
) -> None:
    """A receipt posted to ``{base}/inbound`` and an inbound STOP posted to
    ``{base}/status`` are answered 200 (else the provider retries) and change nothing."""
    message_id, record = await sent_record(router, fake, otp_to(handset))
    _, _, headers, body = fake.receipt_request(record, "delivered", None)
    assert await call("POST", f"{base}/inbound", headers, body) == 200
    assert await state_of(router, message_id) == "accepted"
    _, _, headers, body = fake.inbound_request(f"{base}/status", handset, our_number, "STOP")
    assert await call("POST", f"{base}/status", headers, body) == 200
    assert not router.is_opted_out(handset)
