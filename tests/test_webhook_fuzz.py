"""Anything a client sends a webhook URL gets a 2xx or 4xx answer, never a 500, and
nothing unsigned changes any state.

Over real sockets, with a raw HTTP/1.1 client (so that a request may carry what
no HTTP library would send: a Host with a bad port, bytes that are not UTF-8 in
a header), against the router's own webhook app.  First the cases of issue 12,
one by one; then, for every provider type with its webhook secret (and, where
the provider can go without one, without it), hypothesis drives its ``status``
and ``inbound`` endpoints with arbitrary methods, headers, queries and bodies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import attrs
import pytest
from conftest import Hooks, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from local_aggregator import LocalAggregator
from provider_support import otp_to, provider_settings, routing_yaml
from test_http_adapter import section as http_section

from smsroute import DeliveryReport, InboundMessage, Router
from smsroute.providers import BUILTIN
from smsroute.providers.base import HttpProvider, WebhookRequest
from smsroute.providers.vonage import sign
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

#: Every answer a webhook may give: never a 5xx.
ALLOWED = {200, 204, 400, 401, 403, 404, 405, 413, 415}
VONAGE_SECRET = "9a7c1f0e2b3d4c5e6f7a8b9c0d1e2f3a"
CALLBACK_USER, CALLBACK_PASSWORD = "smsroute", "callback-password-1"


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------


async def exchange(
    port: int,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
) -> int:
    """Send one request as written, byte for byte, on a fresh connection; the answer's status.

    A ``Host`` is added unless ``headers`` has one; ``Content-Length`` is always ours.
    """
    lines = [method + b" " + target + b" HTTP/1.1"]
    if not any(name.lower() == b"host" for name, _ in headers):
        lines.append(b"Host: 127.0.0.1:%d" % port)
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            # Answered (413) and closed before reading it all: the answer is there.
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
    parts = status_line.split()
    assert len(parts) >= 2, f"no HTTP answer: {status_line!r}"
    assert parts[0].startswith(b"HTTP/1."), f"no HTTP answer: {status_line!r}"
    return int(parts[1])


# -- one provider type, configured for the test ------------------------------------------------


@attrs.frozen
class Case:
    """A provider type: its fake, the YAML lines that give it its webhook secret, the
    headers it signs with, and numbers it accepts."""

    name: str
    start: Callable[[str, bool], FakeProvider]  # (its status URL, secured) -> a fake
    secret: Callable[[Any], list[str]]
    signature_headers: tuple[str, ...]
    sender: str = "+15005550006"
    handset: str = "+4915123456789"
    region: str = "DE"
    #: False when the adapter verifies nothing without a secret (so it runs both ways).
    always_signed: bool = False
    #: False when receipts go where the provider's console says (the fake is told).
    status_callback: bool = True

    def settings(self, fake: FakeProvider, *, secured: bool) -> list[str]:
        if self.name == "http":  # the generic adapter: receipts, inbound and auth in YAML
            assert isinstance(fake, LocalAggregator)
            body = http_section("aggregator", fake)  # webhook_auth: hmac, or none when unsecured
            return [f"{key}: {json.dumps(value)}" for key, value in body.items()]
        if self.name == "vonage":  # signs its own requests with the signature secret
            lines = ["type: vonage", f"base_url: {fake.url}", f'api_key: "{fake.api_key}"']  # type: ignore[attr-defined]
            lines.append("from: Acme")
            return lines + (self.secret(fake) if secured else [f'api_secret: "{fake.api_secret}"'])  # type: ignore[attr-defined]
        return provider_settings(fake, self.sender, *(self.secret(fake) if secured else []))


CASES = [
    Case(
        "twilio",
        lambda url, secured: FakeTwilio(),
        lambda fake: [],  # auth_token, among its credentials, verifies
        ("X-Twilio-Signature", "X-Twilio-Webhooks-Signature-Settings"),
        always_signed=True,
    ),
    Case(
        "vonage",
        lambda url, secured: (
            FakeVonage(signature_secret=VONAGE_SECRET) if secured else FakeVonage()
        ),
        lambda fake: [f'signature_secret: "{VONAGE_SECRET}"', "signature_method: md5hash"],
        ("Authorization",),
        sender="+447700900000",
    ),
    Case(
        "plivo",
        lambda url, secured: FakePlivo(signature_versions=("v2", "v3")),
        lambda fake: [],  # auth_token, among its credentials, verifies
        (
            "X-Plivo-Signature-V2",
            "X-Plivo-Signature-V2-Nonce",
            "X-Plivo-Signature-V3",
            "X-Plivo-Signature-V3-Nonce",
            "X-Plivo-Signature-Ma-V3",
        ),
        sender="+14155550100",
        always_signed=True,
    ),
    Case(
        "telnyx",
        lambda url, secured: FakeTelnyx(),
        lambda fake: [f"public_key: {fake.public_key}"],
        ("telnyx-signature-ed25519", "telnyx-timestamp"),
        sender="+14155550100",
    ),
    Case(
        "infobip",
        lambda url, secured: (
            FakeInfobip(callback_username=CALLBACK_USER, callback_password=CALLBACK_PASSWORD)
            if secured
            else FakeInfobip()
        ),
        lambda fake: [
            f'callback_username: "{CALLBACK_USER}"',
            f'callback_password: "{CALLBACK_PASSWORD}"',
        ],
        ("Authorization",),
        sender="InfoSMS",
    ),
    Case(
        "sinch",
        lambda url, secured: FakeSinch(),
        lambda fake: [f'webhook_secret: "{fake.webhook_secret}"'],
        (
            "x-sinch-webhook-signature",
            "x-sinch-webhook-signature-nonce",
            "x-sinch-webhook-signature-timestamp",
            "x-sinch-webhook-signature-algorithm",
        ),
    ),
    Case(
        "bandwidth",
        lambda url, secured: FakeBandwidth(callback_url=url, callback_auth=secured),
        lambda fake: [
            f'callback_username: "{fake.callback_username}"',
            f'callback_password: "{fake.callback_password}"',
        ],
        ("Authorization",),
        sender="+19195551234",
        status_callback=False,
    ),
    Case(
        "messagebird",
        lambda url, secured: FakeMessageBird(),
        lambda fake: [f'signing_key: "{fake.signing_key}"'],
        ("MessageBird-Signature-JWT",),
        handset="+31612345678",
        region="NL",
    ),
    Case(
        "http",
        lambda url, secured: LocalAggregator(
            "json", "bearer", webhook_auth="hmac" if secured else "none"
        ),
        lambda fake: [],  # its webhook_auth is among its settings
        ("X-Aggregator-Signature", "X-Aggregator-Timestamp"),
    ),
]
BY_NAME = {case.name: case for case in CASES}


@attrs.define
class Rig:
    """A router for one provider, its webhook app on a socket, and one message it sent."""

    case: Case
    secured: bool
    router: Router
    fake: FakeProvider
    hooks: Hooks
    message_id: str
    record: ReceivedMessage
    reports: list[DeliveryReport] = attrs.field(factory=list)
    inbound: list[InboundMessage] = attrs.field(factory=list)

    @property
    def port(self) -> int:
        return int(self.hooks.sock.getsockname()[1])

    def url(self, kind: str) -> str:
        return f"{self.hooks.url}/{self.case.name}/{kind}"

    def genuine(self, kind: str) -> tuple[str, str, dict[str, str], bytes]:
        """A request the provider would really send (signed): a delivery receipt of
        the message, or a STOP from the handset."""
        if kind == "status":
            return self.fake.receipt_request(self.record, "delivered", None)
        return self.fake.inbound_request(
            self.url(kind), self.case.handset, self.case.sender, "STOP"
        )

    async def status(self) -> str:
        state = await self.router.status(self.message_id)
        assert state is not None
        return state.status


@asynccontextmanager
async def rig(case: Case, *, secured: bool) -> AsyncIterator[Rig]:
    """``case``'s provider with (or without) its webhook secret, receipts sent to our
    socket by its ``status_callback`` (no ``defaults.webhook_url``: each request's
    URL is rebuilt from its own Host header)."""
    hooks = Hooks()
    try:
        status_url = f"{hooks.url}/{case.name}/status"
        async with case.start(status_url, secured) as fake:
            lines = case.settings(fake, secured=secured)
            if case.status_callback:
                lines.append(f"status_callback: {status_url}")
            config = make_config(routing_yaml({case.name: lines}, default_region=case.region))
            async with Router(config) as router:
                await hooks.serve(router)
                result = await router.send(otp_to(case.handset))
                assert result.ok, result
                record = fake.messages[-1]
                it = Rig(case, secured, router, fake, hooks, result.message_id, record)
                router.on_delivery_report(it.reports.append)
                router.on_inbound(it.inbound.append)
                yield it
    finally:
        await hooks.close()


# -- the cases of the issue, one by one --------------------------------------------------------


async def test_a_host_with_a_bad_port_is_a_400_not_a_500() -> None:
    async with rig(BY_NAME["telnyx"], secured=True) as r:
        for host in (b"x:99999", b"x:abc", b"127.0.0.1:65536"):
            target = b"/sms/telnyx/status"
            status = await exchange(r.port, b"POST", target, [(b"Host", host)], b"{}")
            assert status == 400, host
        assert await r.status() == "accepted"


async def test_a_telnyx_timestamp_of_400_digits_is_refused_not_a_500() -> None:
    async with rig(BY_NAME["telnyx"], secured=True) as r:
        _, url, headers, body = r.genuine("status")
        headers = {**headers, "telnyx-timestamp": "9" * 400}
        status = await exchange(r.port, b"POST", path(url), encode(headers), body)
        assert status == 403
        assert await r.status() == "accepted"


async def test_a_vonage_timestamp_of_400_digits_is_refused_not_a_500() -> None:
    async with rig(BY_NAME["vonage"], secured=True) as r:
        _, url, headers, body = r.genuine("status")
        doc = json.loads(body)
        doc["timestamp"] = "9" * 400
        doc["sig"] = sign({k: str(v) for k, v in doc.items()}, VONAGE_SECRET)
        status = await exchange(
            r.port, b"POST", path(url), encode(headers), json.dumps(doc).encode()
        )
        assert status == 403
        assert await r.status() == "accepted"


@pytest.mark.parametrize("secured", [True, False], ids=["signed", "unsigned"])
async def test_a_lone_surrogate_in_vonage_json_is_a_400_not_a_500(secured: bool) -> None:
    async with rig(BY_NAME["vonage"], secured=secured) as r:
        _, url, headers, body = r.genuine("inbound")
        doc = json.loads(body)
        doc["text"] = "STOP \ud800"
        doc["timestamp"] = str(int(time.time()))
        doc.pop("sig", None)
        if secured:  # fresh and signed-looking: the check gets as far as the signature
            doc["sig"] = "0" * 32
        raw = json.dumps(doc).encode()  # ensure_ascii: "\ud800" stays an escape
        assert b"\\ud800" in raw
        status = await exchange(r.port, b"POST", path(url), encode(headers), raw)
        assert status == 400
        assert r.inbound == []
        assert not r.router.is_opted_out(r.case.handset)


async def test_basic_auth_that_is_not_ascii_is_refused_on_infobip_not_a_500() -> None:
    async with rig(BY_NAME["infobip"], secured=True) as r:
        _, url, headers, body = r.genuine("status")
        for value in (
            "Basic é".encode(),
            b"Basic \xff\xfe",
            b"Basic " + base64.b64encode(b"\xff:\xfe"),
        ):
            sent = [*encode({k: v for k, v in headers.items() if k != "Authorization"})]
            status = await exchange(
                r.port, b"POST", path(url), [*sent, (b"Authorization", value)], body
            )
            assert status == 403, value
        assert await r.status() == "accepted"


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_is_not_its_content_encoding_is_a_400_not_a_500(
    encoding: bytes,
) -> None:
    # Found by the property below: aiohttp raises reading such a body.
    async with rig(BY_NAME["vonage"], secured=False) as r:
        _, url, headers, body = r.genuine("inbound")
        sent = [*encode(headers), (b"Content-Encoding", encoding)]
        assert await exchange(r.port, b"POST", path(url), sent, body) == 400
        assert r.inbound == []


class BrokenVerifier(HttpProvider):
    """A third-party adapter whose signature check has a bug: it raises on any request."""

    type_name = "broken"
    webhook_methods = {"status": frozenset({"POST"}), "inbound": frozenset({"POST"})}

    def build_request(self, sms: Any) -> Any:
        raise NotImplementedError("sends nothing: only its webhooks are under test")

    def parse_response(self, status: int, headers: Any, body: bytes) -> Any:
        raise NotImplementedError("sends nothing: only its webhooks are under test")

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        int(request.headers.get("X-Broken-Timestamp", "x"))  # ValueError: the bug

    def parse_inbound(self, request: WebhookRequest) -> list[Any]:
        raise AssertionError("never reached: the request was not verified")


async def test_an_adapter_whose_check_raises_answers_403_and_lets_nothing_in(
    monkeypatch: pytest.MonkeyPatch, hooks: Hooks
) -> None:
    monkeypatch.setitem(BUILTIN, "broken", f"{__name__}:BrokenVerifier")
    config = make_config(routing_yaml({"acme": ["type: broken"]}))
    async with Router(config) as router:
        inbound: list[InboundMessage] = []
        router.on_inbound(inbound.append)
        await hooks.serve(router)
        port = hooks.sock.getsockname()[1]
        status = await exchange(port, b"POST", b"/sms/acme/inbound", [], b"From=1&To=2&Body=STOP")
        assert status == 403
        assert inbound == []


# -- hypothesis: every provider, both endpoints, anything at all -------------------------------


def path(url: str) -> bytes:
    parts = urlsplit(url)
    return (parts.path + (f"?{parts.query}" if parts.query else "")).encode()


def encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


def _clean(raw: bytes) -> bytes:
    """Header or request-target bytes: anything but what ends a line or a field."""
    return bytes(b for b in raw if b not in b"\r\n\0")


ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.sampled_from(
        [
            "",
            "é",
            "9" * 400,
            "-1",
            "1e400",
            "NaN",
            "Infinity",
            "\uff11\uff12\uff13",
            "\u202e",
            "STOP",
            "0" * 13,
        ]
    ),
)
ODD_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**450), max_value=10**450),
        st.floats(allow_nan=True, allow_infinity=True),
        ODD_TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
HEADER_VALUE = st.one_of(
    st.binary(max_size=60).map(_clean),
    ODD_TEXT.map(lambda s: _clean(s.encode("utf-8", "surrogatepass"))),
    st.sampled_from(
        [
            b"Basic \xc3\xa9",
            b"Basic ",
            b"Basic " + base64.b64encode(b"\xff:\xfe"),
            b"Basic " + base64.b64encode(f"{CALLBACK_USER}:wrong".encode()),
            b"Bearer a.b.c",
            b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJpYXQiOjFlNDAwfQ.x",
            b"9" * 400,
            b"algorithm=HMAC_SHA512",
            b"AAAA" * 22,
        ]
    ),
)
HOST = st.one_of(
    st.sampled_from(
        [b"x:99999", b"x:abc", b"[::1", b"a b", b"\xc3\xa9", b"", b"127.0.0.1:0", b"h:-1", b"u@h"]
    ),
    st.binary(max_size=20).map(_clean),
)
CONTENT_TYPE = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=latin-1",
        b"application/x-www-form-urlencoded",
        b"text/plain",
        b"multipart/form-data; boundary=x",
        b"\xff",
    ]
)
CONTENT_ENCODING = st.sampled_from([b"gzip", b"deflate", b"br", b"identity", b"gzip, deflate"])
HEADER_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection", "expect")
)
METHOD = st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"X1"])
RAW_QUERY = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x23))
PERCENT_ODD = st.sampled_from(["%ED%A0%80", "%FF", "%", "%zz", "%C3"])


def fields_of(body: bytes) -> dict[str, Any]:
    """The top-level fields of a genuine body (a JSON object, or a form)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    if isinstance(doc, dict):
        return doc
    return {"0": doc}


@st.composite
def requests(
    draw: st.DrawFn, r: Rig, kind: str
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """(method, target, headers, body): around the provider's own request (its fields,
    its headers, its URL), with anything at all in place of any part of it, and never
    its signature."""
    _, url, genuine_headers, genuine_body = r.genuine(kind)
    fields = fields_of(genuine_body or urlsplit(url).query.encode())
    fields.pop("sig", None)  # Vonage signs inside the body: an unsigned copy
    odd = draw(
        st.dictionaries(st.sampled_from([*fields, "timestamp", "sig"]), ODD_JSON, max_size=3)
    )
    body = draw(
        st.one_of(
            st.just(json.dumps(fields).encode()),
            st.just(json.dumps({**fields, **odd}).encode()),  # NaN, 10**450, "\ud800"...
            st.just(urlencode({k: str(v) for k, v in fields.items()}).encode()),
            st.lists(
                st.tuples(
                    st.sampled_from([*fields, "timestamp"]),
                    st.one_of(
                        ODD_TEXT.map(lambda s: quote(s, errors="surrogatepass")), PERCENT_ODD
                    ),
                ),
                max_size=4,
            ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode()),
            st.binary(max_size=200),
            st.sampled_from([b"", b"[" * 3000, b"9" * 400, b"{}", b"x" * (64 * 1024 + 1)]),
        )
    )
    query = draw(
        st.one_of(
            st.just(urlsplit(url).query.encode()),
            st.just(b""),
            RAW_QUERY,
            st.dictionaries(
                st.sampled_from([*fields, "smsroute_id", "sig"]), ODD_TEXT, max_size=3
            ).map(
                lambda d: "&".join(
                    f"{quote(k)}={quote(v, errors='surrogatepass')}" for k, v in d.items()
                ).encode()
            ),
        )
    )
    target = urlsplit(url).path.encode() + (b"?" + query if query else b"")
    kept = {
        k: v
        for k, v in genuine_headers.items()
        if k.lower() not in {h.lower() for h in r.case.signature_headers} and draw(st.booleans())
    }
    headers = encode(kept)
    names = [*r.case.signature_headers, "Authorization", "Content-Type", "Content-Encoding"]
    extra = draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from(names), HEADER_NAME).map(str.encode), HEADER_VALUE),
            max_size=5,
        )
    )
    headers += extra
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(CONTENT_TYPE)))
    if draw(st.integers(0, 4)) == 0:
        headers.append((b"Host", draw(HOST)))
    if draw(st.integers(0, 4)) == 0:
        headers.append((b"Content-Encoding", draw(CONTENT_ENCODING)))
    return draw(METHOD), target, headers, body


FUZZ = [(case.name, True) for case in CASES] + [
    (case.name, False) for case in CASES if not case.always_signed
]


@pytest.fixture(params=FUZZ, ids=[f"{n}-{'signed' if s else 'unsigned'}" for n, s in FUZZ])
async def fuzzed(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """One rig for all of a test's examples: its server, router and message are reused."""
    name, secured = request.param
    async with rig(BY_NAME[name], secured=secured) as r:
        yield r


@pytest.mark.parametrize("kind", ["status", "inbound"])
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    # The rig is made once per test on purpose; each example checks it is unchanged.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_any_request_gets_a_2xx_or_4xx_and_nothing_unsigned_changes_state(
    fuzzed: Rig, kind: str, data: st.DataObject
) -> None:
    r = fuzzed
    method, target, headers, body = data.draw(requests(r, kind))
    status = await exchange(r.port, method, target, headers, body)
    assert status in ALLOWED
    if r.secured:
        # Nothing drawn is validly signed: refused, and nothing changed.
        assert status >= 400
        assert await r.status() == "accepted"
        assert r.reports == []
        assert r.inbound == []
        assert not r.router.is_opted_out(r.case.handset)


@pytest.mark.parametrize("kind", ["status", "inbound"])
@pytest.mark.parametrize("name", [case.name for case in CASES])
async def test_the_rig_accepts_the_providers_own_signed_requests(name: str, kind: str) -> None:
    """What gives the property above its teeth: with the same setup, the genuine
    request (a receipt of the known message, a STOP from the handset) is accepted
    and changes exactly what the fuzzed ones must not."""
    async with rig(BY_NAME[name], secured=True) as r:
        method, url, headers, body = r.genuine(kind)
        status = await exchange(r.port, method.encode(), path(url), encode(headers), body)
        assert status == 200
        if kind == "status":
            assert await r.status() == "delivered"
            assert [report.status for report in r.reports] == ["delivered"]
        else:
            assert [m.keyword for m in r.inbound] == ["STOP"]
            assert r.router.is_opted_out(r.case.handset)
