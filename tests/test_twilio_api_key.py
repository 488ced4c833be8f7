"""Twilio with an API key: it sends with the key, but Twilio signs webhooks with the
account's Auth Token (never with the key's secret), so that is what verifies them.

Over real sockets: a FakeTwilio that also knows one API key, the router's webhook app.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from conftest import Hooks, call, make_config, state_of
from provider_support import otp_to, routing_yaml, sent_record, serving

from smsroute import Router
from smsroute.configload import parse_config
from smsroute.errors import ConfigError
from smsroute.providers.twilio import twilio_signature
from smsroute.testing import FakeTwilio

HANDSET = "+4915123456789"
OUR_NUMBER = "+15005550006"
KEY_SID = "SK" + "0123456789abcdef" * 2
KEY_SECRET = "the-api-key-secret-0123456789abc"
SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "config" / "schema.json").read_text()
)


class FakeTwilioWithKey(FakeTwilio):
    """FakeTwilio whose account also has one API key: Basic auth with
    ``KEY_SID:KEY_SECRET`` is accepted as Twilio accepts it.  Webhooks are still
    signed with the account's Auth Token, as Twilio signs them."""

    def _authorized(self, request: Any) -> bool:
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{KEY_SID}:{KEY_SECRET}".encode()).decode()
        return hmac.compare_digest(header, expected) or super()._authorized(request)


def twilio_lines(fake: FakeTwilio, *, auth_token: bool = True) -> list[str]:
    lines = [
        "type: twilio",
        f"base_url: {fake.url}",
        f"account_sid: {fake.account_sid}",
        f"api_key_sid: {KEY_SID}",
        f"api_key_secret: {KEY_SECRET}",
        f'from: "{OUR_NUMBER}"',
    ]
    if auth_token:
        lines.append(f"auth_token: {fake.auth_token}")
    return lines


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilioWithKey]:
    async with FakeTwilioWithKey() as f:
        yield f


@pytest.fixture
async def router(hooks: Hooks, fake: FakeTwilioWithKey) -> AsyncIterator[Router]:
    config = make_config(routing_yaml({"twilio": twilio_lines(fake)}, webhook_url=hooks.url))
    async with serving(hooks, config) as r:
        yield r


async def test_sends_with_the_key_and_verifies_receipts_with_the_auth_token(
    router: Router, fake: FakeTwilioWithKey
) -> None:
    fake.receipts("delivered")
    result = await router.send(otp_to(HANDSET))
    assert result.ok
    async with asyncio.timeout(5):
        await fake.wait_receipts(1)
    # The fake signed with the account's Auth Token: accepted, and applied.
    assert fake.receipts_sent == [(result.provider_message_id, "delivered", 200)]
    assert await state_of(router, result.message_id) == "delivered"


async def test_a_receipt_signed_with_the_key_secret_is_refused(
    router: Router, fake: FakeTwilioWithKey
) -> None:
    message_id, record = await sent_record(router, fake, otp_to(HANDSET))
    _, url, headers, body = fake.receipt_request(record, "delivered", None)
    params = parse_qsl(body.decode(), keep_blank_values=True)
    forged = {**headers, "X-Twilio-Signature": twilio_signature(KEY_SECRET, url, params)}
    assert await call("POST", url, forged, body) == 403
    assert await state_of(router, message_id) == "accepted"
    assert await call("POST", url, headers, body) == 200  # the Auth Token's signature
    assert await state_of(router, message_id) == "delivered"


def config_text(
    fake_url: str,
    *,
    webhook_url: str | None,
    key_secret: bool = True,
    extra: dict[str, str] | None = None,
) -> str:
    lines = [
        "type: twilio",
        f"base_url: {fake_url}",
        "account_sid: AC" + "0" * 32,
        f"api_key_sid: {KEY_SID}",
        *([f"api_key_secret: {KEY_SECRET}"] if key_secret else []),
        f'from: "{OUR_NUMBER}"',
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    defaults = {"webhook_url": webhook_url} if webhook_url else {}
    return routing_yaml({"tw": lines}, **defaults)


@pytest.mark.parametrize(
    ("webhook_url", "extra"),
    [
        ("https://hooks.example.com/sms", {}),
        (None, {"status_callback": "https://hooks.example.com/sms/tw/status"}),
    ],
    ids=["defaults.webhook_url", "status_callback"],
)
def test_api_key_with_webhooks_and_no_auth_token_is_a_config_error(
    webhook_url: str | None, extra: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("https://api.twilio.com", webhook_url=webhook_url, extra=extra))
    error = caught.value
    assert error.path == "providers.tw.api_key_sid"
    assert "webhooks cannot be verified" in str(error)
    assert "Auth Token" in str(error)
    assert "add auth_token" in str(error)
    assert KEY_SECRET not in str(error)


def test_api_key_with_webhooks_and_auth_token_or_webhook_secret_loads() -> None:
    url = "https://hooks.example.com/sms"
    for extra in ({"auth_token": "tok"}, {"webhook_secret": "shared"}):
        config = parse_config(config_text("https://api.twilio.com", webhook_url=url, extra=extra))
        assert config.providers["tw"].options["api_key_secret"] == KEY_SECRET


def test_api_key_sid_without_its_secret_is_a_config_error() -> None:
    text = config_text(
        "https://api.twilio.com", webhook_url=None, key_secret=False, extra={"auth_token": "tok"}
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.path == "providers.tw.api_key_secret"
    assert "api_key_sid needs api_key_secret" in str(caught.value)


async def test_without_webhooks_the_key_alone_sends_and_any_webhook_is_refused(
    hooks: Hooks, fake: FakeTwilioWithKey
) -> None:
    # No webhook_url, no status_callback: no auth_token is needed to send...
    config = make_config(routing_yaml({"twilio": twilio_lines(fake, auth_token=False)}))
    async with serving(hooks, config) as router:
        result = await router.send(otp_to(HANDSET))
        assert result.ok
        # ...but an inbound message (its URL set in Twilio's console) cannot be
        # verified: refused, never accepted unverified.
        inbound: list[object] = []
        router.on_inbound(inbound.append)
        status = await fake.send_inbound(
            f"{hooks.url}/twilio/inbound", sender=HANDSET, recipient=OUR_NUMBER, text="STOP"
        )
        assert status == 403
        assert inbound == []
        assert not router.is_opted_out(HANDSET)


def test_the_schema_says_what_the_loader_says() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    with_key = yaml.safe_load(
        config_text("https://api.twilio.com", webhook_url=None, extra={"auth_token": "tok"})
    )
    assert list(validator.iter_errors(with_key)) == []
    without_secret = yaml.safe_load(
        config_text(
            "https://api.twilio.com",
            webhook_url=None,
            key_secret=False,
            extra={"auth_token": "tok"},
        )
    )
    assert list(validator.iter_errors(without_secret))
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(without_secret))
