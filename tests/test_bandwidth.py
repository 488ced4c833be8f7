"""The Bandwidth adapter against FakeBandwidth, and both against Bandwidth's own references.

Behaviour: every outcome class Messaging API v2 can produce when creating a
message, over real HTTP on 127.0.0.1, one per test; then the router failing
over between two Bandwidth accounts.

Conformance, two independent references:

- Bandwidth's OpenAPI description (Bandwidth/python-sdk ``bandwidth.yml``, read
  vendored in ``tests/specs``), checked with ``openapi-core``: the
  request the adapter puts on the wire against ``createMessage``, FakeBandwidth's
  answers against the operation's 202 and error responses.
- The official ``bandwidth-sdk``, generated from that spec, run against FakeBandwidth.
"""

from __future__ import annotations

import asyncio
import base64
import json
from functools import partial
from typing import Any

import aiohttp
import attrs
import pytest
from conftest import SPECS_DIR, make_config
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest
from provider_support import (
    Exchange,
    adapter,
    attempts,
    failover_yaml,
    fake_fixture,
    http_headers,
    load_spec,
    outbound_sms,
    route,
    send_sms_captured,
)

from smsroute import ConfigError, Message, Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.bandwidth import BandwidthProvider
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.testing.bandwidth import FakeBandwidth

SPEC_FILE = SPECS_DIR / "bandwidth.yml"
BANDWIDTH_HOST = "https://messaging.bandwidth.com"  # the spec's server is {this}/api/v2
MESSAGES_PATH = "/users/{accountId}/messages"
TO = "+14155550100"
SENDER = "+19195551234"
CALLBACK = "https://hooks.example.com/bandwidth/status"
OTP = Message(to=TO, text="Code 123456", category="otp")


fake = fake_fixture(FakeBandwidth)
fake_b = fake_fixture(FakeBandwidth)


def provider_for(fake: FakeBandwidth, **options: Any) -> BandwidthProvider:
    return adapter(BandwidthProvider, fake, options, sender=SENDER)


outbound = partial(outbound_sms, to=TO, country="US", sender=SENDER)


@attrs.define
class BandwidthExchange(Exchange):
    def spec_request(self, base_url: str) -> MockRequest:
        """The request as if sent to messaging.bandwidth.com: same path."""
        return self.request_moved(BANDWIDTH_HOST, base_url)


async def send_captured(
    provider: BandwidthProvider, sms: OutboundSMS | None = None
) -> tuple[BandwidthExchange, Reply]:
    return await send_sms_captured(provider, sms or outbound(), BandwidthExchange())


async def send(provider: BandwidthProvider, sms: OutboundSMS | None = None) -> Reply:
    return (await send_captured(provider, sms))[1]


# -- the spec, loaded once per module ------------------------------------------------------


@pytest.fixture(scope="module")
def spec_doc() -> dict[str, Any]:
    return load_spec(SPEC_FILE)


@pytest.fixture(scope="module")
def openapi(spec_doc: dict[str, Any]) -> OpenAPI:
    return OpenAPI.from_dict(spec_doc)  # the spec itself is validated here (about 1.5 s)


def assert_valid_request(
    openapi: OpenAPI, wire: BandwidthExchange, base_url: str
) -> dict[str, Any]:
    result = openapi.unmarshal_request(wire.spec_request(base_url))
    problems = [f"{e!r}: {e.__cause__}" for e in result.errors]
    assert not problems, problems
    body: dict[str, Any] = json.loads(wire.request_body)
    return body


# -- the adapter's request against createMessage -----------------------------------------------


async def test_adapter_request_matches_create_message_spec(
    openapi: OpenAPI, fake: FakeBandwidth
) -> None:
    wire, reply = await send_captured(provider_for(fake))
    body = assert_valid_request(openapi, wire, fake.url)
    assert body == {
        "applicationId": fake.application_id,
        "to": [TO],
        "from": SENDER,
        "text": "Your code is 123456",
        "tag": "0123456789abcdef0123456789abcdef",  # our message id, echoed in callbacks
    }
    assert wire.request_headers["Content-Type"].startswith("application/json")
    assert reply.provider_message_id == fake.messages[0].provider_message_id


async def test_adapter_request_with_priority_matches_spec(
    openapi: OpenAPI, fake: FakeBandwidth
) -> None:
    wire, _ = await send_captured(provider_for(fake, priority="high"))
    assert assert_valid_request(openapi, wire, fake.url)["priority"] == "high"


async def test_adapter_authenticates_with_the_specs_basic_scheme(
    spec_doc: dict[str, Any], fake: FakeBandwidth
) -> None:
    assert spec_doc["components"]["securitySchemes"]["Basic"]["scheme"] == "basic"
    wire, _ = await send_captured(provider_for(fake))
    scheme, _, token = wire.request_headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"{fake.username}:{fake.password}"


async def test_adapter_sends_only_fields_the_spec_defines(
    spec_doc: dict[str, Any], fake: FakeBandwidth
) -> None:
    # messageRequest allows unknown properties: a misspelt field would pass the schema.
    schema = spec_doc["components"]["schemas"]["messageRequest"]
    wire, _ = await send_captured(
        provider_for(fake, priority="default"), outbound(status_callback=CALLBACK)
    )
    assert set(json.loads(wire.request_body)) <= set(schema["properties"])


def test_adapter_default_url_is_the_specs_server(spec_doc: dict[str, Any]) -> None:
    (server,) = spec_doc["paths"][MESSAGES_PATH]["servers"]
    provider = BandwidthProvider(
        ProviderConfig(
            name="bandwidth",
            type="bandwidth",
            options={
                "account_id": 9900000,
                "username": "u",
                "password": "p",
                "application_id": "a",
            },
        )
    )
    assert provider.build_request(outbound()).url == server["url"] + "/users/9900000/messages"


# -- FakeBandwidth's answers against the spec ---------------------------------------------------


async def test_fake_success_response_matches_message_schema(
    openapi: OpenAPI, fake: FakeBandwidth
) -> None:
    wire, _ = await send_captured(provider_for(fake))
    assert wire.status == 202
    openapi.validate_response(wire.spec_request(fake.url), wire.spec_response())
    doc = wire.json()
    assert (doc["direction"], doc["owner"], doc["segmentCount"]) == ("out", SENDER, 1)
    assert doc["applicationId"] == fake.application_id


async def test_fake_counts_segments_as_bandwidth_does(fake: FakeBandwidth) -> None:
    wire, _ = await send_captured(provider_for(fake), outbound("ж" * 71))
    assert wire.json()["segmentCount"] == 2  # UCS-2, 71 > 70 units


@pytest.mark.parametrize(
    ("script", "status", "kind"),
    [
        pytest.param("invalid-to", 400, "request-validation", id="400"),
        pytest.param("bad-password", 401, "unauthorized", id="401"),
        pytest.param("forbidden", 403, "forbidden", id="403"),
        pytest.param("throttle", 429, "max-message-queue-size-exceeded", id="429"),
        pytest.param("fail-500", 500, "internal-server-error", id="500"),
    ],
)
async def test_fake_error_bodies_match_the_specs_error_schemas(
    openapi: OpenAPI, fake: FakeBandwidth, script: str, status: int, kind: str
) -> None:
    options: dict[str, Any] = {"password": "wrong"} if script == "bad-password" else {}
    sms = outbound(to="+1415555010") if script == "invalid-to" else outbound()
    if script == "forbidden":
        fake.fail(403)
    elif script == "throttle":
        fake.throttle(retry_after=2)
    elif script == "fail-500":
        fake.fail(500)
    wire, _ = await send_captured(provider_for(fake, **options), sms)
    assert wire.status == status
    openapi.validate_response(wire.spec_request(fake.url), wire.spec_response())
    assert wire.json()["type"] == kind
    assert fake.messages == []


async def test_fake_refuses_a_body_that_is_not_json_with_415(
    openapi: OpenAPI, fake: FakeBandwidth
) -> None:
    wire = BandwidthExchange()
    url = f"{fake.url}/api/v2/users/{fake.account_id}/messages"
    credentials = base64.b64encode(f"{fake.username}:{fake.password}".encode()).decode()
    async with (
        aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session,
        session.post(
            url, data={"to": TO}, headers={"Authorization": f"Basic {credentials}"}
        ) as resp,
    ):
        await resp.read()
    assert wire.status == 415
    assert wire.json()["type"] == "unsupported-content-type"
    openapi.validate_response(wire.spec_request(fake.url), wire.spec_response())


async def test_fake_validation_error_lists_every_bad_field(fake: FakeBandwidth) -> None:
    wire, _ = await send_captured(provider_for(fake), outbound("", to="+1415", sender=None))
    fields = {e["fieldName"] for e in wire.json()["fieldErrors"]}
    assert fields == {"to", "from", "text"}


# -- accepted -----------------------------------------------------------------------------------


async def test_accepted_message_id_is_the_provider_message_id(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.ACCEPTED
    assert reply.status_code == 202
    (record,) = fake.messages
    assert reply.provider_message_id == record.provider_message_id
    assert (record.to, record.sender, record.text) == (TO, SENDER, "Your code is 123456")


async def test_status_callback_cannot_travel_with_the_message(fake: FakeBandwidth) -> None:
    # Bandwidth has no per-message callback field: receipts go to the application's URL.
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    (record,) = fake.messages
    assert record.status_callback is None
    assert CALLBACK not in json.dumps(record.fields)


def accounts(a: FakeBandwidth, b: FakeBandwidth, *extra: str) -> str:
    """Two accounts, ``extra`` lines added to each, "primary" tried first."""
    return failover_yaml(a, b, SENDER, *extra, default_region="US")


def test_config_explains_that_status_callback_belongs_to_the_application(
    fake: FakeBandwidth,
) -> None:
    text = accounts(fake, fake, f"status_callback: {CALLBACK}")
    with pytest.raises(ConfigError, match="callback URL of the application"):
        make_config(text)


def test_config_refuses_an_unknown_priority(fake: FakeBandwidth) -> None:
    with pytest.raises(ConfigError, match="priority"):
        make_config(accounts(fake, fake, "priority: urgent"))


# -- rejected -----------------------------------------------------------------------------------


async def test_invalid_number_is_rejected_and_not_quoted(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake), outbound(to="+1415555010"))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (400, "request-validation")
    assert reply.detail is not None
    assert "to:" in reply.detail
    assert "1415555010" not in reply.detail  # Bandwidth quotes the number; scrubbed


async def test_text_over_2048_characters_is_rejected(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake), outbound("x" * 2049))
    assert reply.outcome is Outcome.REJECTED


# -- unroutable ---------------------------------------------------------------------------------


async def test_sender_bandwidth_cannot_use_is_unroutable(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake), outbound(sender="ACME CORPORATION"))  # > 11 chars
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.detail is not None
    assert "from:" in reply.detail


async def test_wrong_application_is_unroutable(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake, application_id="not-this-app"))
    assert reply.outcome is Outcome.UNROUTABLE


# -- throttled ----------------------------------------------------------------------------------


async def test_full_queue_is_throttled_with_retry_after(fake: FakeBandwidth) -> None:
    fake.throttle(retry_after=5, times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.THROTTLED
    assert reply.error_code == "max-message-queue-size-exceeded"
    assert reply.retry_after == 5


# -- auth ---------------------------------------------------------------------------------------


async def test_wrong_password_is_auth_and_stays_out_of_detail(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake, password="not-the-password"))
    assert reply.outcome is Outcome.AUTH
    assert (reply.status_code, reply.error_code) == (401, "unauthorized")
    assert "not-the-password" not in (reply.detail or "")


async def test_wrong_account_is_auth(fake: FakeBandwidth) -> None:
    reply = await send(provider_for(fake, account_id="1000000"))
    assert reply.outcome is Outcome.AUTH


async def test_no_access_to_messaging_is_auth(fake: FakeBandwidth) -> None:
    fake.fail(403)
    reply = await send(provider_for(fake))
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "forbidden")


async def test_unknown_path_page_is_auth(fake: FakeBandwidth) -> None:
    fake.fail(404)  # Bandwidth answers a web-framework page here, not {type, description}
    reply = await send(provider_for(fake))
    assert (reply.outcome, reply.status_code) == (Outcome.AUTH, 404)


# -- transient ----------------------------------------------------------------------------------


async def test_server_error_is_transient(fake: FakeBandwidth) -> None:
    fake.fail(500, times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.TRANSIENT


async def test_garbage_answer_is_transient_malformed(fake: FakeBandwidth) -> None:
    fake.garbage(times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.TRANSIENT
    assert (reply.detail or "").startswith("malformed reply")


def test_refused_content_type_is_transient_not_rejected() -> None:
    provider = BandwidthProvider(
        ProviderConfig(
            name="b",
            type="bandwidth",
            options={"account_id": "1", "username": "u", "password": "p", "application_id": "a"},
        )
    )
    body = b'{"type": "unsupported-content-type", "description": "Content-Type"}'
    reply = provider.parse_response(415, http_headers(), body)
    assert reply.outcome is Outcome.TRANSIENT


# -- timeout and failover, through the router ---------------------------------------------------


async def test_router_fails_over_to_the_second_account(
    fake: FakeBandwidth, fake_b: FakeBandwidth
) -> None:
    fake.fail(401)
    result = await route(accounts(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.AUTH), ("secondary", Outcome.ACCEPTED)]
    assert result.provider_message_id == fake_b.messages[0].provider_message_id


async def test_hanging_account_times_out_and_otp_fails_over(
    fake: FakeBandwidth, fake_b: FakeBandwidth
) -> None:
    fake.hang()
    result = await route(accounts(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]


# -- the official SDK against FakeBandwidth ----------------------------------------------------


def sdk_api(fake: FakeBandwidth, password: str | None = None) -> Any:
    bandwidth = pytest.importorskip("bandwidth")
    configuration = bandwidth.Configuration(
        host=fake.url + "/api/v2",
        username=fake.username,
        password=password or fake.password,
        ignore_operation_servers=True,  # else every call goes to messaging.bandwidth.com
        retries=0,
    )
    return bandwidth.MessagesApi(bandwidth.ApiClient(configuration))


async def test_sdk_creates_a_message_and_reads_the_fakes_answer(fake: FakeBandwidth) -> None:
    api = sdk_api(fake)
    from bandwidth.models import MessageRequest, PriorityEnum

    request = MessageRequest(
        application_id=fake.application_id, to=[TO], var_from=SENDER, text="Code 123456"
    )
    message = await asyncio.to_thread(api.create_message, fake.account_id, request)
    (record,) = fake.messages
    assert message.id == record.provider_message_id
    assert (message.to, message.var_from, message.text) == ([TO], SENDER, "Code 123456")
    assert message.segment_count == 1
    assert message.priority is PriorityEnum.DEFAULT
    assert message.time is not None
    assert message.time.tzinfo is not None


async def test_sdk_reads_the_fakes_field_errors(fake: FakeBandwidth) -> None:
    api = sdk_api(fake)
    from bandwidth.exceptions import BadRequestException
    from bandwidth.models import MessageRequest

    request = MessageRequest(
        application_id=fake.application_id, to=["+1415"], var_from=SENDER, text="hi"
    )
    with pytest.raises(BadRequestException) as caught:
        await asyncio.to_thread(api.create_message, fake.account_id, request)
    error = caught.value.data
    assert error.type == "request-validation"
    assert [e.field_name for e in error.field_errors] == ["to"]


async def test_sdk_is_refused_with_a_wrong_password(fake: FakeBandwidth) -> None:
    api = sdk_api(fake, password="wrong")
    from bandwidth.exceptions import UnauthorizedException
    from bandwidth.models import MessageRequest

    request = MessageRequest(
        application_id=fake.application_id, to=[TO], var_from=SENDER, text="hi"
    )
    with pytest.raises(UnauthorizedException) as caught:
        await asyncio.to_thread(api.create_message, fake.account_id, request)
    assert caught.value.data.description == "Authentication Failed"
