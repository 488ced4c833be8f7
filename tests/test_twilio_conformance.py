"""The Twilio adapter and FakeTwilio speak Twilio's real wire format.

Two independent references:

- Twilio's own OpenAPI description of API 2010-04-01 (twilio/twilio-oai
  ``spec/json/twilio_api_v2010.json``, vendored in ``tests/specs``), checked with ``openapi-core``: the request the adapter puts on the wire
  against ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
  (``CreateMessageRequest``), and FakeTwilio's answers against the operation's
  201 schema (``api.v2010.account.message``).
- The official ``twilio`` SDK, sync and async, run against FakeTwilio.

Every exchange is real HTTP over 127.0.0.1.  What went on the wire is captured
with aiohttp's tracing hooks, so the bytes validated are the bytes sent.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlencode

import aiohttp
import attrs
import pytest
from conftest import SPECS_DIR, basic
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest
from openapi_core.unmarshalling.request.datatypes import RequestUnmarshalResult
from openapi_schema_validator import OAS30Validator
from provider_support import Exchange, adapter, load_spec, outbound_sms, send_sms_captured
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from smsroute.config import ProviderConfig
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.providers.twilio import TwilioProvider
from smsroute.testing import FakeTwilio

SPEC_FILE = SPECS_DIR / "twilio_api_v2010.json"
TWILIO_API = "https://api.twilio.com"  # the spec's only server
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
SENDER = "+15005550006"
SERVICE_SID = "MG" + "0123456789abcdef" * 2
TO = "+14155550100"


# -- the spec, loaded once per module ------------------------------------------------------


@pytest.fixture(scope="module")
def spec_doc() -> dict[str, Any]:
    return load_spec(SPEC_FILE)


@pytest.fixture(scope="module")
def openapi(spec_doc: dict[str, Any]) -> OpenAPI:
    # The spec itself is validated here (about 2 s, once per module).  "required":
    # every property the spec documents for a response must be present, as Twilio
    # sends them all (null when unknown).
    return OpenAPI.from_dict(spec_doc, config=Config(response_properties_default_policy="required"))


@pytest.fixture(scope="module")
def create_message_op(spec_doc: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = spec_doc["paths"][MESSAGES_PATH]["post"]
    return op


@pytest.fixture(scope="module")
def error_schema(spec_doc: dict[str, Any]) -> dict[str, Any]:
    # The spec gives no error response for creating a message (it lists only 201).
    # The one error body it describes anywhere is the classic {code, message,
    # more_info, status} object, inline on UpdateCallRecording's 408; the same
    # shape is documented for every API error in shared/reference/providers-wire.md
    # section 1 "Errors" (from twilio-python's twilio/base/version.py).  That schema
    # lists no required keys, so tests also check the four keys are all there.
    path = "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings/{Sid}.json"
    schema: dict[str, Any] = spec_doc["paths"][path]["post"]["responses"]["408"]["content"][
        "application/json"
    ]["schema"]
    assert set(schema["properties"]) == {"code", "message", "more_info", "status"}
    return schema


# -- real HTTP exchanges, captured -----------------------------------------------------


@attrs.define
class TwilioExchange(Exchange):
    def spec_request(self, base_url: str) -> MockRequest:
        """The request as if sent to api.twilio.com: the spec's server, same path."""
        return self.request_moved(TWILIO_API, base_url)


def provider_for(fake: FakeTwilio, **options: Any) -> TwilioProvider:
    sender = options.pop("sender", SENDER)
    return adapter(TwilioProvider, fake, options, sender=sender, name="twilio-main")


outbound = partial(outbound_sms, to=TO, country="US", sender=SENDER, message_id="msg-1")


async def send_captured(provider: TwilioProvider, sms: OutboundSMS) -> tuple[TwilioExchange, Reply]:
    """Send through the adapter's own ``send`` and capture both directions."""
    return await send_sms_captured(provider, sms, TwilioExchange())


async def post_form(
    fake: FakeTwilio,
    fields: Mapping[str, str],
    *,
    password: str | None = None,
    account_sid: str | None = None,
) -> TwilioExchange:
    """A hand-written Messages.json POST (for requests the adapter would never make)."""
    wire = TwilioExchange()
    url = f"{fake.url}/2010-04-01/Accounts/{account_sid or fake.account_sid}/Messages.json"
    headers = {"Authorization": basic(fake.account_sid, password or fake.auth_token)}
    async with (
        aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session,
        session.post(url, data=dict(fields), headers=headers) as resp,
    ):
        await resp.read()
    return wire


def valid_body(result: RequestUnmarshalResult) -> dict[str, Any]:
    """The request body as the spec reads it, after asserting it raised no error."""
    problems = [f"{e!r}: {e.__cause__}" for e in result.errors]
    assert not problems, problems
    assert isinstance(result.body, dict)
    return result.body


# -- the adapter's request against CreateMessageRequest ---------------------------------


async def test_adapter_request_matches_create_message_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    wire, reply = await send_captured(provider_for(twilio_a), outbound(attempt=2))
    result = openapi.unmarshal_request(wire.spec_request(twilio_a.url))
    assert valid_body(result) == {
        "To": TO,
        "From": SENDER,
        "Body": "Your code is 123456",
        "Attempt": 2,
    }
    assert result.parameters.path == {"AccountSid": twilio_a.account_sid}
    assert reply.provider_message_id == twilio_a.messages[0].provider_message_id


async def test_adapter_request_is_form_encoded_as_the_spec_requires(
    create_message_op: dict[str, Any], twilio_a: FakeTwilio
) -> None:
    wire, _ = await send_captured(provider_for(twilio_a), outbound())
    (media_type,) = create_message_op["requestBody"]["content"]
    assert media_type == "application/x-www-form-urlencoded"
    assert wire.method == "POST"
    assert wire.request_headers["Content-Type"] == media_type


async def test_adapter_authenticates_with_the_specs_basic_scheme(
    spec_doc: dict[str, Any], twilio_a: FakeTwilio
) -> None:
    assert spec_doc["components"]["securitySchemes"]["accountSid_authToken"] == {
        "scheme": "basic",
        "type": "http",
    }
    wire, _ = await send_captured(provider_for(twilio_a), outbound())
    scheme, _, token = wire.request_headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"{twilio_a.account_sid}:{twilio_a.auth_token}"


async def test_adapter_request_with_status_callback_matches_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    callback = "https://hooks.example.com/twilio/status?token=abc123"
    wire, _ = await send_captured(provider_for(twilio_a), outbound(status_callback=callback))
    body = valid_body(openapi.unmarshal_request(wire.spec_request(twilio_a.url)))
    assert body["StatusCallback"] == callback
    assert twilio_a.messages[0].status_callback == callback


async def test_adapter_request_with_validity_period_matches_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    wire, _ = await send_captured(provider_for(twilio_a, validity_period=600), outbound())
    body = valid_body(openapi.unmarshal_request(wire.spec_request(twilio_a.url)))
    assert body["ValidityPeriod"] == 600  # the spec's integer, not a string


async def test_adapter_request_with_messaging_service_matches_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    provider = provider_for(twilio_a, sender=None, messaging_service_sid=SERVICE_SID)
    wire, reply = await send_captured(provider, outbound(sender=None))
    body = valid_body(openapi.unmarshal_request(wire.spec_request(twilio_a.url)))
    assert body["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in body
    assert reply.provider_message_id is not None


async def test_adapter_sends_only_fields_the_spec_defines(
    openapi: OpenAPI, create_message_op: dict[str, Any], twilio_a: FakeTwilio
) -> None:
    # CreateMessageRequest allows unknown properties, so a misspelt field
    # ("Statuscallback") would pass the schema and be ignored by Twilio.
    schema = create_message_op["requestBody"]["content"]["application/x-www-form-urlencoded"][
        "schema"
    ]
    provider = provider_for(twilio_a, validity_period=600)
    wire, _ = await send_captured(provider, outbound(status_callback="https://hooks.example.com/s"))
    sent = set(valid_body(openapi.unmarshal_request(wire.spec_request(twilio_a.url))))
    assert sent == {"To", "From", "Body", "StatusCallback", "ValidityPeriod", "Attempt"}
    assert sent <= set(schema["properties"])


def test_adapter_default_url_is_the_specs_create_message_url(openapi: OpenAPI) -> None:
    provider = TwilioProvider(
        ProviderConfig(
            name="twilio-main",
            type="twilio",
            options={"account_sid": "AC" + "ab" * 16, "auth_token": "secret"},
        )
    )
    req = provider.build_request(outbound())
    assert req.url.startswith(TWILIO_API + "/")
    spec_req = MockRequest(
        TWILIO_API,  # the default URL's own host, which is the spec's server
        req.method,
        req.url.removeprefix(TWILIO_API),
        headers=dict(req.headers),
        data=urlencode(req.data or {}).encode(),  # how aiohttp encodes a dict body
        content_type="application/x-www-form-urlencoded",
    )
    valid_body(openapi.unmarshal_request(spec_req))


# -- FakeTwilio's answers against the spec --------------------------------------------------


async def test_fake_success_response_matches_message_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    wire, _ = await send_captured(provider_for(twilio_a), outbound())
    assert wire.status == 201
    openapi.validate_response(wire.spec_request(twilio_a.url), wire.spec_response())
    doc = wire.json()
    assert doc["sid"].startswith("SM")
    assert doc["status"] == "queued"
    assert doc["account_sid"] == twilio_a.account_sid


async def test_fake_messaging_service_response_matches_message_schema(
    openapi: OpenAPI, twilio_a: FakeTwilio
) -> None:
    provider = provider_for(twilio_a, sender=None, messaging_service_sid=SERVICE_SID)
    wire, _ = await send_captured(provider, outbound(sender=None))
    assert wire.status == 201
    openapi.validate_response(wire.spec_request(twilio_a.url), wire.spec_response())
    doc = wire.json()
    # A service send is "accepted" with no sender and no segments until Twilio picks a sender.
    assert (doc["status"], doc["from"], doc["num_segments"]) == ("accepted", None, "0")
    assert doc["messaging_service_sid"] == SERVICE_SID


async def test_fake_success_response_has_only_documented_fields(
    spec_doc: dict[str, Any], twilio_a: FakeTwilio
) -> None:
    schema = spec_doc["components"]["schemas"]["api.v2010.account.message"]
    wire, _ = await send_captured(provider_for(twilio_a), outbound())
    assert set(wire.json()) == set(schema["properties"])


async def test_fake_dates_are_rfc_2822_as_the_spec_formats_them(
    spec_doc: dict[str, Any], twilio_a: FakeTwilio
) -> None:
    # "date-time-rfc-2822" is Twilio's own format: openapi-core does not check it.
    schema = spec_doc["components"]["schemas"]["api.v2010.account.message"]
    wire, _ = await send_captured(provider_for(twilio_a), outbound())
    doc = wire.json()
    for field in ("date_created", "date_updated"):
        assert schema["properties"][field]["format"] == "date-time-rfc-2822"
        when = email.utils.parsedate_to_datetime(doc[field])
        assert when.utcoffset() == datetime.timedelta(0)  # GMT, as "+0000"
    assert doc["date_sent"] is None  # not sent yet


OK_FIELDS = {"To": TO, "From": SENDER, "Body": "hi"}
OTHER_ACCOUNT = "AC" + "0" * 32


@pytest.mark.parametrize(
    ("fields", "script", "status", "code"),
    [
        pytest.param({**OK_FIELDS, "To": "+1234"}, None, 400, 21211, id="invalid-to"),
        pytest.param({"From": SENDER, "Body": "hi"}, None, 400, 21604, id="missing-to"),
        pytest.param({"To": TO, "Body": "hi"}, None, 400, 21603, id="missing-from"),
        pytest.param({"To": TO, "From": SENDER}, None, 400, 21602, id="missing-body"),
        pytest.param({**OK_FIELDS, "Body": "x" * 1601}, None, 400, 21617, id="body-too-long"),
        pytest.param({**OK_FIELDS, "To": "+4915123456789"}, None, 400, 21408, id="region-off"),
        pytest.param(OK_FIELDS, "bad-password", 401, 20003, id="bad-auth"),
        pytest.param(OK_FIELDS, "other-account", 404, 20404, id="wrong-account-in-url"),
        pytest.param(OK_FIELDS, "throttle", 429, 20429, id="throttled"),
        pytest.param(OK_FIELDS, "fail-503", 503, 20503, id="scripted-503"),
    ],
)
async def test_fake_error_body_is_twilios_classic_error(
    error_schema: dict[str, Any],
    fields: dict[str, str],
    script: str | None,
    status: int,
    code: int,
) -> None:
    async with FakeTwilio(unroutable_countries={"DE"}) as fake:
        if script == "throttle":
            fake.throttle(retry_after=2, times=1)
        elif script == "fail-503":
            fake.fail(503, times=1)
        wire = await post_form(
            fake,
            fields,
            password="wrong" if script == "bad-password" else None,
            account_sid=OTHER_ACCOUNT if script == "other-account" else None,
        )
        assert fake.messages == []
    assert wire.status == status
    assert wire.response_headers["Content-Type"].startswith("application/json")
    body = wire.json()
    OAS30Validator(error_schema).validate(body)
    assert set(body) == {"code", "message", "more_info", "status"}
    assert (body["code"], body["status"]) == (code, status)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert isinstance(body["message"], str)
    assert body["message"]


def test_spec_documents_no_error_response_for_create_message(
    create_message_op: dict[str, Any],
) -> None:
    # Why error bodies are checked against the 408 schema borrowed above rather than
    # with openapi-core: if Twilio ever documents them, validate them here instead.
    assert set(create_message_op["responses"]) == {"201"}


# -- the official SDK against FakeTwilio ---------------------------------------------------


def sdk_client(fake: FakeTwilio, http_client: Any) -> Client:
    client = Client(fake.account_sid, fake.auth_token, http_client=http_client)
    # TWILIO_EDGE / TWILIO_REGION in the environment would rewrite the host.
    client.edge = client.region = None
    client.api.base_url = fake.url  # the domain every api.twilio.com URL is built from
    return client


@pytest.fixture
def sync_http() -> Iterator[TwilioHttpClient]:
    http = TwilioHttpClient(timeout=5)
    assert http.session is not None
    http.session.trust_env = False  # no proxy from the environment for 127.0.0.1
    yield http
    http.session.close()


# The SDK's async client still uses aiohttp.BasicAuth / auth=, deprecated in aiohttp 3.14.
sdk_aiohttp_deprecations = pytest.mark.filterwarnings(
    "ignore:BasicAuth is deprecated:DeprecationWarning",
    "ignore:The 'auth' parameter is deprecated:DeprecationWarning",
)


@pytest.fixture
async def async_http() -> AsyncIterator[AsyncTwilioHttpClient]:
    async with AsyncTwilioHttpClient(timeout=5) as http:
        yield http


async def test_sdk_creates_a_queued_message_on_the_fake(
    twilio_a: FakeTwilio, sync_http: TwilioHttpClient
) -> None:
    client = sdk_client(twilio_a, sync_http)
    message = await asyncio.to_thread(
        client.messages.create, to=TO, from_=SENDER, body="Code 123456"
    )
    assert message.sid is not None
    assert message.sid.startswith("SM")
    assert message.status == "queued"
    (record,) = twilio_a.messages
    assert (record.provider_message_id, record.to, record.sender, record.text) == (
        message.sid,
        TO,
        SENDER,
        "Code 123456",
    )


async def test_sdk_reads_the_fakes_dates_and_counts(
    twilio_a: FakeTwilio, sync_http: TwilioHttpClient
) -> None:
    client = sdk_client(twilio_a, sync_http)
    message = await asyncio.to_thread(client.messages.create, to=TO, from_=SENDER, body="ж" * 71)
    assert message.date_created is not None
    assert message.date_created.tzinfo is not None
    assert message.num_segments == "2"  # UCS-2, 71 > 70 units
    assert message.error_code is None


async def test_sdk_raises_21211_for_an_invalid_number(
    twilio_a: FakeTwilio, sync_http: TwilioHttpClient
) -> None:
    client = sdk_client(twilio_a, sync_http)
    with pytest.raises(TwilioRestException) as caught:
        await asyncio.to_thread(client.messages.create, to="+1234", from_=SENDER, body="hi")
    assert caught.value.code == 21211
    assert caught.value.status == 400
    assert twilio_a.messages == []


@sdk_aiohttp_deprecations
async def test_sdk_async_client_creates_a_queued_message_on_the_fake(
    twilio_a: FakeTwilio, async_http: AsyncTwilioHttpClient
) -> None:
    client = sdk_client(twilio_a, async_http)
    message = await client.messages.create_async(to=TO, from_=SENDER, body="Code 123456")
    assert message.sid is not None
    assert message.sid.startswith("SM")
    assert message.status == "queued"
    assert [m.provider_message_id for m in twilio_a.messages] == [message.sid]


@sdk_aiohttp_deprecations
async def test_sdk_async_client_raises_21211_for_an_invalid_number(
    twilio_a: FakeTwilio, async_http: AsyncTwilioHttpClient
) -> None:
    client = sdk_client(twilio_a, async_http)
    with pytest.raises(TwilioRestException) as caught:
        await client.messages.create_async(to="+1234", from_=SENDER, body="hi")
    assert caught.value.code == 21211
    assert twilio_a.messages == []
