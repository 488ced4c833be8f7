"""Plivo status callbacks and inbound messages over real sockets: FakePlivo
calls the router's webhook app on 127.0.0.1 with Plivo's real form posts,
signed with X-Plivo-Signature-V2 (messaging's scheme) and/or -V3.

Checked against the official ``plivo`` SDK (4.x): the fake's headers pass
``plivo.utils.validate_signature`` (V2) and ``validate_v3_signature`` (V3);
callbacks signed here with the SDK's own V3 signer (``get_signature_v3`` over
``construct_post_url``) are accepted, and refused once one byte is changed.
Neither scheme carries a timestamp, so there is no stale case to test; a V2
nonce replayed with another body is refused instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from conftest import Hooks, call, make_config, state_of
from provider_support import (
    assert_failed_receipt_classified,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    fake_fixture,
    otp_to,
    provider_settings,
    routing_yaml,
    serving,
)

from smsroute import DeliveryReport, Router
from smsroute.config import Config
from smsroute.providers.plivo import signature_v2, signature_v3
from smsroute.testing import FakePlivo

HANDSET = "+4915123456789"
OTP = otp_to(HANDSET)
OUR_NUMBER = "+14155550100"
NONCE = "05429567804466091622"


def config(hooks: Hooks, fake: FakePlivo) -> Config:
    settings = provider_settings(fake, OUR_NUMBER)
    return make_config(routing_yaml({"plivo": settings}, webhook_url=hooks.url))


fake = fake_fixture(FakePlivo)


@pytest.fixture
async def router(hooks: Hooks, fake: FakePlivo) -> AsyncIterator[Router]:
    async with serving(hooks, config(hooks, fake)) as r:
        yield r


def callback(
    provider_id: str, status: str = "delivered", code: str | None = None
) -> dict[str, str]:
    """A message status callback's fields (docs.plivo.com message-status-callbacks)."""
    fields = {
        "MessageUUID": provider_id,
        "To": "4915123456789",
        "From": "14155550100",
        "Type": "sms",
        "Status": status,
        "Units": "1",
        "TotalRate": "0.00500",
        "TotalAmount": "0.00500",
        "MessageTime": "2024-05-01 12:00:00.000000",
        "DeliveryReportTime": "2024-05-01 12:00:05.000000",
    }
    if code is not None:
        fields["ErrorCode"] = code
    return fields


def sdk_v3_headers(token: str, method: str, url: str, fields: dict[str, str]) -> dict[str, str]:
    """V3 headers made with the official SDK's signer."""
    v3 = pytest.importorskip("plivo.utils.signature_v3")
    if method == "GET":
        canonical = v3.construct_get_url(url, dict(fields))
    else:
        canonical = v3.construct_post_url(url, dict(fields))
    signature = v3.get_signature_v3(token, canonical, NONCE)
    return {
        "X-Plivo-Signature-V3": signature.decode(),
        "X-Plivo-Signature-V3-Nonce": NONCE,
        "Content-Type": "application/x-www-form-urlencoded",
    }


# -- the whole loop over sockets ---------------------------------------------------------------


@pytest.mark.parametrize("versions", [("v2",), ("v3",), ("v2", "v3")])
async def test_signed_callback_from_the_fake_updates_status(
    hooks: Hooks, versions: tuple[str, ...]
) -> None:
    async with (
        FakePlivo(signature_versions=versions) as fake,
        serving(hooks, config(hooks, fake)) as router,
    ):
        result, reports = await delivered_round_trip(router, fake, OTP)
        assert [(r.message_id, r.provider_message_id) for r in reports] == [
            (result.message_id, result.provider_message_id)
        ]


@pytest.mark.parametrize(
    ("outcome", "code", "status", "retryable"),
    [
        ("undelivered", "80", "undelivered", True),  # destination temporarily unavailable
        ("undelivered", "50", "undelivered", False),  # invalid destination number
        ("failed", "420", "failed", True),  # expired in Plivo's queue
        ("failed", "200", "failed", False),  # the recipient sent STOP
    ],
)
async def test_failed_callbacks_are_classified(
    router: Router, fake: FakePlivo, outcome: str, code: str, status: str, retryable: bool
) -> None:
    expected = (status, code, retryable)
    await assert_failed_receipt_classified(router, fake, OTP, outcome, code, expected)


async def test_get_callback_is_verified_and_read(router: Router, fake: FakePlivo) -> None:
    fake.signature_versions = ("v2", "v3")
    result = await router.send(OTP)
    record = fake.messages[0]
    assert record.status_callback is not None
    method, url, headers, body = fake.signed_request(
        "GET", record.status_callback, callback(record.provider_message_id, "sent")
    )
    assert await call(method, url, headers, body) == 200
    assert await state_of(router, result.message_id) == "sent"


# -- the SDK's validators and signer ------------------------------------------------------------


async def test_the_fakes_signatures_pass_the_sdks_validators(fake: FakePlivo) -> None:
    utils = pytest.importorskip("plivo.utils")
    v3 = pytest.importorskip("plivo.utils.signature_v3")
    fake.signature_versions = ("v2", "v3")
    url = "https://hooks.example.com/sms/plivo/status?smsroute_id=abc"
    fields = callback(str(uuid.uuid4()))
    method, _, headers, _ = fake.signed_request("POST", url, fields)
    nonce2, nonce3 = headers["X-Plivo-Signature-V2-Nonce"], headers["X-Plivo-Signature-V3-Nonce"]
    assert utils.validate_signature(url, nonce2, headers["X-Plivo-Signature-V2"], fake.auth_token)
    assert v3.validate_v3_signature(
        method, url, nonce3, fake.auth_token, headers["X-Plivo-Signature-V3"], dict(fields)
    )
    fields["Status"] = "undelivered"
    assert not v3.validate_v3_signature(
        method, url, nonce3, fake.auth_token, headers["X-Plivo-Signature-V3"], fields
    )


def test_our_signers_agree_with_the_sdks() -> None:
    utils = pytest.importorskip("plivo.utils")
    v3 = pytest.importorskip("plivo.utils.signature_v3")
    token = "MjQ0ZTIwYjc4ZjJhMmZhNWQzNGI2ZGRjM2E5ZGE4"
    fields = {"To": "4915123456789", "Text": "a&b=c d", "Status": "delivered"}
    for url in (
        "https://x.example.com/sms/plivo/status",
        "https://x.example.com:8443/sms/plivo/status?smsroute_id=1&b=2",
    ):
        assert utils.validate_signature(url, NONCE, signature_v2(token, url, NONCE), token)
        for method, params in (("POST", fields), ("POST", {}), ("GET", {})):
            ours = signature_v3(token, method, url, NONCE, params.items())
            assert v3.validate_v3_signature(method, url, NONCE, token, ours, dict(params))


async def test_callback_signed_by_the_sdk_is_accepted_and_refused_once_tampered(
    router: Router, fake: FakePlivo
) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    url = record.status_callback
    assert url is not None
    fields = callback(record.provider_message_id, "undelivered", "80")
    headers = sdk_v3_headers(fake.auth_token, "POST", url, fields)
    body = urlencode(fields).encode()
    forged = body.replace(b"ErrorCode=80", b"ErrorCode=50")
    assert forged != body
    assert await call("POST", url, headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"
    assert await call("POST", url, headers, body) == 200
    assert await state_of(router, result.message_id) == "undelivered"


# -- forgeries -----------------------------------------------------------------------------------


async def test_forged_v2_signature_is_refused_and_changes_nothing(
    router: Router, fake: FakePlivo
) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    method, url, headers, body = fake.receipt_request(record, "delivered", None)
    signature = headers["X-Plivo-Signature-V2"]
    headers["X-Plivo-Signature-V2"] = ("B" if signature[0] != "B" else "C") + signature[1:]
    headers["X-Plivo-Signature-Ma-V2"] = headers["X-Plivo-Signature-V2"]
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_v2_signature_for_another_url_is_refused(
    router: Router, hooks: Hooks, fake: FakePlivo
) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    assert record.status_callback is not None
    _, _, headers, body = fake.signed_request(
        "POST", "https://evil.example.com/sms/plivo/status", callback(record.provider_message_id)
    )
    assert await call("POST", record.status_callback, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_v2_signed_with_another_token_is_refused(router: Router, fake: FakePlivo) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    fake.auth_token = fake.main_auth_token = "x" * 40
    method, url, headers, body = fake.receipt_request(record, "delivered", None)
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_v2_nonce_replayed_with_another_body_is_refused(
    router: Router, fake: FakePlivo
) -> None:
    """V2 signs only the URL and a nonce: the nonce is bound to the first body it came with."""
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    result = await router.send(OTP)
    record = fake.messages[0]
    method, url, headers, body = fake.receipt_request(record, "undelivered", "80")
    assert await call(method, url, headers, body) == 200
    assert await call(method, url, headers, body) == 200  # Plivo retrying: same request
    replay = body.replace(b"ErrorCode=80", b"ErrorCode=50")
    assert await call(method, url, headers, replay) == 403
    assert [(r.status, r.error_code) for r in reports] == [("undelivered", "80")]
    assert await state_of(router, result.message_id) == "undelivered"


async def test_v3_tampered_by_one_byte_is_refused_even_with_a_valid_v2(
    router: Router, fake: FakePlivo
) -> None:
    fake.signature_versions = ("v2", "v3")
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    forged = body.replace(b"Status=delivered", b"Status=delivereD")
    assert forged != body
    assert await call(method, url, headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_unsigned_callback_is_refused(router: Router, fake: FakePlivo) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    assert record.status_callback is not None
    body = urlencode(callback(record.provider_message_id)).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert await call("POST", record.status_callback, headers, body) == 403
    # A V2 signature without its nonce is no signature either.
    _, _, signed, _ = fake.signed_request("POST", record.status_callback, {})
    del signed["X-Plivo-Signature-V2-Nonce"]
    assert await call("POST", record.status_callback, {**headers, **signed}, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_malformed_callback_is_a_400(router: Router, hooks: Hooks, fake: FakePlivo) -> None:
    url = f"{hooks.url}/plivo/status"
    fields = callback("ignored")
    del fields["MessageUUID"]
    method, target, headers, body = fake.signed_request("POST", url, fields)
    assert await call(method, target, headers, body) == 400
    fake.signature_versions = ("v3",)
    method, target, headers, _ = fake.signed_request("POST", url, {})
    assert await call(method, target, headers, b"\xff\xfe") == 400  # not UTF-8 form data


async def test_callback_for_an_unknown_message_is_answered_200(
    router: Router, hooks: Hooks, fake: FakePlivo
) -> None:
    method, url, headers, body = fake.signed_request(
        "POST", f"{hooks.url}/plivo/status", callback(str(uuid.uuid4()))
    )
    assert await call(method, url, headers, body) == 200


# -- inbound and opt-outs ------------------------------------------------------------------------


@pytest.mark.parametrize("versions", [("v2",), ("v3",)])
async def test_inbound_stop_opts_out_marketing_but_not_otp(
    hooks: Hooks, versions: tuple[str, ...]
) -> None:
    async with (
        FakePlivo(signature_versions=versions) as fake,
        serving(hooks, config(hooks, fake)) as router,
    ):
        inbound = await assert_stop_opts_out_marketing_not_otp(
            router,
            fake,
            f"{hooks.url}/plivo/inbound",
            sender=HANDSET,
            recipient=OUR_NUMBER,
            text="Stop",
            opted_out="+49 151 23456789",
        )
        assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [
            (HANDSET, OUR_NUMBER, "STOP")
        ]


async def test_inbound_answer_is_empty_plivo_xml(
    router: Router, hooks: Hooks, fake: FakePlivo
) -> None:
    method, url, headers, body = fake.inbound_request(
        f"{hooks.url}/plivo/inbound", HANDSET, OUR_NUMBER, "hello"
    )
    answer = await router.handle_webhook("plivo", "inbound", method, url, headers, body)
    assert answer.status == 200
    assert answer.content_type == "application/xml"
    assert answer.body.endswith(b"<Response></Response>")


async def test_forged_inbound_stop_is_refused(
    router: Router, hooks: Hooks, fake: FakePlivo
) -> None:
    fake.signature_versions = ("v3",)
    method, url, headers, body = fake.inbound_request(
        f"{hooks.url}/plivo/inbound", "+4915199999999", OUR_NUMBER, "STOP"
    )
    forged = body.replace(b"4915199999999", b"4915123456789")
    assert await call(method, url, headers, forged) == 403
    assert not router.is_opted_out(HANDSET)


async def test_malformed_inbound_is_a_400(router: Router, hooks: Hooks, fake: FakePlivo) -> None:
    method, url, headers, body = fake.signed_request(
        "POST", f"{hooks.url}/plivo/inbound", {"To": "14155550100", "Text": "STOP"}
    )
    assert await call(method, url, headers, body) == 400
