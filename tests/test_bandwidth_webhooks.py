"""Bandwidth message callbacks over real sockets.

FakeBandwidth calls the router's webhook app on 127.0.0.1 as Bandwidth calls an
Application's callback URLs: JSON arrays of ``message-sending`` /
``message-sent`` / ``message-delivered`` / ``message-failed`` events (to the
OutboundCallbackUrl) and ``message-received`` (to the InboundCallbackUrl), with
HTTP Basic auth from the Application's callback credentials.

Bandwidth does not sign messaging callbacks and its SDK has no validation
helper; the Basic auth is RFC 7617.  What Bandwidth's references do cover is
the payloads: each is validated against the spec's ``statusCallback`` /
``inboundCallback`` schemas (Bandwidth/python-sdk ``bandwidth.yml``, read from
``SPECS_DIR``) and parsed with the official ``bandwidth-sdk`` models.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import SPECS_DIR, Hooks, basic, call, make_config, state_of
from provider_support import (
    assert_early_receipt_correlated,
    assert_events_at_the_other_url_ignored,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    load_spec,
    otp_to,
    provider_settings,
    routing_yaml,
    sent_record,
    serving,
)

from smsroute import ConfigError, DeliveryReport, Router
from smsroute.testing.bandwidth import FakeBandwidth
from smsroute.testing.fake import ReceivedMessage

SENDER = "+19195551234"
NUMBER = "+4915123456789"
OTP = otp_to(NUMBER)
SPEC_FILE = SPECS_DIR / "bandwidth.yml"


@pytest.fixture
async def fake(hooks: Hooks) -> AsyncIterator[FakeBandwidth]:
    # The Application's OutboundCallbackUrl points at our status URL.
    async with FakeBandwidth(callback_url=f"{hooks.url}/bandwidth/status") as f:
        yield f


def config_text(hooks: Hooks, fake: FakeBandwidth, *, credentials: bool = True) -> str:
    creds = (
        [
            f'callback_username: "{fake.callback_username}"',
            f'callback_password: "{fake.callback_password}"',
        ]
        if credentials
        else []
    )
    settings = provider_settings(fake, SENDER, *creds)
    return routing_yaml({"bandwidth": settings}, webhook_url=hooks.url)


@pytest.fixture
async def router(hooks: Hooks, fake: FakeBandwidth) -> AsyncIterator[Router]:
    async with serving(hooks, make_config(config_text(hooks, fake))) as r:
        yield r


@pytest.fixture(scope="module")
def spec_doc() -> dict[str, Any]:
    return load_spec(SPEC_FILE)


def events(body: bytes) -> list[dict[str, Any]]:
    doc = json.loads(body)
    assert isinstance(doc, list)
    return doc


# -- the whole loop over sockets ---------------------------------------------------------------


async def test_receipt_with_the_applications_credentials_updates_status(
    router: Router, fake: FakeBandwidth
) -> None:
    result, reports = await delivered_round_trip(router, fake, OTP)
    (report,) = reports
    assert (report.message_id, report.provider, report.status) == (
        result.message_id,
        "bandwidth",
        "delivered",
    )
    # Our id travels as the message's tag; no query parameter is needed.
    assert fake.messages[0].fields["tag"] == result.message_id


async def test_receipt_arriving_before_send_returns_is_correlated(
    router: Router, fake: FakeBandwidth
) -> None:
    await assert_early_receipt_correlated(router, fake, OTP)


async def test_the_echoed_tag_alone_does_not_correlate(router: Router, fake: FakeBandwidth) -> None:
    """Our id in the tag must come with the id Bandwidth gave that message (issue 12)."""
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    (event,) = events(body)
    event["message"]["id"] = "1589228074636lm4k2je7j7jklbn2"  # an id we never recorded
    assert await call("POST", url, headers, json.dumps([event]).encode()) == 200
    assert await state_of(router, message_id) == "accepted"


async def test_every_event_of_an_array_is_applied_in_order(
    router: Router, fake: FakeBandwidth
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    batch = [
        events(fake.receipt_request(record, status, None)[3])[0]
        for status in ("queued", "sent", "delivered")
    ]
    url = record.status_callback or ""
    assert await call("POST", url, fake.callback_headers(), json.dumps(batch).encode()) == 200
    state = await router.status(message_id)
    assert state is not None
    assert [h[0] for h in state.history] == ["accepted", "queued", "sent", "delivered"]


async def test_a_single_event_object_as_the_spec_shows_it_is_accepted(
    router: Router, fake: FakeBandwidth
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    (event,) = events(body)
    assert await call("POST", url, headers, json.dumps(event).encode()) == 200
    assert await state_of(router, message_id) == "delivered"


@pytest.mark.parametrize(
    ("outcome", "code", "status", "retryable"),
    [
        ("undelivered", None, "undelivered", True),  # 4702: subscriber unavailable (carrier)
        ("failed", None, "failed", True),  # 4432: account not enabled for the country
        ("undelivered", 4720, "undelivered", False),  # carrier: invalid destination, landline
        ("undelivered", 4775, "undelivered", False),  # carrier: the recipient opted out
        ("undelivered", 5600, "undelivered", True),  # carrier queue full
        ("failed", 5211, "failed", True),  # Bandwidth busy: never reached a carrier
        ("undelivered", 9902, "undelivered", None),  # receipt timed out: may have arrived
    ],
)
async def test_message_failed_is_classified_by_its_error_code(
    router: Router,
    fake: FakeBandwidth,
    outcome: str,
    code: int | None,
    status: str,
    retryable: bool | None,
) -> None:
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    message_id, record = await sent_record(router, fake, OTP)
    assert await fake.send_receipt(record, outcome, code) == 200
    (report,) = reports
    expected_code = (
        str(code) if code is not None else ("4702" if outcome == "undelivered" else "4432")
    )
    assert (report.status, report.error_code, report.retryable) == (
        status,
        expected_code,
        retryable,
    )
    assert await state_of(router, message_id) == status


async def test_a_retried_callback_is_processed_once(router: Router, fake: FakeBandwidth) -> None:
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    _, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    for _ in range(3):  # Bandwidth retries for 24 h until it gets a 2xx
        assert await call("POST", url, headers, body) == 200
    assert len(reports) == 1


# -- Basic auth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "wrong-password",
        "wrong-user",
        "one-byte",
        "Bearer abc",
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
)
async def test_callback_without_the_applications_credentials_is_refused(
    router: Router, fake: FakeBandwidth, authorization: str | None
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    user, password = fake.callback_username or "", fake.callback_password or ""
    header = {
        "wrong-password": basic(user, password + "x"),
        "wrong-user": basic(user + "x", password),
        "one-byte": basic(user, password[:-1] + chr(ord(password[-1]) ^ 1)),
    }.get(authorization or "", authorization)
    sent = {"Content-Type": "application/json"}
    if header is not None:
        sent["Authorization"] = header
    assert await call("POST", url, sent, body) == 403
    assert await state_of(router, message_id) == "accepted"
    assert await call("POST", url, headers, body) == 200  # the genuine one still goes through


async def test_without_callback_credentials_callbacks_are_accepted(
    hooks: Hooks, fake: FakeBandwidth
) -> None:
    async with serving(hooks, make_config(config_text(hooks, fake, credentials=False))) as router:
        message_id, record = await sent_record(router, fake, OTP)
        _, url, _, body = fake.receipt_request(record, "delivered", None)
        assert await call("POST", url, {"Content-Type": "application/json"}, body) == 200
        assert await state_of(router, message_id) == "delivered"


def test_callback_username_without_password_is_a_config_error(
    hooks: Hooks, fake: FakeBandwidth
) -> None:
    text = config_text(hooks, fake, credentials=False).replace(
        f'from: "{SENDER}"', f'from: "{SENDER}"\n    callback_username: smsroute'
    )
    with pytest.raises(ConfigError, match="callback_password"):
        make_config(text)


# -- malformed and misdirected ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'[{"type": "message-delivered"}]',
        b'[{"type": "message-delivered", "message": {"to": []}}]',
        b'[{"message": {"id": "1589228074636lm4k2je7j7jklbn2"}}]',
    ],
    ids=["not-json", "not-objects", "no-message", "no-message-id", "no-type"],
)
async def test_malformed_callback_is_a_400(
    router: Router, hooks: Hooks, fake: FakeBandwidth, body: bytes
) -> None:
    url = f"{hooks.url}/bandwidth/status"
    assert await call("POST", url, fake.callback_headers(), body) == 400


async def test_one_malformed_event_refuses_the_whole_array(
    router: Router, fake: FakeBandwidth
) -> None:
    message_id, record = await sent_record(router, fake, OTP)
    good = events(fake.receipt_request(record, "delivered", None)[3])[0]
    body = json.dumps([good, {"type": "message-sent"}]).encode()
    assert await call("POST", record.status_callback or "", fake.callback_headers(), body) == 400
    assert await state_of(router, message_id) == "accepted"


async def test_inbound_without_a_sender_is_a_400(
    router: Router, hooks: Hooks, fake: FakeBandwidth
) -> None:
    url = f"{hooks.url}/bandwidth/inbound"
    _, _, headers, body = fake.inbound_request(url, NUMBER, SENDER, "STOP")
    (event,) = events(body)
    del event["message"]["from"]
    assert await call("POST", url, headers, json.dumps([event]).encode()) == 400
    assert not router.is_opted_out(NUMBER)


async def test_events_at_the_other_url_are_answered_200_and_ignored(
    router: Router, hooks: Hooks, fake: FakeBandwidth
) -> None:
    await assert_events_at_the_other_url_ignored(
        router, fake, f"{hooks.url}/bandwidth", handset=NUMBER, our_number=SENDER
    )


# -- inbound and opt-outs ------------------------------------------------------------------------


async def test_inbound_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, fake: FakeBandwidth
) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router,
        fake,
        f"{hooks.url}/bandwidth/inbound",
        sender=NUMBER,
        recipient=SENDER,
        text="stop",
        opted_out="+49 151 23456789",
    )
    (message,) = inbound
    assert (message.provider, message.sender, message.recipient, message.keyword) == (
        "bandwidth",
        NUMBER,
        SENDER,
        "STOP",
    )


async def test_inbound_stop_without_credentials_is_refused(
    router: Router, hooks: Hooks, fake: FakeBandwidth
) -> None:
    url = f"{hooks.url}/bandwidth/inbound"
    _, _, _, body = fake.inbound_request(url, NUMBER, SENDER, "STOP")
    assert await call("POST", url, {"Content-Type": "application/json"}, body) == 403
    assert not router.is_opted_out(NUMBER)


# -- the fake's callbacks against Bandwidth's spec and SDK ------------------------------------------


def all_callbacks(fake: FakeBandwidth, record: ReceivedMessage) -> list[dict[str, Any]]:
    out = [
        events(fake.receipt_request(record, status, None)[3])[0]
        for status in ("queued", "sent", "delivered", "undelivered", "failed")
    ]
    return out + events(fake.inbound_request("http://x/in", NUMBER, SENDER, "hi")[3])


async def test_the_fakes_callbacks_match_the_specs_schemas(
    router: Router, fake: FakeBandwidth, spec_doc: dict[str, Any]
) -> None:
    from openapi_schema_validator import OAS30Validator

    _, record = await sent_record(router, fake, OTP)

    def validator(name: str) -> OAS30Validator:
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec_doc["components"]}
        return OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER)

    status, inbound = validator("statusCallback"), validator("inboundCallback")
    for event in all_callbacks(fake, record):
        check = inbound if event["type"] == "message-received" else status
        problems = [e.message for e in check.iter_errors(event)]
        assert problems == [], (event["type"], problems)
        known = set(spec_doc["components"]["schemas"]["statusCallbackMessage"]["properties"])
        assert set(event["message"]) <= known | {"media"}


async def test_the_fakes_callbacks_parse_with_the_sdks_models(
    router: Router, fake: FakeBandwidth
) -> None:
    pytest.importorskip("bandwidth")
    from bandwidth.models.inbound_callback import InboundCallback  # type: ignore[import-untyped]
    from bandwidth.models.status_callback import StatusCallback  # type: ignore[import-untyped]

    _, record = await sent_record(router, fake, OTP)
    for event in all_callbacks(fake, record):
        if event["type"] == "message-received":
            inbound = InboundCallback.from_dict(event)
            assert inbound is not None
            assert inbound.message.var_from == NUMBER
            assert not inbound.additional_properties
        else:
            status = StatusCallback.from_dict(event)
            assert status is not None
            assert status.message.id == record.provider_message_id
            assert status.message.tag == record.fields["tag"]
            assert not status.additional_properties
