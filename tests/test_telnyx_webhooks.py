"""Telnyx delivery updates and inbound messages over real sockets.

FakeTelnyx calls the router's webhook app on 127.0.0.1 with Telnyx's v2 events
(``message.sent``, ``message.finalized``, ``message.received``), signed as
Telnyx signs them: Ed25519 over ``"{telnyx-timestamp}|{body}"``.

Telnyx's SDK ships no signing helper (only Telnyx holds the private key), so
the signature is checked against two independent references: the official
SDK's verifier (``telnyx.lib.webhook_verification``, on PyNaCl) accepts what
the fake signs and refuses it with one byte changed; and a request signed by
PyNaCl (libsodium, not the OpenSSL that ``cryptography`` uses) is accepted by
the adapter.  The fake's payloads are parsed with the SDK's own event models.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Hooks, call, make_config, state_of
from provider_support import (
    assert_early_receipt_correlated,
    assert_events_at_the_other_url_ignored,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    fake_fixture,
    otp_to,
    provider_settings,
    routing_yaml,
    sent_record,
    serving,
)

from smsroute import ConfigError, DeliveryReport, Router
from smsroute.testing.telnyx import FakeTelnyx

SENDER = "+14155550100"
NUMBER = "+4915123456789"
OTP = otp_to(NUMBER)


fake = fake_fixture(FakeTelnyx)


def config_text(hooks: Hooks, fake: FakeTelnyx, public_key: str | None) -> str:
    key = [f"public_key: {public_key}"] if public_key is not None else []
    settings = provider_settings(fake, SENDER, *key)
    return routing_yaml({"telnyx": settings}, webhook_url=hooks.url)


@pytest.fixture
async def router(hooks: Hooks, fake: FakeTelnyx) -> AsyncIterator[Router]:
    async with serving(hooks, make_config(config_text(hooks, fake, fake.public_key))) as r:
        yield r


def one_byte_changed(body: bytes) -> bytes:
    at = body.index(b'"delivered"') + 2 if b'"delivered"' in body else len(body) // 2
    return body[:at] + bytes([body[at] ^ 0x20]) + body[at + 1 :]


# -- the whole loop over sockets ---------------------------------------------------------------


async def test_signed_receipt_is_accepted_and_updates_status(
    router: Router, fake: FakeTelnyx
) -> None:
    result, reports = await delivered_round_trip(router, fake, OTP)
    (report,) = reports
    assert (report.message_id, report.provider, report.status) == (
        result.message_id,
        "telnyx",
        "delivered",
    )
    # The status URL carries our id: Telnyx echoes no client reference.
    assert f"smsroute_id={result.message_id}" in (fake.messages[0].status_callback or "")


async def test_receipt_arriving_before_send_returns_is_correlated(
    router: Router, fake: FakeTelnyx
) -> None:
    await assert_early_receipt_correlated(router, fake, OTP)


async def test_message_sent_then_finalized_moves_forward(router: Router, fake: FakeTelnyx) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    for status in ("sent", "delivered", "sent"):  # the late message.sent changes nothing
        assert await fake.send_receipt(record, status) == 200
    state = await router.status(message_id)
    assert state is not None
    assert [h[0] for h in state.history] == ["accepted", "sent", "delivered"]


async def test_undelivered_receipt_carries_the_error_and_whether_to_retry(
    router: Router, fake: FakeTelnyx
) -> None:
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    _, first = await sent_record(router, fake, OTP)
    _, second = await sent_record(router, fake, OTP)
    assert await fake.send_receipt(first, "undelivered", "40006") == 200  # carrier down
    assert await fake.send_receipt(second, "undelivered", "40001") == 200  # a landline
    assert [(r.status, r.error_code, r.retryable) for r in reports] == [
        ("undelivered", "40006", True),
        ("undelivered", "40001", False),
    ]


async def test_sending_failed_is_failed(router: Router, fake: FakeTelnyx) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    assert await fake.send_receipt(record, "failed") == 200
    assert await state_of(router, message_id) == "failed"


async def test_a_retried_event_is_processed_once(router: Router, fake: FakeTelnyx) -> None:
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    _, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    for _ in range(3):  # Telnyx retries the same event (same data.id)
        assert await call("POST", url, headers, body) == 200
    assert len(reports) == 1


# -- signatures ---------------------------------------------------------------------------------


async def test_one_byte_changed_is_refused_and_changes_nothing(
    router: Router, fake: FakeTelnyx
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    forged = one_byte_changed(body)
    assert forged != body
    assert await call("POST", url, headers, forged) == 403
    assert await state_of(router, message_id) == "accepted"


async def test_unsigned_receipt_is_refused(router: Router, fake: FakeTelnyx) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    assert await call("POST", url, {"Content-Type": "application/json"}, body) == 403
    without_stamp = {k: v for k, v in headers.items() if k != "telnyx-timestamp"}
    assert await call("POST", url, without_stamp, body) == 403
    assert await state_of(router, message_id) == "accepted"


async def test_signature_with_a_changed_timestamp_is_refused(
    router: Router, fake: FakeTelnyx
) -> None:
    _, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    moved = {**headers, "telnyx-timestamp": str(int(headers["telnyx-timestamp"]) - 1)}
    assert await call("POST", url, moved, body) == 403  # the timestamp is signed too


@pytest.mark.parametrize(("offset", "answer"), [(-301, 403), (301, 403), (-290, 200)])
async def test_timestamp_tolerance_is_300_seconds(
    router: Router, fake: FakeTelnyx, offset: int, answer: int
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    stale = {**headers, **fake.sign(body, int(time.time()) + offset)}
    assert await call("POST", url, stale, body) == answer
    assert await state_of(router, message_id) == ("delivered" if answer == 200 else "accepted")


async def test_signed_with_another_key_is_refused(router: Router, fake: FakeTelnyx) -> None:
    _, record = await sent_record(router, fake, OTP)
    async with FakeTelnyx() as other:  # another account's key
        _, url, _, body = fake.receipt_request(record, "delivered", None)
        headers = {"Content-Type": "application/json", **other.sign(body)}
    assert await call("POST", url, headers, body) == 403


async def test_signature_that_is_not_base64_is_refused(router: Router, fake: FakeTelnyx) -> None:
    _, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    assert (
        await call("POST", url, {**headers, "telnyx-signature-ed25519": "not base64!"}, body) == 403
    )


async def test_without_a_public_key_webhooks_are_accepted_unverified(
    hooks: Hooks, fake: FakeTelnyx
) -> None:
    async with serving(hooks, make_config(config_text(hooks, fake, None))) as router:
        message_id, record = await sent_record(router, fake, OTP)
        _, url, _, body = fake.receipt_request(record, "delivered", None)
        assert await call("POST", url, {"Content-Type": "application/json"}, body) == 200
        assert await state_of(router, message_id) == "delivered"


def test_a_public_key_that_is_not_ed25519_is_a_config_error(hooks: Hooks, fake: FakeTelnyx) -> None:
    short = base64.b64encode(b"x" * 31).decode()
    for bad in (short, "not-base64!"):
        with pytest.raises(ConfigError, match="public_key"):
            make_config(config_text(hooks, fake, f'"{bad}"'))


# -- the official SDK's verifier, and an independent signer -------------------------------------


async def test_the_sdks_verifier_accepts_the_fakes_signature_and_refuses_a_changed_byte(
    router: Router, fake: FakeTelnyx
) -> None:
    pytest.importorskip("nacl")  # the SDK verifies with PyNaCl (extra telnyx[webhooks])
    verification = pytest.importorskip("telnyx.lib.webhook_verification")
    _, record = await sent_record(router, fake, OTP)
    for _, _, headers, body in (
        fake.receipt_request(record, "delivered", None),
        fake.inbound_request(f"{fake.url}/in", NUMBER, SENDER, "STOP"),
    ):
        verification.verify_webhook_signature(body, headers, fake.public_key)
        with pytest.raises(verification.WebhookVerificationError):
            verification.verify_webhook_signature(one_byte_changed(body), headers, fake.public_key)
    assert verification.SIGNATURE_HEADER == "telnyx-signature-ed25519"
    assert verification.TIMESTAMP_HEADER == "telnyx-timestamp"
    assert verification.TIMESTAMP_TOLERANCE_SECONDS == 300


async def test_a_request_signed_by_libsodium_is_accepted(hooks: Hooks, fake: FakeTelnyx) -> None:
    signing = pytest.importorskip("nacl.signing")
    key = signing.SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    async with serving(hooks, make_config(config_text(hooks, fake, public))) as router:
        message_id, record = await sent_record(router, fake, OTP)
        _, url, _, body = fake.receipt_request(record, "delivered", None)
        stamp = str(int(time.time()))
        signature = key.sign(f"{stamp}|".encode() + body).signature
        headers = {
            "Content-Type": "application/json",
            "telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        }
        assert await call("POST", url, headers, one_byte_changed(body)) == 403
        assert await call("POST", url, headers, body) == 200
        assert await state_of(router, message_id) == "delivered"


async def test_the_fakes_events_parse_with_the_sdks_models(
    router: Router, fake: FakeTelnyx
) -> None:
    pytest.importorskip("telnyx")
    from telnyx.types.delivery_update_webhook_event import DeliveryUpdateWebhookEvent
    from telnyx.types.inbound_message_webhook_event import InboundMessageWebhookEvent
    from telnyx.types.messaging_inbound_message_payload import MessagingInboundMessagePayload
    from telnyx.types.outbound_message_payload import OutboundMessagePayload

    def fields(model: Any) -> set[str]:
        return {f.alias or name for name, f in model.model_fields.items()}

    _, record = await sent_record(router, fake, OTP)
    for status, event_type, telnyx_status in [
        ("sent", "message.sent", "sent"),
        ("delivered", "message.finalized", "delivered"),
        ("undelivered", "message.finalized", "delivery_failed"),
        ("failed", "message.finalized", "sending_failed"),
    ]:
        doc = json.loads(fake.receipt_request(record, status, None)[3])
        event = DeliveryUpdateWebhookEvent.model_validate(doc)  # dates, enums, literals
        assert event.data is not None
        assert event.data.event_type == event_type
        assert event.data.payload is not None
        assert event.data.payload.to is not None
        assert event.data.payload.to[0].status == telnyx_status
        assert set(doc["data"]["payload"]) <= fields(OutboundMessagePayload)
    doc = json.loads(fake.inbound_request("http://x/in", NUMBER, SENDER, "hi")[3])
    inbound = InboundMessageWebhookEvent.model_validate(doc)
    assert inbound.data is not None
    assert inbound.data.event_type == "message.received"
    assert set(doc["data"]["payload"]) <= fields(MessagingInboundMessagePayload)


# -- malformed and misdirected ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"meta": {}}',
        b'{"data": {"event_type": "message.finalized"}}',
        b'{"data": {"event_type": "message.finalized", "payload": {"to": []}}}',
        b'{"data": {"event_type": "message.finalized", "payload": {"id": "x", "to": []}}}',
    ],
    ids=["not-json", "array", "no-data", "no-payload", "no-id", "no-recipient-status"],
)
async def test_malformed_signed_receipt_is_a_400(
    router: Router, hooks: Hooks, fake: FakeTelnyx, body: bytes
) -> None:
    headers = {"Content-Type": "application/json", **fake.sign(body)}
    assert await call("POST", f"{hooks.url}/telnyx/status", headers, body) == 400


async def test_malformed_signed_inbound_is_a_400(
    router: Router, hooks: Hooks, fake: FakeTelnyx
) -> None:
    body = b'{"data": {"event_type": "message.received", "payload": {"text": "STOP"}}}'
    headers = {"Content-Type": "application/json", **fake.sign(body)}
    assert await call("POST", f"{hooks.url}/telnyx/inbound", headers, body) == 400


async def test_events_at_the_other_url_are_answered_200_and_ignored(
    router: Router, hooks: Hooks, fake: FakeTelnyx
) -> None:
    await assert_events_at_the_other_url_ignored(
        router, fake, f"{hooks.url}/telnyx", handset=NUMBER, our_number=SENDER
    )


# -- inbound and opt-outs ------------------------------------------------------------------------


async def test_inbound_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, fake: FakeTelnyx
) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router,
        fake,
        f"{hooks.url}/telnyx/inbound",
        sender=NUMBER,
        recipient=SENDER,
        text="Stop",
        opted_out="+49 151 23456789",
    )
    (message,) = inbound
    assert (message.provider, message.sender, message.recipient, message.keyword) == (
        "telnyx",
        NUMBER,
        SENDER,
        "STOP",
    )


async def test_forged_inbound_stop_is_refused_and_opts_nobody_out(
    router: Router, hooks: Hooks, fake: FakeTelnyx
) -> None:
    _, url, headers, body = fake.inbound_request(
        f"{hooks.url}/telnyx/inbound", NUMBER, SENDER, "STOP"
    )
    assert await call("POST", url, headers, body.replace(b"STOP", b"STOQ")) == 403
    assert await call("POST", url, {"Content-Type": "application/json"}, body) == 403
    assert not router.is_opted_out(NUMBER)
