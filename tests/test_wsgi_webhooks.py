"""Webhooks on WSGI (issue 17): each provider's fake sends its real, signed receipt to
``SyncRouter.wsgi_app()`` served by wsgiref on 127.0.0.1, and the WSGI application
answers every request as the aiohttp ``webhook_app()`` does."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import pytest
from conftest import Hooks, make_config, twilio_block
from provider_support import provider_settings, routing_yaml

from smsroute import DeliveryReport, Message, Router, SyncRouter
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
from smsroute.webhooks import MAX_BODY


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


@contextmanager
def wsgi_server() -> Iterator[tuple[WSGIServer, str]]:
    """A wsgiref server on a free port (its app set later), serving in a thread."""
    server = make_server("127.0.0.1", 0, lambda e, s: [], handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_port}/sms"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# Each vendor: (its fake, given the webhook base URL; its sender; the handset; its
# provider's extra YAML lines, given the fake; extra defaults).
VENDORS: dict[str, tuple[Callable[[str], FakeProvider], str, str, Callable[[Any], list[str]]]] = {
    "twilio": (lambda base: FakeTwilio(), "+15005550006", "+4915123456789", lambda f: []),
    "vonage": (
        lambda base: FakeVonage(signature_secret="9a7c1f0e2b3d4c5e", signature_method="sha256"),
        "Acme",
        "+4915123456789",
        lambda f: [f'signature_secret: "{f.signature_secret}"', "signature_method: sha256"],
    ),
    "plivo": (lambda base: FakePlivo(), "+14155550100", "+4915123456789", lambda f: []),
    "telnyx": (
        lambda base: FakeTelnyx(),
        "+14155550100",
        "+4915123456789",
        lambda f: [f"public_key: {f.public_key}"],
    ),
    "infobip": (
        lambda base: FakeInfobip(callback_username="smsroute", callback_password="s3cret-pw"),
        "InfoSMS",
        "+4915123456789",
        lambda f: ['callback_username: "smsroute"', 'callback_password: "s3cret-pw"'],
    ),
    "sinch": (
        lambda base: FakeSinch(),
        "+15005550006",
        "+4915123456789",
        lambda f: [f'webhook_secret: "{f.webhook_secret}"'],
    ),
    "bandwidth": (
        lambda base: FakeBandwidth(callback_url=f"{base}/bandwidth/status"),
        "+19195551234",
        "+4915123456789",
        lambda f: [
            f'callback_username: "{f.callback_username}"',
            f'callback_password: "{f.callback_password}"',
        ],
    ),
    "messagebird": (
        lambda base: FakeMessageBird(),
        "+15005550006",
        "+31612345678",
        lambda f: [f'signing_key: "{f.signing_key}"'],
    ),
}


@pytest.mark.parametrize("vendor", sorted(VENDORS))
async def test_each_vendors_signed_receipt_reaches_status_through_wsgi(vendor: str) -> None:
    start, sender, handset, extra = VENDORS[vendor]
    with wsgi_server() as (server, base):
        async with start(base) as fake:
            settings = provider_settings(fake, sender, *extra(fake))
            config = make_config(routing_yaml({vendor: settings}, webhook_url=base))
            router = SyncRouter(config, metrics=False)
            server.set_app(router.wsgi_app(prefix="/sms"))
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            try:
                fake.receipts("delivered")
                message = Message(to=handset, text="Your code is 123456", category="otp")
                result = await asyncio.to_thread(router.send, message)
                assert result.ok, result
                async with asyncio.timeout(10):
                    await fake.wait_receipts(1)
                assert fake.receipts_sent == [(result.provider_message_id, "delivered", 200)]
                state = await asyncio.to_thread(router.status, result.message_id)
                assert state is not None
                assert state.status == "delivered"
                assert [(r.message_id, r.status) for r in reports] == [
                    (result.message_id, "delivered")
                ]
                # The same receipt without its signature (or credentials) is refused.
                method, url, headers, body = fake.receipt_request(fake.messages[-1], "failed", None)
                unsigned = {k: v for k, v in headers.items() if k.lower() == "content-type"}
                if vendor == "vonage":  # Vonage signs in the body: its "sig" goes
                    body = json.dumps({**json.loads(body), "sig": "0" * 64}).encode()
                async with (
                    aiohttp.ClientSession() as http,
                    http.request(method, url, headers=unsigned, data=body or None) as answer,
                ):
                    assert answer.status in (401, 403)
                state = await asyncio.to_thread(router.status, result.message_id)
                assert state is not None
                assert state.status == "delivered"
            finally:
                await asyncio.to_thread(router.close)


async def test_inbound_stop_through_wsgi_opts_the_number_out(twilio_a: FakeTwilio) -> None:
    with wsgi_server() as (server, base):
        config = make_config(
            f"defaults:\n  webhook_url: {base}\nproviders:\n{twilio_block('twilio', twilio_a)}\n"
            "rules:\n  - name: default\n    providers: [twilio]\n"
        )
        router = SyncRouter(config, metrics=False)
        server.set_app(router.wsgi_app(prefix="/sms"))
        inbound: list[Any] = []
        router.on_inbound(inbound.append)
        try:
            status = await twilio_a.send_inbound(
                f"{base}/twilio/inbound",
                sender="+4915123456789",
                recipient="+15005550006",
                text="STOP",
            )
            assert status == 200
            assert [m.keyword for m in inbound] == ["STOP"]
            assert router.async_router.is_opted_out("+4915123456789")
        finally:
            await asyncio.to_thread(router.close)


# -- the same answers as the aiohttp application --------------------------------------------


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as written on a socket; the answer's status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def requests(fake: FakeTwilio, base: str) -> dict[str, bytes]:
    """Requests of every kind of answer, each as bytes on the wire (path under /sms)."""
    record_params = f"MessageSid=SM1&MessageStatus=delivered&AccountSid={fake.account_sid}".encode()
    signed: dict[str, bytes] = {}
    _method, _url, headers, body = fake.inbound_request(
        f"{base}/twilio/inbound", "+4915123456789", "+15005550006", "hello"
    )
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    signed["signed inbound"] = (
        f"POST /sms/twilio/inbound HTTP/1.1\r\nHost: x\r\n{lines}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    big = b"a=" + b"b" * MAX_BODY
    zipped = gzip.compress(b"x" * (MAX_BODY + 10))

    def post(path: str, body: bytes, *headers: str) -> bytes:
        extra = "".join(f"{h}\r\n" for h in headers)
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body

    return {
        **signed,
        "unsigned receipt": post("/sms/twilio/status", record_params),
        "forged receipt": post("/sms/twilio/status", record_params, "X-Twilio-Signature: Zm9v"),
        "unknown provider": post("/sms/nope/status", record_params),
        "unknown kind": post("/sms/twilio/other", record_params),
        "PUT": post("/sms/twilio/status", record_params).replace(b"POST", b"PUT", 1),
        "over 64 KiB": post("/sms/twilio/status", big),
        "gzip over 64 KiB": post("/sms/twilio/status", zipped, "Content-Encoding: gzip"),
        "not gzip": post("/sms/twilio/status", b"plain", "Content-Encoding: gzip"),
        "bad host": post("/sms/twilio/status", record_params).replace(
            b"Host: 127.0.0.1", b"Host: 127.0.0.1:99999"
        ),
    }


@pytest.fixture
async def both(hooks: Hooks, twilio_a: FakeTwilio) -> AsyncIterator[tuple[int, int]]:
    """The aiohttp application and the WSGI one, each for a router of the same config
    (no webhook_url: each rebuilds the URL from the request), on their own ports."""
    config = make_config(
        f"providers:\n{twilio_block('twilio', twilio_a)}\n"
        "rules:\n  - name: default\n    providers: [twilio]\n"
    )
    with wsgi_server() as (server, _):
        sync = SyncRouter(config, metrics=False)
        server.set_app(sync.wsgi_app(prefix="/sms"))
        async with Router(config, metrics=False) as router:
            await hooks.serve(router)
            yield hooks.sock.getsockname()[1], server.server_port
        await asyncio.to_thread(sync.close)


async def test_wsgi_answers_as_the_aiohttp_app(both: tuple[int, int], twilio_a: FakeTwilio) -> None:
    aio_port, wsgi_port = both
    answers = {}
    for name, aio_request in requests(twilio_a, f"http://127.0.0.1:{aio_port}/sms").items():
        wsgi_request = requests(twilio_a, f"http://127.0.0.1:{wsgi_port}/sms")[name]
        if name == "signed inbound":  # signed for each server's own URL
            aio_request = aio_request.replace(b"Host: x", f"Host: 127.0.0.1:{aio_port}".encode())
            wsgi_request = wsgi_request.replace(b"Host: x", f"Host: 127.0.0.1:{wsgi_port}".encode())
        aio = await asyncio.to_thread(raw_request, aio_port, aio_request)
        wsgi = await asyncio.to_thread(raw_request, wsgi_port, wsgi_request)
        assert wsgi == aio, name
        answers[name] = aio[0]
    assert answers == {
        "signed inbound": 200,
        "unsigned receipt": 403,
        "forged receipt": 403,
        "unknown provider": 404,
        "unknown kind": 404,
        "PUT": 405,
        "over 64 KiB": 413,
        "gzip over 64 KiB": 413,
        "not gzip": 400,
        "bad host": 400,
    }


async def test_a_resend_runs_between_calls(twilio_a: FakeTwilio, twilio_b: FakeTwilio) -> None:
    """Work the router starts in the background (here the resend an "undelivered"
    receipt triggers) goes on when no call is running: the loop is driven by the
    calling threads while they call, and by the SyncRouter's own thread between calls."""
    twilio_a.receipts("undelivered", error_code=30003)  # unreachable: resend elsewhere
    twilio_b.receipts("delivered")
    with wsgi_server() as (server, base):
        providers = {
            "a": provider_settings(twilio_a, "+15005550006"),
            "b": provider_settings(twilio_b, "+15005550006"),
        }
        text = routing_yaml(providers, webhook_url=base) + "    on_undelivered: resend\n"
        router = SyncRouter(make_config(text), metrics=False)
        server.set_app(router.wsgi_app(prefix="/sms"))
        try:
            message = Message(to="+4915123456789", text="Your code is 123456", category="otp")
            result = await asyncio.to_thread(router.send, message)
            assert result.provider == "a", result
            # The receipt arrives through the WSGI server's thread; the resend it starts
            # outlives that call, and no other call is made until b has the message.
            async with asyncio.timeout(10):
                await twilio_b.wait_receipts(1)
            state = await asyncio.to_thread(router.status, result.message_id)
            assert state is not None
            assert (state.status, state.provider) == ("delivered", "b")
        finally:
            await asyncio.to_thread(router.close)
