"""The Vonage adapter against FakeVonage, and both against Vonage's own references.

Behaviour: every outcome class the legacy SMS API can produce, over real HTTP
on 127.0.0.1, one per test; then the router failing over between two Vonage
accounts.

Conformance, two independent references:

- Vonage's OpenAPI description of the SMS API (Nexmo/api-specification
  ``definitions/sms.yml``, vendored in ``tests/specs``), checked
  with ``openapi-core``: the request the adapter puts on the wire against
  ``NewMessage``, FakeVonage's answers against ``SMS`` and ``Error``.  As
  published, the 200 answer is ``oneOf [SMS, Error]`` over open objects with no
  required keys, so *every* body matches both and openapi-core rejects all of
  them; the tests load the spec with those four objects closed
  (``additionalProperties: false``), which lets ``oneOf`` tell them apart and
  also catches any undocumented field.
- The official ``vonage`` SDK (vonage-sms), run against FakeVonage.
"""

from __future__ import annotations

import asyncio
import base64
import copy
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
    otp_to,
    outbound_sms,
    route,
    send_sms_captured,
)
from yarl import URL

from smsroute import ConfigError, ManualClock, Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.providers.vonage import ERROR_OUTCOMES, VonageProvider
from smsroute.testing.vonage import ERROR_TEXTS, FakeVonage

SPEC_FILE = SPECS_DIR / "vonage_sms.yml"
VONAGE_REST = "https://rest.nexmo.com"  # the spec's server is {this}/sms
TO = "+4915123456789"
SENDER = "Acme"
CALLBACK = "https://hooks.example.com/vonage/status"


fake = fake_fixture(FakeVonage)
fake_b = fake_fixture(FakeVonage)


def provider_for(fake: FakeVonage, **options: Any) -> VonageProvider:
    return adapter(VonageProvider, fake, options, sender=SENDER)


outbound = partial(outbound_sms, to=TO, country="DE", sender=SENDER)


@attrs.define
class VonageExchange(Exchange):
    def spec_request(self) -> MockRequest:
        """The request as if sent to rest.nexmo.com: the spec's server, same path."""
        return self.request_to(VONAGE_REST, URL(self.url).path, "post")


async def send(provider: VonageProvider, sms: OutboundSMS) -> tuple[VonageExchange, Reply]:
    return await send_sms_captured(provider, sms, VonageExchange())


def offline_provider() -> VonageProvider:
    return VonageProvider(
        ProviderConfig(name="v", type="vonage", options={"api_key": "k", "api_secret": "s"})
    )


# -- accepted -----------------------------------------------------------------------------


async def test_accepted_reply_carries_vonages_message_id(fake: FakeVonage) -> None:
    _, reply = await send(provider_for(fake), outbound())
    assert reply.outcome is Outcome.ACCEPTED
    assert reply.status_code == 200
    (record,) = fake.messages
    assert reply.provider_message_id == record.provider_message_id
    assert (record.to, record.sender, record.text) == (TO, SENDER, "Your code is 123456")


async def test_long_text_is_answered_per_part_and_the_first_part_id_is_kept(
    fake: FakeVonage,
) -> None:
    wire, reply = await send(provider_for(fake), outbound("x" * 200))
    doc = json.loads(wire.response_body)
    assert doc["message-count"] == "2"
    first, second = doc["messages"]
    assert first["message-id"] != second["message-id"]
    assert reply.provider_message_id == first["message-id"]


async def test_status_callback_is_sent_as_callback(fake: FakeVonage) -> None:
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    (record,) = fake.messages
    assert record.fields["callback"] == CALLBACK
    assert record.status_callback == CALLBACK


async def test_no_callback_field_without_a_status_callback(fake: FakeVonage) -> None:
    await send(provider_for(fake), outbound())
    assert "callback" not in fake.messages[0].fields
    assert fake.messages[0].status_callback is None


async def test_numbers_go_without_plus_and_our_id_as_client_ref(fake: FakeVonage) -> None:
    await send(provider_for(fake), outbound(sender="+15005550006"))
    fields = fake.messages[0].fields
    assert (fields["to"], fields["from"]) == ("4915123456789", "15005550006")
    assert fields["client-ref"] == "0123456789abcdef0123456789abcdef"


async def test_ucs2_text_is_sent_as_type_unicode(fake: FakeVonage) -> None:
    await send(provider_for(fake), outbound("Grüße aus Kraków ✓"))
    assert fake.messages[0].fields["type"] == "unicode"
    assert fake.messages[0].text == "Grüße aus Kraków ✓"


async def test_gsm_text_is_sent_as_type_text(fake: FakeVonage) -> None:
    await send(provider_for(fake), outbound())
    assert fake.messages[0].fields["type"] == "text"


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha256", "sha512"])
async def test_signed_request_is_accepted_and_never_carries_the_secret(method: str) -> None:
    async with FakeVonage(signature_secret="sig-secret-123", signature_method=method) as fake:
        provider = provider_for(
            fake, api_secret=None, signature_secret="sig-secret-123", signature_method=method
        )
        wire, reply = await send(provider, outbound())
    assert reply.outcome is Outcome.ACCEPTED
    assert b"sig-secret-123" not in wire.request_body
    assert b"api_secret" not in wire.request_body
    assert {"sig", "timestamp"} <= set(fake.messages[0].fields)


# -- rejected: healthy, no failover ----------------------------------------------------------


async def test_invalid_number_is_rejected(fake: FakeVonage) -> None:
    _, reply = await send(provider_for(fake), outbound(to="+4900000000"))
    assert reply.outcome is Outcome.REJECTED
    assert reply.error_code == "3"
    assert fake.messages == []


async def test_barred_number_is_rejected(fake: FakeVonage) -> None:
    fake.fail(200, 7)
    _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.REJECTED, "7")
    assert reply.detail == "Vonage 7: Number barred."


# -- unroutable: next provider, healthy ------------------------------------------------------


async def test_destination_vonage_cannot_route_is_unroutable() -> None:
    async with FakeVonage(unroutable_countries={"DE"}) as fake:
        _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "6")


async def test_missing_sender_is_unroutable_not_rejected(fake: FakeVonage) -> None:
    # Status 2 is "missing parameters"; when the missing one is 'from', it is this
    # provider's sender setup that is wrong, and another provider may have one.
    _, reply = await send(provider_for(fake), outbound(sender=None))
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "2")
    assert reply.detail == "Vonage 2: Missing from param"


async def test_refused_sender_id_is_unroutable(fake: FakeVonage) -> None:
    fake.fail(200, 15)
    _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "15")


async def test_overlong_callback_url_is_unroutable(fake: FakeVonage) -> None:
    _, reply = await send(provider_for(fake), outbound(status_callback=CALLBACK + "/" + "x" * 90))
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "23")


# -- throttled: next provider, paused --------------------------------------------------------


async def test_throttled_status_1_pauses_for_a_second(fake: FakeVonage) -> None:
    fake.throttle()
    wire, reply = await send(provider_for(fake), outbound())
    assert wire.status == 200  # Vonage throttles in-band, without Retry-After
    assert "Retry-After" not in wire.response_headers
    assert (reply.outcome, reply.error_code) == (Outcome.THROTTLED, "1")
    assert reply.retry_after == 1.0


def test_http_429_from_vonages_edge_is_throttled_with_its_retry_after() -> None:
    reply = offline_provider().parse_response(429, http_headers(**{"Retry-After": "7"}), b"")
    assert (reply.outcome, reply.retry_after) == (Outcome.THROTTLED, 7.0)


# -- auth: next provider, opens the breaker ------------------------------------------------


async def test_bad_credentials_are_auth_and_the_secret_stays_out_of_detail(
    fake: FakeVonage,
) -> None:
    _, reply = await send(provider_for(fake, api_secret="wrong-secret"), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "4")
    assert reply.detail == "Vonage 4: Bad Credentials"
    assert "wrong-secret" not in repr(reply)


async def test_wrong_signature_secret_is_auth() -> None:
    async with FakeVonage(signature_secret="right") as fake:
        provider = provider_for(fake, api_secret=None, signature_secret="wrong")
        _, reply = await send(provider, outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "14")


async def test_out_of_credit_is_auth() -> None:
    async with FakeVonage(balance=0.01) as fake:
        _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "9")


# -- transient: next provider, unhealthy --------------------------------------------------


async def test_internal_error_status_5_is_transient(fake: FakeVonage) -> None:
    fake.fail(200, 5)
    _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.error_code) == (Outcome.TRANSIENT, "5")


async def test_edge_5xx_is_transient(fake: FakeVonage) -> None:
    fake.fail(503)
    _, reply = await send(provider_for(fake), outbound())
    assert (reply.outcome, reply.status_code) == (Outcome.TRANSIENT, 503)


async def test_garbage_answer_is_a_transient_malformed_reply(fake: FakeVonage) -> None:
    fake.garbage()
    _, reply = await send(provider_for(fake), outbound())
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail is not None
    assert reply.detail.startswith("malformed reply")


def test_undocumented_status_is_transient() -> None:
    body = b'{"message-count": "1", "messages": [{"status": "99", "error-text": "?"}]}'
    reply = offline_provider().parse_response(200, http_headers(), body)
    assert (reply.outcome, reply.error_code) == (Outcome.TRANSIENT, "99")


def test_partial_failure_is_classified_by_the_failed_part() -> None:
    # The shape of vonage-python-sdk's sms/tests/data/send_sms_partial_error.json.
    body = (
        b'{"message-count": "2", "messages": ['
        b'{"to": "4915123456789", "message-id": "3295d748-4e14-4681-af78-166dca3c5aab",'
        b' "status": "0", "remaining-balance": "38.07", "message-price": "0.04", "network": "23420"},'
        b'{"status": "1", "error-text": "Throttled"}]}'
    )
    reply = offline_provider().parse_response(200, http_headers(), body)
    assert (reply.outcome, reply.error_code, reply.retry_after) == (Outcome.THROTTLED, "1", 1.0)
    assert reply.detail == "Vonage 1: Throttled (partial: 1 of 2 parts accepted)"


def test_numbers_quoted_in_error_text_are_masked() -> None:
    body = b'{"message-count": "1", "messages": [{"status": "3", "error-text": "Invalid to address 4915123456789"}]}'
    reply = offline_provider().parse_response(200, http_headers(), body)
    assert reply.detail is not None
    assert "4915123456789" not in reply.detail


# -- through the router -------------------------------------------------------------------


def two_accounts(a: FakeVonage, b: FakeVonage) -> str:
    return failover_yaml(a, b, SENDER, names=("vonage-a", "vonage-b"))


OTP = otp_to(TO)


async def test_router_fails_over_from_a_throttled_vonage_account_to_another(
    fake: FakeVonage, fake_b: FakeVonage
) -> None:
    fake.throttle()
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("vonage-a", Outcome.THROTTLED), ("vonage-b", Outcome.ACCEPTED)]
    assert result.provider_message_id == fake_b.messages[0].provider_message_id


async def test_router_stops_at_a_rejected_number(fake: FakeVonage, fake_b: FakeVonage) -> None:
    fake.fail(200, 7)
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("vonage-a", Outcome.REJECTED)]
    assert fake_b.requests == 0


async def test_hang_is_a_timeout_and_an_otp_fails_over(
    fake: FakeVonage, fake_b: FakeVonage
) -> None:
    fake.hang()
    result = await route(two_accounts(fake, fake_b), OTP, clock=ManualClock())
    assert attempts(result) == [("vonage-a", Outcome.TIMEOUT), ("vonage-b", Outcome.ACCEPTED)]


def test_config_needs_a_secret_or_a_signature_secret() -> None:
    with pytest.raises(ConfigError, match="api_secret"):
        make_config(
            """
            providers:
              v:
                type: vonage
                api_key: abcd1234
                from: Acme
            rules:
              - name: default
                providers: [v]
            """
        )


def test_signature_method_must_be_one_vonage_offers() -> None:
    problems = VonageProvider.check_options(
        {"api_key": "k", "signature_secret": "s", "signature_method": "sha384"}
    )
    assert [key for key, _ in problems] == ["signature_method"]


# -- conformance: Vonage's OpenAPI description ------------------------------------------------

CLOSED = ("SMS", "Error", "Message", "ErrorMessage")


@pytest.fixture(scope="module")
def spec_doc() -> dict[str, Any]:
    return load_spec(SPEC_FILE)


@pytest.fixture(scope="module")
def openapi(spec_doc: dict[str, Any]) -> OpenAPI:
    closed = copy.deepcopy(spec_doc)
    for name in CLOSED:
        closed["components"]["schemas"][name]["additionalProperties"] = False
    return OpenAPI.from_dict(closed)


def new_message(spec_doc: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = spec_doc["components"]["schemas"]["NewMessage"]
    return schema


def test_spec_response_is_ambiguous_as_published(spec_doc: dict[str, Any]) -> None:
    # Why the response checks close the objects: if a later spec closes them
    # itself or adds "required", drop the CLOSED patch above.
    schemas = spec_doc["components"]["schemas"]
    for name in CLOSED:
        assert "additionalProperties" not in schemas[name]
        assert "required" not in schemas[name]


async def test_adapter_request_matches_new_message(openapi: OpenAPI, fake: FakeVonage) -> None:
    wire, _ = await send(provider_for(fake), outbound(status_callback=CALLBACK))
    assert wire.request_headers["Content-Type"] == "application/x-www-form-urlencoded"
    result = openapi.unmarshal_request(wire.spec_request())
    assert not result.errors, [f"{e!r}: {e.__cause__}" for e in result.errors]
    assert result.body["to"] == "4915123456789"
    assert result.body["callback"] == CALLBACK


async def test_signed_adapter_request_matches_new_message(openapi: OpenAPI) -> None:
    async with FakeVonage(signature_secret="sig-secret-123") as fake:
        provider = provider_for(fake, api_secret=None, signature_secret="sig-secret-123")
        wire, _ = await send(provider, outbound())
    result = openapi.unmarshal_request(wire.spec_request())
    assert not result.errors, [f"{e!r}: {e.__cause__}" for e in result.errors]
    assert "api_secret" not in result.body


async def test_adapter_sends_only_fields_the_spec_defines(
    spec_doc: dict[str, Any], fake: FakeVonage
) -> None:
    # NewMessage allows unknown properties, so a misspelt field would pass and be ignored.
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    sent = set(fake.messages[0].fields)
    assert sent == {"api_key", "api_secret", "from", "to", "text", "type", "callback", "client-ref"}
    assert sent <= set(new_message(spec_doc)["properties"])


async def test_signed_request_adds_only_the_signing_guides_timestamp(
    spec_doc: dict[str, Any],
) -> None:
    # The spec documents 'sig' but not the 'timestamp' it is computed over
    # (the signing guide and every SDK send it).
    async with FakeVonage(signature_secret="s3cr3t") as fake:
        await send(provider_for(fake, api_secret=None, signature_secret="s3cr3t"), outbound())
    extra = set(fake.messages[0].fields) - set(new_message(spec_doc)["properties"])
    assert extra == {"timestamp"}


async def test_fake_success_matches_the_sms_schema(openapi: OpenAPI, fake: FakeVonage) -> None:
    wire, _ = await send(provider_for(fake), outbound("x" * 200))
    openapi.validate_response(wire.spec_request(), wire.spec_response())


@pytest.mark.parametrize(
    ("script", "code"),
    [
        pytest.param("bad-secret", "4", id="bad-credentials"),
        pytest.param("no-sender", "2", id="missing-from"),
        pytest.param("throttle", "1", id="throttled"),
        pytest.param("unroutable", "6", id="unroutable"),
        pytest.param("fail-401", "4", id="scripted-401"),
        pytest.param("fail-200-33", "33", id="scripted-33"),
    ],
)
async def test_fake_errors_are_http_200_matching_the_error_schema(
    openapi: OpenAPI, script: str, code: str
) -> None:
    async with FakeVonage(unroutable_countries={"DE"} if script == "unroutable" else ()) as fake:
        if script == "throttle":
            fake.throttle()
        elif script == "fail-401":
            fake.fail(401)
        elif script == "fail-200-33":
            fake.fail(200, 33)
        provider = provider_for(fake, **({"api_secret": "nope"} if script == "bad-secret" else {}))
        wire, _ = await send(provider, outbound(sender=None if script == "no-sender" else SENDER))
        assert fake.messages == []
    assert wire.status == 200
    openapi.validate_response(wire.spec_request(), wire.spec_response())
    doc = json.loads(wire.response_body)
    assert doc["message-count"] == "1"
    assert doc["messages"][0]["status"] == code


def test_every_documented_status_has_an_outcome_and_a_fake_text(spec_doc: dict[str, Any]) -> None:
    documented = {int(code) for code in spec_doc["x-errors"]}
    assert set(ERROR_OUTCOMES) == documented
    assert set(ERROR_TEXTS) == documented


# -- conformance: the official SDK ------------------------------------------------------------


def sdk_client(fake: FakeVonage, **auth: Any) -> Any:
    """The SDK pointed at ``fake``.

    The SDK builds every URL as ``https://{rest_host}{path}``: ``rest_host`` is
    its host option, and a requests transport adapter downgrades the scheme to
    the fake's plain HTTP.  Auth, the form body and parsing are all the SDK's.
    """
    requests = pytest.importorskip("requests")
    vonage = pytest.importorskip("vonage")

    class PlainHTTP(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            request.url = request.url.replace("https://", "http://", 1)
            return super().send(request, **kwargs)

    client = vonage.Vonage(
        vonage.Auth(api_key=fake.api_key, **auth),
        vonage.HttpClientOptions(rest_host=f"{fake.host}:{fake.port}", timeout=5),
    )
    session = client.http_client._session  # no public hook for the transport
    session.trust_env = False
    session.mount("https://", PlainHTTP())
    return client


async def test_sdk_sends_an_sms_through_the_fake(fake: FakeVonage) -> None:
    vonage_sms = pytest.importorskip("vonage_sms")
    client = sdk_client(fake, api_secret=fake.api_secret)
    message = vonage_sms.SmsMessage(to="4915123456789", from_="Acme", text="Code 123456")
    response = await asyncio.to_thread(client.sms.send, message)
    (record,) = fake.messages
    assert response.message_count == "1"
    assert response.messages[0].message_id == record.provider_message_id
    assert response.messages[0].status == "0"
    assert (record.to, record.sender, record.text) == (TO, "Acme", "Code 123456")


async def test_sdk_authenticates_with_basic_auth_which_the_fake_accepts(fake: FakeVonage) -> None:
    vonage_sms = pytest.importorskip("vonage_sms")
    client = sdk_client(fake, api_secret=fake.api_secret)
    message = vonage_sms.SmsMessage(to="4915123456789", from_="Acme", text="hi")
    await asyncio.to_thread(client.sms.send, message)
    sent = client.http_client.last_request
    expected = base64.b64encode(f"{fake.api_key}:{fake.api_secret}".encode()).decode()
    assert sent.headers["Authorization"] == f"Basic {expected}"
    assert "api_secret" not in fake.messages[0].fields


@pytest.mark.parametrize("method", ["md5", "sha1", "sha256", "sha512"])
async def test_sdks_signer_and_the_fakes_verification_agree(method: str) -> None:
    # The SDK's own Auth.sign_params signs exactly the fields then posted.
    http_client = pytest.importorskip("vonage_http_client")
    async with FakeVonage(signature_secret="sdk-signing", signature_method=method) as fake:
        auth = http_client.Auth(
            api_key=fake.api_key, signature_secret="sdk-signing", signature_method=method
        )
        params = {"api_key": fake.api_key, "from": "Acme", "to": "4915123456789", "text": "a&b=c"}
        params["sig"] = auth.sign_params(params)  # adds 'timestamp' to params, as it sends it
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{fake.url}/sms/json", data={k: str(v) for k, v in params.items()}) as r,
        ):
            doc = await r.json()
    assert doc["messages"][0]["status"] == "0"
    assert fake.messages[0].text == "a&b=c"


@pytest.mark.xfail(
    reason="vonage-sms 1.2.0 signs every SmsMessage field, None ones included "
    "('&callback=None...'), but requests leaves None fields out of the form: the "
    "signature cannot match what is sent (status 14, as Vonage itself would answer)",
    strict=False,
)
async def test_sdk_signed_send_is_accepted() -> None:
    vonage_sms = pytest.importorskip("vonage_sms")
    async with FakeVonage(signature_secret="sdk-signing", signature_method="sha256") as fake:
        client = sdk_client(fake, signature_secret="sdk-signing", signature_method="sha256")
        message = vonage_sms.SmsMessage(to="4915123456789", from_="Acme", text="signed")
        response = await asyncio.to_thread(client.sms.send, message)
        assert response.messages[0].message_id == fake.messages[0].provider_message_id


async def test_sdk_raises_the_fakes_in_band_error(fake: FakeVonage) -> None:
    vonage_sms = pytest.importorskip("vonage_sms")
    fake.fail(200, 7)
    client = sdk_client(fake, api_secret=fake.api_secret)
    message = vonage_sms.SmsMessage(to="4915123456789", from_="Acme", text="hi")
    with pytest.raises(vonage_sms.SmsError, match="error code 7: Number barred"):
        await asyncio.to_thread(client.sms.send, message)


async def test_sdk_reads_a_multipart_answer(
    fake: FakeVonage,
) -> None:
    vonage_sms = pytest.importorskip("vonage_sms")
    client = sdk_client(fake, api_secret=fake.api_secret)
    message = vonage_sms.SmsMessage(to="4915123456789", from_="Acme", text="y" * 300)
    response = await asyncio.to_thread(client.sms.send, message)
    assert response.message_count == "2"
    assert [m.status for m in response.messages] == ["0", "0"]
