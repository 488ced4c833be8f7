"""Infobip delivery reports and inbound messages over real sockets: FakeInfobip calls
the router's webhook app on 127.0.0.1 with Infobip's ``results[]`` JSON.

Infobip signs neither webhook.  The only credential Infobip documents for them is
the HTTP Basic username and password of a Subscriptions notification profile:
with ``callback_username``/``callback_password`` configured, requests without
them are refused; without them, every request is accepted.  The official
``infobip-api-python-client`` SDK (which has no webhook validator, there being
nothing to validate) reads FakeInfobip's payloads into its own models.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Hooks, basic, call, make_config, state_of
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

from smsroute import ConfigError, Router
from smsroute.config import ProviderConfig
from smsroute.providers.base import WebhookRequest
from smsroute.providers.infobip import InfobipProvider
from smsroute.testing.fake import ReceivedMessage
from smsroute.testing.infobip import FakeInfobip

TO = "+4915123456789"
SENDER = "InfoSMS"
NUMBER = "+15005550006"
OTP = otp_to(TO)
USER, PASSWORD = "smsroute", "s3cret-passw0rd"


fake = fake_fixture(lambda: FakeInfobip(callback_username=USER, callback_password=PASSWORD))


def config_text(hooks: Hooks, fake: FakeInfobip, *, credentials: bool = True) -> str:
    creds = [f'callback_username: "{USER}"', f'callback_password: "{PASSWORD}"']
    settings = provider_settings(fake, SENDER, *(creds if credentials else []))
    return routing_yaml({"primary": settings}, webhook_url=hooks.url)


@pytest.fixture
async def router(hooks: Hooks, fake: FakeInfobip) -> AsyncIterator[Router]:
    async with serving(hooks, make_config(config_text(hooks, fake))) as r:
        yield r


# -- the whole loop over sockets ------------------------------------------------------------


async def test_delivery_report_reaches_the_router_and_updates_status(
    router: Router, fake: FakeInfobip
) -> None:
    result, reports = await delivered_round_trip(router, fake, OTP)
    assert [(r.status, r.message_id, r.provider_message_id, r.error_code) for r in reports] == [
        ("delivered", result.message_id, result.provider_message_id, None)
    ]
    # callbackData carried our id: no smsroute_id in the URL Infobip was given.
    delivery_url = fake.messages[0].status_callback
    assert delivery_url == f"{router.config.defaults.webhook_url}/primary/status"


async def test_report_arriving_before_send_returns_is_correlated(
    router: Router, fake: FakeInfobip
) -> None:
    await assert_early_receipt_correlated(router, fake, OTP)


@pytest.mark.parametrize(
    ("outcome", "code", "status", "error_code", "retryable"),
    [
        ("undelivered", None, "undelivered", "EC_ABSENT_SUBSCRIBER_SM", True),
        ("undelivered", "EC_UNKNOWN_SUBSCRIBER", "undelivered", "EC_UNKNOWN_SUBSCRIBER", False),
        ("failed", None, "failed", "REJECTED_NETWORK", True),  # this account's coverage
        ("failed", "REJECTED_DESTINATION", "failed", "REJECTED_DESTINATION", False),
    ],
)
async def test_failed_report_carries_error_and_retryability(
    router: Router,
    fake: FakeInfobip,
    outcome: str,
    code: str | None,
    status: str,
    error_code: str,
    retryable: bool,
) -> None:
    expected = (status, error_code, retryable)
    await assert_failed_receipt_classified(router, fake, OTP, outcome, code, expected)


# -- credentials -------------------------------------------------------------------------------


async def test_report_without_credentials_is_refused_and_changes_nothing(
    router: Router, fake: FakeInfobip
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    del headers["Authorization"]
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, PASSWORD[:-1] + "X"),  # one byte off
        basic(USER + "x", PASSWORD),
        basic(USER, ""),
        "Basic !!!not-base64!!!",
        f"Bearer {PASSWORD}",
        f"App {PASSWORD}",
    ],
)
async def test_report_with_wrong_credentials_is_refused(
    router: Router, fake: FakeInfobip, authorization: str
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    headers["Authorization"] = authorization
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_report_with_the_right_credentials_is_accepted(
    router: Router, fake: FakeInfobip
) -> None:
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    assert headers["Authorization"] == basic(USER, PASSWORD)
    assert await call(method, url, headers, body) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_a_tampered_report_is_not_detectable_infobip_signs_nothing(
    router: Router, fake: FakeInfobip
) -> None:
    """The limit of Infobip's scheme, shown: credentials authenticate the caller, not the body."""
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    assert await call(method, url, headers, body.replace(b"DELIVERED_TO_HANDSET", b"X")) == 200
    assert await state_of(router, result.message_id) == "delivered"  # the group still said so


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"{}",
        b'{"results": {}}',
        b'{"results": ["x"]}',
        b'{"results": [{"status": {"groupName": "DELIVERED"}}]}',  # no messageId
        b'{"results": [{"messageId": "m1"}]}',  # no status
    ],
)
async def test_malformed_report_is_a_400(router: Router, hooks: Hooks, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "Authorization": basic(USER, PASSWORD)}
    assert await call("POST", f"{hooks.url}/primary/status", headers, body) == 400


async def test_get_is_not_an_infobip_webhook(router: Router, hooks: Hooks) -> None:
    headers = {"Authorization": basic(USER, PASSWORD)}
    assert await call("GET", f"{hooks.url}/primary/status", headers, b"") == 405


async def test_without_credentials_configured_every_report_is_accepted(hooks: Hooks) -> None:
    async with (
        FakeInfobip() as fake,
        serving(hooks, make_config(config_text(hooks, fake, credentials=False))) as router,
    ):
        result, _ = await receipt_round_trip(router, fake, OTP)
        assert fake.receipts_sent[0][2] == 200
        assert await state_of(router, result.message_id) == "delivered"


def test_config_wants_both_credentials_or_neither(hooks: Hooks) -> None:
    text = f"""
providers:
  primary:
    type: infobip
    api_key: key
    callback_username: "{USER}"
rules:
  - name: default
    providers: [primary]
"""
    with pytest.raises(ConfigError, match="callback_password"):
        make_config(text)


# -- inbound and opt-outs -------------------------------------------------------------------------


async def test_inbound_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, fake: FakeInfobip
) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router, fake, f"{hooks.url}/primary/inbound", sender=TO, recipient=NUMBER, text="stop"
    )
    assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [(TO, NUMBER, "STOP")]
    assert inbound[0].provider_message_id


async def test_inbound_without_credentials_is_refused(
    router: Router, hooks: Hooks, fake: FakeInfobip
) -> None:
    method, url, headers, body = fake.inbound_request(
        f"{hooks.url}/primary/inbound", TO, NUMBER, "STOP"
    )
    del headers["Authorization"]
    assert await call(method, url, headers, body) == 403
    assert not router.is_opted_out(TO)


async def test_malformed_inbound_is_a_400(router: Router, hooks: Hooks) -> None:
    body = json.dumps({"results": [{"messageId": "1", "to": "15005550006"}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": basic(USER, PASSWORD)}
    assert await call("POST", f"{hooks.url}/primary/inbound", headers, body) == 400


# -- the parser on Infobip's documented shapes -------------------------------------------------------


def provider() -> InfobipProvider:
    return InfobipProvider(ProviderConfig(name="ib", type="infobip", options={"api_key": "k"}))


def request(doc: Any) -> WebhookRequest:
    return WebhookRequest(
        "POST", "https://example.com/ib", CIMultiDictProxy(CIMultiDict()), json.dumps(doc).encode()
    )


def report(status: dict[str, Any], error: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bulkId": "BULK-ID-123-xyz",
        "messageId": "MESSAGE-ID-123-xyz",
        "to": "41793026727",
        "sentAt": "2019-11-09T16:00:00.000+0000",
        "doneAt": "2019-11-09T16:00:00.000+0000",
        "messageCount": 1,
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "callbackData": "DLR callback data",
        "status": status,
    }
    if error is not None:
        result["error"] = error
    return {"results": [result]}


NO_ERROR = {
    "groupId": 0,
    "groupName": "OK",
    "id": 0,
    "name": "NO_ERROR",
    "description": "No Error",
    "permanent": False,
}


@pytest.mark.parametrize(
    ("status", "error", "ours", "error_code", "retryable"),
    [
        ({"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED"}, None,
         "queued", None, None),
        ({"groupId": 1, "groupName": "PENDING", "id": 7, "name": "PENDING_ENROUTE"}, None,
         "sent", None, None),
        ({"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"},
         NO_ERROR, "delivered", None, None),
        ({"groupId": 3, "id": 2, "name": "DELIVERED_TO_OPERATOR"}, NO_ERROR,
         "delivered", None, None),  # groupId alone is enough
        ({"groupId": 2, "groupName": "UNDELIVERABLE", "id": 9,
          "name": "UNDELIVERABLE_NOT_DELIVERED"},
         {"groupId": 1, "groupName": "HANDSET_ERRORS", "id": 1,
          "name": "EC_UNKNOWN_SUBSCRIBER", "permanent": True},
         "undelivered", "EC_UNKNOWN_SUBSCRIBER", False),
        ({"groupId": 2, "groupName": "UNDELIVERABLE", "id": 9,
          "name": "UNDELIVERABLE_NOT_DELIVERED"},
         {"groupId": 3, "groupName": "OPERATOR_ERRORS", "id": 4000,
          "name": "EC_OPERATOR_REFUSED", "permanent": True},
         "undelivered", "EC_OPERATOR_REFUSED", True),  # this route's, not the number's
        ({"groupId": 4, "groupName": "EXPIRED", "id": 15, "name": "EXPIRED_EXPIRED"},
         {"groupId": 1, "groupName": "HANDSET_ERRORS", "id": 6,
          "name": "EC_ABSENT_SUBSCRIBER_SM", "permanent": False},
         "undelivered", "EC_ABSENT_SUBSCRIBER_SM", True),
        ({"groupId": 5, "groupName": "REJECTED", "id": 52, "name": "REJECTED_DESTINATION"},
         NO_ERROR, "failed", "REJECTED_DESTINATION", False),
        ({"groupId": 5, "groupName": "REJECTED", "id": 12,
          "name": "REJECTED_NOT_ENOUGH_CREDITS"},
         NO_ERROR, "failed", "REJECTED_NOT_ENOUGH_CREDITS", True),
        ({"groupId": 9, "groupName": "SOMETHING_NEW", "id": 99, "name": "X"}, None,
         "unknown", None, None),
    ],
)  # fmt: skip
def test_report_status_table(
    status: dict[str, Any],
    error: dict[str, Any] | None,
    ours: str,
    error_code: str | None,
    retryable: bool | None,
) -> None:
    [receipt] = provider().parse_receipts(request(report(status, error)))
    assert (receipt.status, receipt.error_code, receipt.retryable) == (ours, error_code, retryable)
    assert (receipt.provider_message_id, receipt.message_id) == (
        "MESSAGE-ID-123-xyz",
        "DLR callback data",
    )
    assert receipt.at is not None
    assert receipt.at.isoformat() == "2019-11-09T16:00:00+00:00"


def test_a_batch_of_results_gives_one_receipt_each() -> None:
    doc = report({"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"})
    second = dict(doc["results"][0], messageId="OTHER")
    doc["results"].append(second)
    receipts = provider().parse_receipts(request(doc))
    assert [r.provider_message_id for r in receipts] == ["MESSAGE-ID-123-xyz", "OTHER"]


def test_inbound_fixture_of_the_sdk_is_understood() -> None:
    doc = {
        "results": [
            {
                "messageId": "817790313235066447",
                "from": "385916242493",
                "to": "385921004026",
                "text": "QUIZ Correct answer is Paris",
                "cleanText": "Correct answer is Paris",
                "keyword": "QUIZ",
                "receivedAt": "2019-11-09T16:00:00.000+0000",
                "smsCount": 1,
                "price": {"pricePerMessage": 0, "currency": "EUR"},
                "callbackData": "callbackData",
            }
        ],
        "messageCount": 1,
        "pendingMessageCount": 0,
    }
    [message] = provider().parse_inbound(request(doc))
    assert (message.sender, message.recipient, message.text, message.provider_message_id) == (
        "+385916242493",
        "+385921004026",
        "QUIZ Correct answer is Paris",
        "817790313235066447",
    )
    assert provider().parse_inbound(request({"results": []})) == []


# -- the official SDK --------------------------------------------------------------------------------


def test_sdk_reads_the_fakes_payloads_into_its_models(fake: FakeInfobip) -> None:
    pytest.importorskip("infobip_api_client")
    from infobip_api_client.models.sms_delivery_result import SmsDeliveryResult
    from infobip_api_client.models.sms_inbound_message_result import SmsInboundMessageResult

    record = ReceivedMessage(
        provider_message_id="4ce5d1e7-4bd4-4c86-8a3a-7ae9a0c27d23",
        to=TO,
        sender=SENDER,
        text="Your code is 123456",
        fields={
            "messages": [
                {
                    "sender": SENDER,
                    "destinations": [{"to": TO.removeprefix("+")}],
                    "content": {"text": "Your code is 123456"},
                    "webhooks": {"delivery": {"url": "https://x/s"}, "callbackData": "ours"},
                }
            ]
        },
        received_at=0.0,
        status_callback="https://x/s",
    )
    for outcome in ("queued", "sent", "delivered", "undelivered", "failed"):
        _, _, _, body = fake.receipt_request(record, outcome, None)
        parsed = SmsDeliveryResult.from_json(body.decode())
        assert parsed is not None
        assert parsed.results is not None
        [result] = parsed.results
        assert result.message_id == record.provider_message_id
        assert result.callback_data == "ours"
        assert result.status is not None
        assert result.error is not None
        assert result.done_at is not None
    _, _, _, body = fake.inbound_request("https://x/i", TO, NUMBER, "STOP now")
    inbound = SmsInboundMessageResult.from_json(body.decode())
    assert inbound is not None
    assert inbound.results is not None
    [message] = inbound.results
    assert (message.var_from, message.text, message.keyword) == (
        TO.removeprefix("+"),
        "STOP now",
        "STOP",
    )
