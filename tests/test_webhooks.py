"""Delivery receipts and inbound messages over real sockets: FakeTwilio calls the
router's webhook app on 127.0.0.1 with Twilio's real, signed payloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from conftest import Hooks, make_config, reaches, twilio_block
from provider_support import (
    assert_early_receipt_correlated,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    serving,
)
from twilio.request_validator import RequestValidator

from smsroute import DeliveryReport, InboundMessage, ManualClock, Message, Router
from smsroute.config import Config
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")
PROMO = Message(to="+4915123456789", text="Sale!", category="marketing")


def config(hooks: Hooks, a: FakeTwilio, b: FakeTwilio, rule: str = "", breaker: str = "") -> Config:
    return make_config(f"""
defaults:
  webhook_url: {hooks.url}
  breaker: {{consecutive_failures: 5{breaker}}}
providers:
{twilio_block("primary", a)}
{twilio_block("secondary", b)}
rules:
  - name: default
    providers: [primary, secondary]
{rule}
""")


@pytest.fixture
async def router(hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio) -> AsyncIterator[Router]:
    async with serving(hooks, config(hooks, twilio_a, twilio_b)) as r:
        yield r


def signed(fake: FakeTwilio, url: str, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """Sign with the official SDK's validator, not with our own code."""
    signature = RequestValidator(fake.auth_token).compute_signature(url, params)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    return headers, urlencode(params).encode()


def receipt_params(
    fake: FakeTwilio, sid: str, status: str, code: str | None = None
) -> dict[str, str]:
    params = {
        "AccountSid": fake.account_sid,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": "+4915123456789",
        "From": "+15005550006",
        "ApiVersion": "2010-04-01",
    }
    if code:
        params["ErrorCode"] = code
    return params


# -- the whole loop over sockets ------------------------------------------------------------


async def test_fake_receipt_reaches_the_router_and_updates_status(
    router: Router, twilio_a: FakeTwilio
) -> None:
    result, reports = await delivered_round_trip(router, twilio_a, OTP)
    assert [r.status for r in reports] == ["delivered"]
    assert reports[0].message_id == result.message_id
    assert reports[0].provider_message_id == result.provider_message_id


async def test_receipt_arriving_before_send_returns_is_correlated(
    router: Router, twilio_a: FakeTwilio
) -> None:
    await assert_early_receipt_correlated(router, twilio_a, OTP)


# -- signatures ---------------------------------------------------------------------------------


async def post(router: Router, kind: str, url: str, headers: dict[str, str], body: bytes) -> int:
    answer = await router.handle_webhook("primary", kind, "POST", url, headers, body)
    return answer.status


async def test_signed_receipt_from_the_sdk_validator_is_accepted(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    result = await router.send(OTP)
    url = f"{hooks.url}/primary/status?smsroute_id={result.message_id}"
    headers, body = signed(
        twilio_a, url, receipt_params(twilio_a, result.provider_message_id or "", "sent")
    )
    assert await post(router, "status", url, headers, body) == 200
    assert (await router.status(result.message_id)).status == "sent"  # type: ignore[union-attr]


async def test_tampered_receipt_is_refused_and_changes_nothing(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    result = await router.send(OTP)
    url = f"{hooks.url}/primary/status"
    headers, body = signed(
        twilio_a, url, receipt_params(twilio_a, result.provider_message_id or "", "delivered")
    )
    forged = body.replace(b"delivered", b"delivereD")
    assert await post(router, "status", url, headers, forged) == 403
    assert (await router.status(result.message_id)).status == "accepted"  # type: ignore[union-attr]


async def test_unsigned_receipt_is_refused(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    body = urlencode(receipt_params(twilio_a, "SM1", "delivered")).encode()
    assert await post(router, "status", f"{hooks.url}/primary/status", {}, body) == 403


async def test_signature_for_another_url_is_refused(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    headers, body = signed(
        twilio_a,
        "https://evil.example.com/primary/status",
        receipt_params(twilio_a, "SM1", "delivered"),
    )
    assert await post(router, "status", f"{hooks.url}/primary/status", headers, body) == 403


async def test_malformed_receipt_is_a_400(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    url = f"{hooks.url}/primary/status"
    headers, body = signed(twilio_a, url, {"AccountSid": twilio_a.account_sid})
    assert await post(router, "status", url, headers, body) == 400


async def test_oversized_body_is_a_413_over_http(router: Router, hooks: Hooks) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{hooks.url}/primary/status", data=b"x" * 70_000) as r,
    ):
        assert r.status == 413


async def test_unknown_provider_is_a_404(router: Router) -> None:
    answer = await router.handle_webhook("nope", "status", "POST", "http://x/nope/status", {}, b"")
    assert answer.status == 404


async def test_receipt_for_unknown_message_is_answered_200(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    url = f"{hooks.url}/primary/status"
    headers, body = signed(twilio_a, url, receipt_params(twilio_a, "SMdoesnotexist", "delivered"))
    assert await post(router, "status", url, headers, body) == 200


# -- ordering and duplicates -------------------------------------------------------------------


async def receipt(
    router: Router, hooks: Hooks, fake: FakeTwilio, sid: str, status: str, code: str | None = None
) -> int:
    url = f"{hooks.url}/primary/status"
    headers, body = signed(fake, url, receipt_params(fake, sid, status, code))
    return await post(router, "status", url, headers, body)


async def test_duplicate_receipts_are_processed_once(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    result = await router.send(OTP)
    for _ in range(3):
        assert (
            await receipt(router, hooks, twilio_a, result.provider_message_id or "", "delivered")
            == 200
        )
    assert len(reports) == 1


async def test_out_of_order_receipts_never_move_backwards(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    result = await router.send(OTP)
    sid = result.provider_message_id or ""
    for status in ("delivered", "sent", "queued", "undelivered"):
        await receipt(router, hooks, twilio_a, sid, status)
    state = await router.status(result.message_id)
    assert state is not None
    assert state.status == "delivered"
    assert [h[0] for h in state.history] == ["accepted", "delivered"]


async def test_status_progresses_forward(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    result = await router.send(OTP)
    sid = result.provider_message_id or ""
    for status in ("queued", "sent", "delivered"):
        await receipt(router, hooks, twilio_a, sid, status)
    state = await router.status(result.message_id)
    assert state is not None
    assert [h[0] for h in state.history] == ["accepted", "queued", "sent", "delivered"]


# -- inbound and opt-outs ----------------------------------------------------------------------


async def test_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    await assert_stop_opts_out_marketing_not_otp(
        router,
        twilio_a,
        f"{hooks.url}/primary/inbound",
        sender="+4915123456789",
        recipient="+15005550006",
        text="  Stop ",
        opted_out="+49 151 23456789",
    )


async def test_start_opts_back_in(router: Router, hooks: Hooks, twilio_a: FakeTwilio) -> None:
    url = f"{hooks.url}/primary/inbound"
    await twilio_a.send_inbound(url, sender="+4915123456789", recipient="+15005550006", text="STOP")
    await twilio_a.send_inbound(
        url, sender="+4915123456789", recipient="+15005550006", text="start"
    )
    assert (await router.send(PROMO)).ok


async def test_help_is_surfaced_and_does_not_opt_out(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    inbound: list[InboundMessage] = []
    router.on_inbound(inbound.append)
    await twilio_a.send_inbound(
        f"{hooks.url}/primary/inbound",
        sender="+4915123456789",
        recipient="+15005550006",
        text="HELP",
    )
    assert inbound[0].keyword == "HELP"
    assert not router.is_opted_out("+4915123456789")


async def test_a_sentence_containing_stop_is_not_an_opt_out(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    await twilio_a.send_inbound(
        f"{hooks.url}/primary/inbound",
        sender="+4915123456789",
        recipient="+15005550006",
        text="don't stop sending",
    )
    assert not router.is_opted_out("+4915123456789")


async def test_inbound_answer_is_empty_twiml(
    router: Router, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    method, url, headers, body = twilio_a.inbound_request(
        f"{hooks.url}/primary/inbound", "+4915123456789", "+15005550006", "hi"
    )
    answer = await router.handle_webhook("primary", "inbound", method, url, headers, body)
    assert answer.content_type == "text/xml"
    assert b"<Response></Response>" in answer.body


# -- delivery-aware routing ----------------------------------------------------------------------


async def test_provider_that_accepts_but_never_delivers_loses_its_traffic(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    cfg = config(hooks, twilio_a, twilio_b, breaker=", min_delivery_ratio: 50%, min_receipts: 5")
    twilio_a.receipts("undelivered", error_code=30003)
    twilio_b.receipts("delivered")
    async with serving(hooks, cfg) as router:
        for _ in range(5):
            assert (await router.send(OTP)).provider == "primary"
        async with asyncio.timeout(5):
            await twilio_a.wait_receipts(5)
        later = [await router.send(OTP) for _ in range(5)]
    assert all(r.provider == "secondary" for r in later)
    assert router.breaker_states()[("primary", None)].value == "open"


async def test_silent_provider_loses_traffic_once_receipts_are_overdue(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    cfg = config(hooks, twilio_a, twilio_b, breaker=", min_delivery_ratio: 50%, min_receipts: 5")
    clock = ManualClock()
    twilio_a.receipts("never")
    async with serving(hooks, cfg, clock=clock) as router:
        for _ in range(5):
            assert (await router.send(OTP)).provider == "primary"
        clock.advance(601)  # past defaults.receipt_timeout (10m): no receipt ever came
        await router.send(OTP)
        assert router.breaker_states()[("primary", None)].value == "open"
        assert (await router.send(OTP)).provider == "secondary"


async def test_undelivered_message_is_resent_through_the_next_provider(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    cfg = config(hooks, twilio_a, twilio_b, rule="    on_undelivered: resend")
    twilio_a.receipts("undelivered", error_code=30003)  # unreachable handset: retryable
    twilio_b.receipts("delivered")
    async with serving(hooks, cfg) as router:
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await reaches(router, result.message_id, "delivered")
        state = await router.status(result.message_id)
    assert len(twilio_a.messages) == 1
    assert len(twilio_b.messages) == 1  # resent once, through the other provider
    assert state is not None
    assert [h[:2] for h in state.history] == [
        ("accepted", "primary"),
        ("undelivered", "primary"),
        ("accepted", "secondary"),
        ("delivered", "secondary"),
    ]


async def test_permanent_delivery_failure_is_not_resent(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    cfg = config(hooks, twilio_a, twilio_b, rule="    on_undelivered: resend")
    twilio_a.receipts("undelivered", error_code=30006)  # landline: no provider can help
    async with serving(hooks, cfg) as router:
        await router.send(OTP)
        async with asyncio.timeout(5):
            await twilio_a.wait_receipts(1)
    assert twilio_b.requests == 0


async def test_resend_happens_at_most_once_per_provider(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    cfg = config(hooks, twilio_a, twilio_b, rule="    on_undelivered: resend")
    twilio_a.receipts("undelivered", error_code=30003)
    twilio_b.receipts("undelivered", error_code=30003)
    async with serving(hooks, cfg) as router:
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await twilio_b.wait_receipts(1)
        state = await router.status(result.message_id)
    assert (len(twilio_a.messages), len(twilio_b.messages)) == (1, 1)
    assert state is not None
    assert state.status == "undelivered"
