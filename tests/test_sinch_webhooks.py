"""Sinch delivery reports and inbound messages over real sockets: FakeSinch calls
the router's webhook app on 127.0.0.1 with Sinch's payloads, signed as Sinch signs
callbacks (x-sinch-webhook-signature: base64 HMAC-SHA256 over body.nonce.timestamp).

The official ``sinch`` SDK checks both ends: its signature helpers sign requests
we must accept, its validator accepts what FakeSinch signs, and its event parser
reads FakeSinch's payloads into its own models.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from conftest import Hooks, call, make_config, state_of
from multidict import CIMultiDict, CIMultiDictProxy
from provider_support import (
    assert_early_receipt_correlated,
    assert_failed_receipt_classified,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    fake_fixture,
    otp_to,
    provider_settings,
    receipt_round_trip,
    routing_yaml,
    serving,
)

from smsroute import Router
from smsroute.config import ProviderConfig
from smsroute.providers.base import WebhookRequest
from smsroute.providers.sinch import SinchProvider
from smsroute.testing.sinch import FakeSinch

TO = "+4915123456789"
SENDER = "+15005550006"
OTP = otp_to(TO)


fake = fake_fixture(FakeSinch)


def config_text(
    hooks: Hooks, fake: FakeSinch, *, secret: bool = True, extra: Sequence[str] = ()
) -> str:
    secret_line = [f'webhook_secret: "{fake.webhook_secret}"'] if secret else []
    settings = provider_settings(fake, SENDER, *secret_line, *extra)
    return routing_yaml({"primary": settings}, webhook_url=hooks.url)


@pytest.fixture
async def router(hooks: Hooks, fake: FakeSinch) -> AsyncIterator[Router]:
    async with serving(hooks, make_config(config_text(hooks, fake))) as r:
        yield r


def resigned(fake: FakeSinch, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """``headers`` with the signature replaced by one over ``body``."""
    signed = {k: v for k, v in headers.items() if not k.startswith("x-sinch-webhook")}
    return {**signed, **fake.signature_headers(body)}


# -- the whole loop over sockets ------------------------------------------------------------


async def test_signed_receipt_reaches_the_router_and_updates_status(
    router: Router, fake: FakeSinch
) -> None:
    result, reports = await delivered_round_trip(router, fake, OTP)
    assert [(r.status, r.message_id, r.provider_message_id) for r in reports] == [
        ("delivered", result.message_id, result.provider_message_id)
    ]
    assert reports[0].error_code is None


async def test_receipt_arriving_before_send_returns_is_correlated(
    router: Router, fake: FakeSinch
) -> None:
    await assert_early_receipt_correlated(router, fake, OTP)


async def test_aborted_receipt_carries_its_code_and_retryability(
    router: Router, fake: FakeSinch
) -> None:
    # 404, a temporary delivery failure: Aborted
    await assert_failed_receipt_classified(
        router, fake, OTP, "failed", 404, ("failed", "404", True)
    )


async def test_summary_report_is_understood(hooks: Hooks, fake: FakeSinch) -> None:
    cfg = make_config(config_text(hooks, fake, extra=["delivery_report: summary"]))
    async with serving(hooks, cfg) as router:
        result, _ = await receipt_round_trip(router, fake, OTP)
        assert fake.messages[0].fields["delivery_report"] == "summary"
        assert await state_of(router, result.message_id) == "delivered"


# -- signatures --------------------------------------------------------------------------------


async def test_tampered_receipt_is_refused_and_changes_nothing(
    router: Router, fake: FakeSinch
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    forged = body.replace(b'"Delivered"', b'"DeliverEd"')
    assert forged != body
    assert len(forged) == len(body)
    assert await call(method, url, headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"
    assert await call(method, url, headers, body) == 200  # the genuine one still passes
    assert await state_of(router, result.message_id) == "delivered"


async def test_unsigned_receipt_is_refused_when_a_secret_is_configured(
    router: Router, fake: FakeSinch
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    unsigned = {k: v for k, v in headers.items() if not k.startswith("x-sinch-webhook")}
    assert await call(method, url, unsigned, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_receipt_signed_with_another_secret_is_refused(
    router: Router, fake: FakeSinch
) -> None:
    await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    other = FakeSinch(webhook_secret="not-the-configured-secret")
    assert await call(method, url, resigned(other, headers, body), body) == 403


@pytest.mark.parametrize("age", [-301, 301, 24 * 3600])
async def test_stale_or_future_signature_timestamp_is_refused(
    router: Router, fake: FakeSinch, age: int
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    headers = {k: v for k, v in headers.items() if not k.startswith("x-sinch-webhook")}
    headers.update(fake.signature_headers(body, timestamp=str(int(time.time()) - age)))
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_timestamp_within_tolerance_is_accepted(router: Router, fake: FakeSinch) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    headers = {k: v for k, v in headers.items() if not k.startswith("x-sinch-webhook")}
    headers.update(fake.signature_headers(body, timestamp=str(int(time.time()) - 200)))
    assert await call(method, url, headers, body) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_unknown_signature_algorithm_is_refused(router: Router, fake: FakeSinch) -> None:
    await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    headers["x-sinch-webhook-signature-algorithm"] = "HmacSHA1"
    assert await call(method, url, headers, body) == 403


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"batch_id": "01H"}',  # no type
        b'{"type": "recipient_delivery_report_sms", "status": "Delivered"}',  # no batch_id
        b'{"type": "recipient_delivery_report_sms", "batch_id": "01H"}',  # no status
        b'{"type": "delivery_report_sms", "batch_id": "01H", "statuses": {}}',
        b'{"type": "something_else", "batch_id": "01H"}',
    ],
)
async def test_malformed_signed_receipt_is_a_400(
    router: Router, hooks: Hooks, fake: FakeSinch, body: bytes
) -> None:
    headers = {"Content-Type": "application/json", **fake.signature_headers(body)}
    assert await call("POST", f"{hooks.url}/primary/status", headers, body) == 400


async def test_mms_reports_are_answered_and_ignored(
    router: Router, hooks: Hooks, fake: FakeSinch
) -> None:
    body = json.dumps({"type": "recipient_delivery_report_mms", "batch_id": "01H"}).encode()
    headers = {"Content-Type": "application/json", **fake.signature_headers(body)}
    assert await call("POST", f"{hooks.url}/primary/status", headers, body) == 200


async def test_get_is_not_a_sinch_callback(router: Router, hooks: Hooks) -> None:
    assert await call("GET", f"{hooks.url}/primary/status", {}, b"") == 405


async def test_without_a_secret_unsigned_callbacks_are_accepted(hooks: Hooks) -> None:
    async with (
        FakeSinch(sign_callbacks=False) as fake,
        serving(hooks, make_config(config_text(hooks, fake, secret=False))) as router,
    ):
        result, _ = await receipt_round_trip(router, fake, OTP)
        assert fake.receipts_sent[0][2] == 200
        assert await state_of(router, result.message_id) == "delivered"


# -- inbound and opt-outs -------------------------------------------------------------------------


async def test_inbound_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, fake: FakeSinch
) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router, fake, f"{hooks.url}/primary/inbound", sender=TO, recipient=SENDER, text="STOP"
    )
    assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [(TO, SENDER, "STOP")]
    assert inbound[0].provider_message_id


async def test_forged_inbound_stop_is_refused(
    router: Router, hooks: Hooks, fake: FakeSinch
) -> None:
    method, url, headers, body = fake.inbound_request(
        f"{hooks.url}/primary/inbound", TO, SENDER, "STOP"
    )
    forged = body.replace(b"STOP", b"STOq")
    assert await call(method, url, headers, forged) == 403
    assert not router.is_opted_out(TO)


async def test_malformed_inbound_is_a_400(router: Router, hooks: Hooks, fake: FakeSinch) -> None:
    body = json.dumps({"type": "mo_text", "id": "01H", "to": "15005550006"}).encode()
    headers = {"Content-Type": "application/json", **fake.signature_headers(body)}
    assert await call("POST", f"{hooks.url}/primary/inbound", headers, body) == 400


# -- the parser on Sinch's documented shapes -------------------------------------------------------


def provider(secret: str | None = None) -> SinchProvider:
    opts: dict[str, Any] = {"service_plan_id": "plan", "api_token": "token"}
    if secret is not None:
        opts["webhook_secret"] = secret
    return SinchProvider(ProviderConfig(name="sinch", type="sinch", options=opts))


def request(doc: dict[str, Any], headers: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        "POST",
        "https://hooks.example.com/sinch/status",
        CIMultiDictProxy(CIMultiDict(headers or {})),
        json.dumps(doc).encode(),
    )


@pytest.mark.parametrize(
    ("status", "code", "ours", "error_code", "retryable"),
    [
        ("Queued", 400, "queued", None, None),
        ("Dispatched", 401, "sent", None, None),
        ("Delivered", 0, "delivered", None, None),
        ("Failed", 0, "undelivered", None, None),  # 0: "no error/unknown error"
        ("Deleted", 11, "undelivered", "11", None),  # SMPP codes are not classified
        ("Aborted", 402, "failed", "402", False),
        ("Aborted", 403, "failed", "403", True),
        ("Aborted", 412, "failed", "412", True),
        ("Rejected", 408, "failed", "408", False),
        ("Cancelled", 407, "failed", "407", False),
        ("Expired", 406, "failed", "406", True),
        ("Unknown", 0, "unknown", None, None),
        ("SomethingNew", 499, "unknown", "499", None),
    ],
)
def test_recipient_report_status_table(
    status: str, code: int, ours: str, error_code: str | None, retryable: bool | None
) -> None:
    doc = {
        "type": "recipient_delivery_report_sms",
        "batch_id": "01FC66621XXXXX119Z8PMV1QPQ",
        "recipient": "+4915123456789",
        "code": code,
        "status": status,
        "at": "2022-08-30T08:16:08.930Z",
        "operator_status_at": "2022-08-30T08:16:08.000Z",
        "client_reference": "our-id",
    }
    [receipt] = provider().parse_receipts(request(doc))
    assert (receipt.status, receipt.error_code, receipt.retryable) == (ours, error_code, retryable)
    assert receipt.provider_message_id == "01FC66621XXXXX119Z8PMV1QPQ"
    assert receipt.message_id == "our-id"
    assert receipt.at is not None
    assert receipt.at.isoformat() == "2022-08-30T08:16:08+00:00"


# -- the official SDK --------------------------------------------------------------------------------


def sdk_event(secret: str | None) -> Any:
    """The SDK's ``SmsSinchEvent``: signature validator and event parser."""
    pytest.importorskip("sinch")
    from sinch.domains.sms.sinch_events.v1.sms_sinch_event import (  # type: ignore[import-untyped]
        SmsSinchEvent,
    )

    return SmsSinchEvent(app_secret=secret)


def sdk_headers(secret: str, body: bytes, nonce: str, timestamp: str) -> dict[str, str]:
    """Signature headers computed by the SDK's own helpers, not by ours."""
    pytest.importorskip("sinch")
    from sinch.domains.authentication.sinch_events.v1.authentication_validation import (  # type: ignore[import-untyped]
        calculate_sinch_event_signature,
        compute_signed_data,
    )

    signed = compute_signed_data(body.decode(), nonce, timestamp)
    return {
        "x-sinch-webhook-signature": calculate_sinch_event_signature(signed, secret),
        "x-sinch-webhook-signature-nonce": nonce,
        "x-sinch-webhook-signature-timestamp": timestamp,
    }


async def test_request_signed_by_the_sdk_is_accepted_and_a_tampered_one_refused(
    router: Router, fake: FakeSinch
) -> None:
    result = await router.send(OTP)
    method, url, _headers, body = fake.receipt_request(fake.messages[0], "sent", None)
    base = {"Content-Type": "application/json"}
    signed = {**base, **sdk_headers(fake.webhook_secret, body, "n0nce", str(int(time.time())))}
    tampered = body.replace(b'"Dispatched"', b'"Dispatchee"')
    assert await call(method, url, signed, tampered) == 403
    assert await state_of(router, result.message_id) == "accepted"
    assert await call(method, url, signed, body) == 200
    assert await state_of(router, result.message_id) == "sent"


async def test_sdk_validator_accepts_the_fakes_signature_and_refuses_a_tampered_body(
    router: Router, hooks: Hooks, fake: FakeSinch
) -> None:
    await router.send(OTP)
    validator = sdk_event(fake.webhook_secret)
    _, _, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    assert validator.validate_authentication_header(headers, body)
    assert not validator.validate_authentication_header(headers, body.replace(b"0", b"1", 1))
    _, _, in_headers, in_body = fake.inbound_request(
        f"{hooks.url}/primary/inbound", TO, SENDER, "STOP"
    )
    assert validator.validate_authentication_header(in_headers, in_body)
    assert not validator.validate_authentication_header(in_headers, in_body + b" ")


def test_sdk_parses_the_fakes_payloads_into_its_models(fake: FakeSinch) -> None:
    from smsroute.testing.fake import ReceivedMessage

    parser = sdk_event(None)
    for report in ("per_recipient", "summary", "full"):
        record = ReceivedMessage(
            provider_message_id="01FC66621XXXXX119Z8PMV1QPQ",
            to=TO,
            sender=SENDER,
            text="hi",
            fields={"delivery_report": report, "client_reference": "ours"},
            received_at=0.0,
            status_callback="https://hooks.example.com/sinch/status",
        )
        for status in ("queued", "sent", "delivered", "undelivered", "failed"):
            _, _, _, body = fake.receipt_request(record, status, None)
            event = parser.parse_event(body)
            assert event.batch_id == record.provider_message_id
            assert event.client_reference == "ours"
    _, _, _, body = fake.inbound_request("https://x/inbound", TO, SENDER, "STOP")
    mo = parser.parse_event(body)
    assert (mo.type, mo.body, mo.from_) == ("mo_text", "STOP", TO.removeprefix("+"))


@pytest.mark.parametrize(
    ("timestamp", "accepted"),
    [
        ("{now}", True),
        ("{now}000", True),  # milliseconds
        ("{iso}", True),  # ISO 8601, UTC
        ("nan", False),
        ("yesterday", False),
    ],
)
def test_signature_timestamp_formats(timestamp: str, accepted: bool) -> None:
    from smsroute.providers.base import WebhookError
    from smsroute.providers.sinch import sinch_signature

    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    stamp = timestamp.format(now=int(now), iso=iso)
    doc = {"type": "mo_text", "id": "1", "from": "4915123456789", "to": "1", "body": "hi"}
    body = json.dumps(doc).encode()
    headers = {
        "x-sinch-webhook-signature": sinch_signature("s3cret", body, "n", stamp),
        "x-sinch-webhook-signature-nonce": "n",
        "x-sinch-webhook-signature-timestamp": stamp,
    }
    req = WebhookRequest("POST", "https://x/inbound", CIMultiDictProxy(CIMultiDict(headers)), body)
    if accepted:
        provider("s3cret").verify_webhook("inbound", req, now)
    else:
        with pytest.raises(WebhookError) as refused:
            provider("s3cret").verify_webhook("inbound", req, now)
        assert refused.value.status == 403
