"""The Plivo adapter against FakePlivo, and both against the official SDK.

Behaviour: every outcome class Plivo's Message API can produce, over real HTTP
on 127.0.0.1, one per test; then the router failing over between two Plivo
accounts.

Conformance: Plivo publishes no OpenAPI description, so the reference is the
official ``plivo`` SDK (plivo-python), run against FakePlivo: it must send
through the fake, read its ``message_uuid`` array, and raise the same
exception classes for the fake's errors as it does for Plivo's (its
``process_response`` is how Plivo's statuses are known, e.g. 403 on POST
/Message/ is a geo-permission refusal).  The SDK has no base-URL option and
resets ``client.base_uri`` before each messaging call, so the tests point its
module constant ``PLIVO_API_BASE_URI`` at the fake.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import re
from functools import partial
from typing import Any

import aiohttp
import pytest
from conftest import make_config
from provider_support import (
    adapter,
    attempts,
    failover_yaml,
    fake_fixture,
    http_headers,
    otp_to,
    outbound_sms,
    route,
)
from provider_support import send_sms as send

from smsroute import ConfigError, ManualClock, Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.plivo import PlivoProvider
from smsroute.testing.plivo import FakePlivo

TO = "+4915123456789"
SENDER = "+14155550100"
CALLBACK = "https://hooks.example.com/plivo/status"
POWERPACK = "d35f2e82-d387-427f-8f2c-0b6b7e4fd4e3"


fake = fake_fixture(lambda: FakePlivo(powerpack_uuids={POWERPACK}))
fake_b = fake_fixture(FakePlivo)


def provider_for(fake: FakePlivo, *, sender: str | None = SENDER, **options: Any) -> PlivoProvider:
    return adapter(PlivoProvider, fake, options, sender=sender)


outbound = partial(outbound_sms, to=TO, country="DE", sender=SENDER)


def offline_provider() -> PlivoProvider:
    return PlivoProvider(
        ProviderConfig(
            name="plivo", type="plivo", options={"auth_id": "MA" + "A" * 18, "auth_token": "t"}
        )
    )


# -- accepted -----------------------------------------------------------------------------


async def test_accepted_reply_carries_the_first_message_uuid(fake: FakePlivo) -> None:
    reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.status_code) == (Outcome.ACCEPTED, 202)
    (record,) = fake.messages
    assert reply.provider_message_id == record.provider_message_id
    assert (record.to, record.sender, record.text) == (TO, SENDER, "Your code is 123456")


async def test_request_is_json_with_src_dst_text_and_type(fake: FakePlivo) -> None:
    await send(provider_for(fake), outbound())
    assert fake.messages[0].fields == {
        "src": SENDER,
        "dst": TO,
        "text": "Your code is 123456",
        "type": "sms",
    }


async def test_status_callback_is_sent_as_url_with_method_post(fake: FakePlivo) -> None:
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    fields = fake.messages[0].fields
    assert (fields["url"], fields["method"]) == (CALLBACK, "POST")
    assert fake.messages[0].status_callback == CALLBACK


async def test_no_url_field_without_a_status_callback(fake: FakePlivo) -> None:
    await send(provider_for(fake), outbound())
    assert "url" not in fake.messages[0].fields
    assert "method" not in fake.messages[0].fields


async def test_powerpack_is_used_when_there_is_no_sender(fake: FakePlivo) -> None:
    provider = provider_for(fake, sender=None, powerpack_uuid=POWERPACK)
    reply = await send(provider, outbound(sender=None))
    assert reply.outcome is Outcome.ACCEPTED
    assert fake.messages[0].fields["powerpack_uuid"] == POWERPACK
    assert "src" not in fake.messages[0].fields


# -- rejected: healthy, no failover ----------------------------------------------------------


async def test_invalid_number_is_rejected_and_masked_in_detail(fake: FakePlivo) -> None:
    reply = await send(provider_for(fake), outbound(to="+4900000000"))
    assert (reply.outcome, reply.status_code) == (Outcome.REJECTED, 400)
    assert reply.detail is not None
    assert "is not a valid phone number" in reply.detail
    assert "4900000000" not in reply.detail
    assert fake.messages == []


async def test_overlong_text_is_rejected(fake: FakePlivo) -> None:
    reply = await send(provider_for(fake), outbound("ж" * 738))
    assert (reply.outcome, reply.status_code) == (Outcome.REJECTED, 400)


# -- unroutable: next provider, healthy ------------------------------------------------------


async def test_country_outside_geo_permissions_is_unroutable() -> None:
    async with FakePlivo(unroutable_countries={"DE"}) as fake:
        reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.status_code) == (Outcome.UNROUTABLE, 403)


async def test_refused_sender_id_is_unroutable(fake: FakePlivo) -> None:
    reply = await send(
        provider_for(fake, sender="Acme Industries"), outbound(sender="Acme Industries")
    )
    assert (reply.outcome, reply.status_code) == (Outcome.UNROUTABLE, 400)


async def test_unknown_powerpack_is_unroutable(fake: FakePlivo) -> None:
    provider = provider_for(
        fake, sender=None, powerpack_uuid="00000000-0000-0000-0000-000000000000"
    )
    reply = await send(provider, outbound(sender=None))
    assert (reply.outcome, reply.status_code) == (Outcome.UNROUTABLE, 400)


async def test_missing_sender_is_unroutable(fake: FakePlivo) -> None:
    reply = await send(provider_for(fake, sender=None), outbound(sender=None))
    assert (reply.outcome, reply.status_code) == (Outcome.UNROUTABLE, 400)


# -- throttled: next provider, paused --------------------------------------------------------


async def test_429_is_throttled_with_its_retry_after(fake: FakePlivo) -> None:
    fake.throttle(retry_after=12)
    reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.status_code, reply.retry_after) == (Outcome.THROTTLED, 429, 12.0)


# -- auth: next provider, opens the breaker ------------------------------------------------


async def test_wrong_token_is_auth_and_stays_out_of_detail(fake: FakePlivo) -> None:
    reply = await send(provider_for(fake, auth_token="not-the-token"), outbound())
    assert (reply.outcome, reply.status_code) == (Outcome.AUTH, 401)
    assert "not-the-token" not in repr(reply)


async def test_out_of_credit_is_auth(fake: FakePlivo) -> None:
    # Plivo's status and wording for this are unconfirmed: its text decides.
    fake.fail(400, "Insufficient credit to send this message")
    reply = await send(provider_for(fake), outbound())
    assert reply.outcome is Outcome.AUTH


# -- transient: next provider, unhealthy --------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_transient(fake: FakePlivo, status: int) -> None:
    fake.fail(status)
    reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.status_code) == (Outcome.TRANSIENT, status)


async def test_garbage_answer_is_a_transient_malformed_reply(fake: FakePlivo) -> None:
    fake.garbage()
    reply = await send(provider_for(fake), outbound())
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail is not None
    assert reply.detail.startswith("malformed reply")


def test_success_without_a_message_uuid_is_malformed() -> None:
    body = b'{"api_id": "x", "message": "message(s) queued", "message_uuid": []}'
    reply = offline_provider().parse_response(202, http_headers(), body)
    assert reply.outcome is Outcome.TRANSIENT


def test_destination_listed_as_invalid_number_is_rejected() -> None:
    # Bulk sends answer 202 and list refused destinations (plivo-node pull request 215).
    body = b'{"api_id": "x", "message": "message(s) queued", "message_uuid": [], "invalid_number": ["4900000000"]}'
    reply = offline_provider().parse_response(202, http_headers(), body)
    assert reply.outcome is Outcome.REJECTED


def test_html_502_from_an_edge_is_transient() -> None:
    reply = offline_provider().parse_response(502, http_headers(), b"<html>Bad Gateway</html>")
    assert (reply.outcome, reply.detail) == (
        Outcome.TRANSIENT,
        "Plivo HTTP 502 (no JSON error body)",
    )


# -- through the router -------------------------------------------------------------------


def two_accounts(a: FakePlivo, b: FakePlivo) -> str:
    return failover_yaml(a, b, SENDER, names=("plivo-a", "plivo-b"))


OTP = otp_to(TO)


async def test_router_fails_over_from_a_failing_plivo_account_to_another(
    fake: FakePlivo, fake_b: FakePlivo
) -> None:
    fake.fail(500)
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("plivo-a", Outcome.TRANSIENT), ("plivo-b", Outcome.ACCEPTED)]
    assert result.provider_message_id == fake_b.messages[0].provider_message_id


async def test_router_stops_at_an_invalid_number(fake: FakePlivo, fake_b: FakePlivo) -> None:
    fake.fail(400, "'4915123456789' is not a valid phone number.")
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("plivo-a", Outcome.REJECTED)]
    assert fake_b.requests == 0


async def test_hang_is_a_timeout_and_an_otp_fails_over(fake: FakePlivo, fake_b: FakePlivo) -> None:
    fake.hang()
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("plivo-a", Outcome.TIMEOUT), ("plivo-b", Outcome.ACCEPTED)]


def test_config_rejects_an_auth_id_that_is_not_plivos() -> None:
    with pytest.raises(ConfigError, match="Auth ID"):
        make_config(
            """
            providers:
              p:
                type: plivo
                auth_id: ACabc
                auth_token: t
                from: "+14155550100"
            rules:
              - name: default
                providers: [p]
            """
        )


def test_config_rejects_a_sender_and_a_powerpack_together() -> None:
    problems = PlivoProvider.check_options(
        {"auth_id": "MA" + "A" * 18, "auth_token": "t", "from": SENDER, "powerpack_uuid": POWERPACK}
    )
    assert [key for key, _ in problems] == ["powerpack_uuid"]


# -- conformance: the official SDK ------------------------------------------------------------


@pytest.fixture
def plivo_sdk(monkeypatch: pytest.MonkeyPatch, fake: FakePlivo) -> Any:
    plivo = pytest.importorskip("plivo")
    import plivo.rest.client as rest_client

    monkeypatch.setattr(rest_client, "PLIVO_API_BASE_URI", f"{fake.url}/v1/Account")
    client = plivo.RestClient(fake.auth_id, fake.auth_token, timeout=5)
    client.session.trust_env = False  # no proxy from the environment for 127.0.0.1
    return client


async def test_sdk_sends_through_the_fake_and_reads_the_uuid_array(
    plivo_sdk: Any, fake: FakePlivo
) -> None:
    response = await asyncio.to_thread(
        plivo_sdk.messages.create, src=SENDER, dst=TO, text="Code 123456", url=CALLBACK
    )
    (record,) = fake.messages
    assert response.message_uuid == [record.provider_message_id]
    assert response.message == "message(s) queued"
    assert re.fullmatch(r"[0-9a-f-]{36}", response.api_id)
    assert (record.to, record.sender, record.status_callback) == (TO, SENDER, CALLBACK)


async def test_sdk_request_uses_the_adapters_url_and_basic_auth(
    plivo_sdk: Any, fake: FakePlivo
) -> None:
    await asyncio.to_thread(plivo_sdk.messages.create, src=SENDER, dst=TO, text="hi")
    sdk_fields = dict(fake.messages[0].fields)
    request = provider_for(fake).build_request(outbound("hi"))
    assert request.url == f"{fake.url}/v1/Account/{fake.auth_id}/Message/"
    token = base64.b64encode(f"{fake.auth_id}:{fake.auth_token}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {token}"
    # Every field we send, the SDK sends too, with the same value.
    assert {k: sdk_fields[k] for k in request.json} == request.json


def test_adapter_sends_only_fields_the_sdk_knows() -> None:
    plivo = pytest.importorskip("plivo")
    names = {
        re.sub(r"_+$", "", p)
        for p in inspect.signature(plivo.resources.messages.Messages.create).parameters
    }
    sent = offline_provider().build_request(outbound(status_callback=CALLBACK)).json
    assert set(sent) <= names
    powerpack = PlivoProvider(
        ProviderConfig(
            name="p",
            type="plivo",
            options={"auth_id": "MA" + "A" * 18, "auth_token": "t", "powerpack_uuid": POWERPACK},
        )
    )
    assert set(powerpack.build_request(outbound(sender=None)).json) <= names


async def test_sdk_raises_validation_error_for_the_fakes_invalid_number(plivo_sdk: Any) -> None:
    plivo = pytest.importorskip("plivo")
    with pytest.raises(plivo.exceptions.ValidationError, match="is not a valid phone number"):
        await asyncio.to_thread(plivo_sdk.messages.create, src=SENDER, dst="+4900000000", text="hi")


async def test_sdk_reads_the_fakes_403_as_a_geo_permission_error(
    plivo_sdk: Any, fake: FakePlivo
) -> None:
    plivo = pytest.importorskip("plivo")
    fake.unroutable_countries.add("DE")
    with pytest.raises(plivo.exceptions.GeoPermissionError):
        await asyncio.to_thread(plivo_sdk.messages.create, src=SENDER, dst=TO, text="hi")


async def test_sdk_reads_the_fakes_401_as_an_authentication_error(fake: FakePlivo) -> None:
    plivo = pytest.importorskip("plivo")
    import plivo.rest.client as rest_client

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rest_client, "PLIVO_API_BASE_URI", f"{fake.url}/v1/Account")
        client = plivo.RestClient(fake.auth_id, "wrong-token", timeout=5)
        client.session.trust_env = False
        with pytest.raises(plivo.exceptions.AuthenticationError):
            await asyncio.to_thread(client.messages.create, src=SENDER, dst=TO, text="hi")


async def test_fake_error_body_is_plivos_api_id_and_error(fake: FakePlivo) -> None:
    fake.fail(500)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v1/Account/{fake.auth_id}/Message/", json={}) as resp,
    ):
        doc = json.loads(await resp.read())
    assert resp.status == 500
    assert set(doc) == {"api_id", "error"}
