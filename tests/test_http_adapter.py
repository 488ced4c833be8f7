"""The generic ``http`` adapter, declared in YAML, against a local aggregator on 127.0.0.1.

No vendor stands behind this adapter, so the server is written in
tests/local_aggregator.py: a small SMS gateway as a user might run on their own
network, in two dialects (``LocalAggregator``): a JSON API that answers with HTTP
errors, and a legacy form gateway that answers HTTP 200 with a status inside.
The adapter's declarations come from the shipped example,
config/http-aggregator.yaml, so the example is what is tested.  Its webhooks
(receipts, inbound messages, their authentication) are in test_http_webhooks.py.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_aggregator import LocalAggregator
from provider_support import attempts

from smsroute import (
    BreakerState,
    Config,
    ConfigError,
    ManualClock,
    Message,
    Outcome,
    Router,
    SendResult,
    load_config,
    parse_config,
)
from smsroute.providers.base import OutboundSMS
from smsroute.providers.http import HttpApiProvider

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PATH = ROOT / "config" / "http-aggregator.yaml"
EXAMPLE: dict[str, Any] = yaml.safe_load(EXAMPLE_PATH.read_text())

TO = "+4915123456789"
OTP = Message(to=TO, text="Your code is 123456", category="otp")
CALLBACK = "https://hooks.example.com/sms"

# -- configs built from the shipped example ----------------------------------------------


def section(name: str, gateway: LocalAggregator, **changes: Any) -> dict[str, Any]:
    """The example's provider ``name`` pointed at ``gateway`` with its credentials."""
    body: dict[str, Any] = copy.deepcopy(EXAMPLE["providers"][name])
    body.pop("prices", None)
    body.update(
        base_url=gateway.url,
        auth=gateway.auth_section(),
        webhook_auth=gateway.webhook_auth_section(),
        timeout="300ms",
    )
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def config_of(providers: dict[str, dict[str, Any]], **defaults: Any) -> Config:
    document = {
        "defaults": {"default_region": "DE", **defaults},
        "providers": providers,
        "rules": [{"name": "default", "providers": list(providers)}],
    }
    return parse_config(yaml.safe_dump(document, sort_keys=False))


async def send(config: Config, message: Message = OTP) -> SendResult:
    async with Router(config, clock=ManualClock()) as router:
        return await router.send(message)


@pytest.fixture
async def aggregator() -> AsyncIterator[LocalAggregator]:
    async with LocalAggregator("json", "bearer") as gateway:
        yield gateway


@pytest.fixture
async def legacy() -> AsyncIterator[LocalAggregator]:
    async with LocalAggregator("form", "query") as gateway:
        yield gateway


def one(gateway: LocalAggregator, **changes: Any) -> Config:
    name = "aggregator" if gateway.variant == "json" else "legacy-gateway"
    return config_of({name: section(name, gateway, **changes)})


def both(aggregator: LocalAggregator, legacy: LocalAggregator) -> Config:
    return config_of(
        {
            "aggregator": section("aggregator", aggregator),
            "legacy-gateway": section("legacy-gateway", legacy),
        }
    )


# -- the shipped example ---------------------------------------------------------------------


def test_example_config_loads_without_environment() -> None:
    config = load_config(EXAMPLE_PATH, environ={})
    assert {p.type for p in config.providers.values()} == {"http"}
    assert config.rules[0].providers == ("aggregator", "legacy-gateway")


async def test_example_config_as_written_fails_over_between_the_two_gateways(
    aggregator: LocalAggregator, legacy: LocalAggregator
) -> None:
    text = (
        EXAMPLE_PATH.read_text()
        .replace("https://sms.aggregator.example", aggregator.url)
        .replace("https://gateway.example", legacy.url)
    )
    env = {"AGGREGATOR_TOKEN": aggregator.token, "GATEWAY_KEY": legacy.token}
    config = parse_config(text, file=str(EXAMPLE_PATH), environ=env)
    aggregator.fail(503, times=1)
    async with Router(config) as router:
        first = await router.send(OTP)
        second = await router.send(OTP)
    assert attempts(first) == [
        ("aggregator", Outcome.TRANSIENT),
        ("legacy-gateway", Outcome.ACCEPTED),
    ]
    assert first.provider_message_id == legacy.messages[0].provider_message_id
    assert legacy.messages[0].fields["to"] == TO.lstrip("+")
    assert second.provider == "aggregator"
    assert second.provider_message_id == "agg-000001"


# -- success ---------------------------------------------------------------------------------


async def test_json_success_takes_the_id_from_the_dotted_path(
    aggregator: LocalAggregator,
) -> None:
    result = await send(one(aggregator))
    assert result.ok
    assert result.provider_message_id == "agg-000001"
    assert result.attempts[0].status_code == 202
    sent = aggregator.messages[0].fields
    assert sent["to"] == TO
    assert sent["from"] == "Acme"
    assert sent["text"] == "Your code is 123456"
    assert sent["reference"] == result.message_id
    assert sent["parts"] == 1  # a lone "{segments}" stays a number in JSON


async def test_form_success_reads_the_status_inside_a_200(legacy: LocalAggregator) -> None:
    result = await send(one(legacy))
    assert result.ok
    assert result.provider_message_id == legacy.messages[0].provider_message_id
    assert result.attempts[0].error_code == "0"
    assert legacy.messages[0].fields == {
        "to": "4915123456789",
        "from": "4930123456",
        "text": "Your code is 123456",
        "coding": "GSM-7",
    }


async def test_status_callback_is_sent_only_when_a_webhook_is_configured(
    aggregator: LocalAggregator,
) -> None:
    await send(one(aggregator))
    await send(one(aggregator, status_callback=CALLBACK))
    assert "callback_url" not in aggregator.messages[0].fields
    callback = aggregator.messages[1].status_callback
    assert callback is not None
    assert callback.startswith(CALLBACK)  # the router may add its own query to the URL


async def test_get_request_carries_the_fields_in_the_query(legacy: LocalAggregator) -> None:
    config = one(
        legacy,
        method="GET",
        form=None,
        query={"to": "{to}", "text": "{text}", "ref": "{message_id}-{attempt}"},
    )
    result = await send(config, Message(to=TO, text="a+b & c=d"))
    assert result.ok
    fields = legacy.messages[0].fields
    assert fields == {"to": TO, "text": "a+b & c=d", "ref": f"{result.message_id}-1"}


@pytest.mark.parametrize("kind", ["basic", "bearer", "header", "query"])
async def test_each_auth_kind_authenticates(kind: str) -> None:
    async with LocalAggregator("json", kind) as gateway:
        result = await send(one(gateway))
    assert result.ok


# -- every outcome ---------------------------------------------------------------------------


async def test_invalid_number_code_is_rejected_without_failover(
    aggregator: LocalAggregator, legacy: LocalAggregator
) -> None:
    aggregator.fail(400, "INVALID_NUMBER")
    result = await send(both(aggregator, legacy))
    assert attempts(result) == [("aggregator", Outcome.REJECTED)]
    assert result.attempts[0].error_code == "INVALID_NUMBER"
    assert legacy.requests == 0


async def test_invalid_number_inside_a_200_is_rejected(legacy: LocalAggregator) -> None:
    legacy.fail(200, 3)
    attempt = (await send(one(legacy))).attempts[0]
    assert (attempt.outcome, attempt.status_code) == (Outcome.REJECTED, 200)
    assert attempt.detail == "code 3: Invalid to"


async def test_provider_messages_are_scrubbed_of_numbers() -> None:
    async with LocalAggregator("json", "bearer", unroutable={"DE"}) as gateway:
        detail = (await send(one(gateway))).attempts[0].detail
    assert detail is not None
    assert detail.startswith("code NO_ROUTE: no route to +49")
    assert "4915123456789" not in detail


async def test_no_route_code_fails_over_as_unroutable(legacy: LocalAggregator) -> None:
    async with LocalAggregator("json", "bearer", unroutable={"DE"}) as gateway:
        result = await send(both(gateway, legacy))
    assert attempts(result) == [
        ("aggregator", Outcome.UNROUTABLE),
        ("legacy-gateway", Outcome.ACCEPTED),
    ]


async def test_body_code_wins_over_the_http_status(aggregator: LocalAggregator) -> None:
    aggregator.fail(400, "NO_ROUTE")  # a plain 400 alone would be REJECTED
    result = await send(one(aggregator))
    assert result.attempts[0].outcome is Outcome.UNROUTABLE
    assert result.attempts[0].status_code == 400


async def test_rate_limit_is_throttled_with_retry_after(aggregator: LocalAggregator) -> None:
    aggregator.throttle(retry_after=7)
    result = await send(one(aggregator))
    attempt = result.attempts[0]
    assert attempt.outcome is Outcome.THROTTLED
    assert attempt.retry_after == 7
    assert attempt.error_code == "RATE_LIMITED"


async def test_in_band_throttle_inside_a_200_honours_retry_after(
    aggregator: LocalAggregator, legacy: LocalAggregator
) -> None:
    legacy.throttle(retry_after=3)  # the form dialect: HTTP 200, status "1", Retry-After
    async with Router(both(aggregator, legacy), clock=ManualClock()) as router:
        aggregator.fail(503, times=2)
        first = await router.send(OTP)
        second = await router.send(OTP)
    assert attempts(first) == [
        ("aggregator", Outcome.TRANSIENT),
        ("legacy-gateway", Outcome.THROTTLED),
    ]
    assert first.attempts[1].status_code == 200
    assert first.attempts[1].retry_after == 3
    assert second.attempts[1].detail == "skipped: rate limit or Retry-After pause"
    assert legacy.requests == 1


async def test_status_outcomes_override_the_usual_meaning(aggregator: LocalAggregator) -> None:
    aggregator.fail(402, "PAYMENT_REQUIRED")  # not in code_outcomes: the 402 entry decides
    result = await send(one(aggregator))
    assert result.attempts[0].outcome is Outcome.AUTH


async def test_no_credit_code_is_auth_and_opens_the_breaker(
    aggregator: LocalAggregator, legacy: LocalAggregator
) -> None:
    aggregator.fail(402, "NO_CREDIT")
    async with Router(both(aggregator, legacy)) as router:
        result = await router.send(OTP)
        states = router.breaker_states()
    assert attempts(result) == [("aggregator", Outcome.AUTH), ("legacy-gateway", Outcome.ACCEPTED)]
    assert states[("aggregator", None)] is BreakerState.OPEN


@pytest.mark.parametrize("kind", ["basic", "bearer", "header", "query"])
async def test_wrong_credentials_are_auth_and_never_shown(kind: str) -> None:
    wrong = "wrong-12345678901-" + secrets.token_hex(8)  # a digit run as long as a number
    async with LocalAggregator("json", kind) as gateway:
        config = one(gateway, auth=gateway.auth_section(wrong))
        result = await send(config)
    attempt = result.attempts[0]
    assert attempt.outcome is Outcome.AUTH
    assert attempt.error_code == "UNAUTHORIZED"
    assert wrong not in repr(result)
    # The gateway quoted the credential it refused: masked.
    assert attempt.detail == "code UNAUTHORIZED: invalid credential '***'"


async def test_bad_key_in_a_200_is_auth(legacy: LocalAggregator) -> None:
    result = await send(one(legacy, auth=legacy.auth_section("nope")))
    assert result.attempts[0].outcome is Outcome.AUTH
    assert result.attempts[0].status_code == 200


async def test_server_error_is_transient(aggregator: LocalAggregator) -> None:
    aggregator.fail(503, "MAINTENANCE")
    attempt = (await send(one(aggregator))).attempts[0]
    assert (attempt.outcome, attempt.status_code) == (Outcome.TRANSIENT, 503)
    assert attempt.detail == "code MAINTENANCE: scripted failure"


async def test_html_error_page_is_transient_without_a_code(legacy: LocalAggregator) -> None:
    legacy.fail(502)
    attempt = (await send(one(legacy))).attempts[0]
    assert (attempt.outcome, attempt.error_code) == (Outcome.TRANSIENT, None)
    assert attempt.detail == "HTTP 502 without a JSON body"


@pytest.mark.parametrize("variant", ["json", "form"])
async def test_garbage_is_a_malformed_reply(variant: str) -> None:
    async with LocalAggregator(variant, "bearer" if variant == "json" else "query") as gateway:
        gateway.garbage()
        attempt = (await send(one(gateway))).attempts[0]
    assert attempt.outcome is Outcome.TRANSIENT
    assert attempt.detail == "malformed reply: HTTP 200 without a JSON body"


async def test_success_without_an_id_is_a_malformed_reply(aggregator: LocalAggregator) -> None:
    attempt = (await send(one(aggregator, id_path="data.id"))).attempts[0]
    assert attempt.outcome is Outcome.TRANSIENT
    assert attempt.detail == "malformed reply: success without a message id at 'data.id'"


async def test_hang_is_a_timeout(aggregator: LocalAggregator) -> None:
    aggregator.hang()
    result = await send(one(aggregator, timeout="200ms"))
    assert attempts(result) == [("aggregator", Outcome.TIMEOUT)]
    assert aggregator.messages == []


async def test_dropped_connection_is_transient(aggregator: LocalAggregator) -> None:
    aggregator.drop()
    attempt = (await send(one(aggregator))).attempts[0]
    assert attempt.outcome is Outcome.TRANSIENT
    assert (attempt.detail or "").startswith("connection error")


# -- requests built from templates, without a network -----------------------------------------


def provider(**changes: Any) -> HttpApiProvider:
    body = copy.deepcopy(EXAMPLE["providers"]["aggregator"])
    body.update(auth={"kind": "bearer", "token": "t0ken"}, **changes)
    config = config_of({"p": {k: v for k, v in body.items() if v is not None}})
    return HttpApiProvider(config.providers["p"])


def outbound(**changes: Any) -> OutboundSMS:
    fields: dict[str, Any] = {
        "message_id": "m1",
        "to": TO,
        "country": "DE",
        "text": "hello",
        "sender": None,
        "encoding": "GSM-7",
        "segments": 2,
        "category": "otp",
        "attempt": 2,
        **changes,
    }
    return OutboundSMS(**fields)


def test_fields_without_a_value_are_left_out() -> None:
    request = provider().build_request(outbound())
    assert request.json == {"to": TO, "text": "hello", "reference": "m1", "parts": 2}


def test_mixed_templates_render_missing_values_empty_and_lone_numbers_as_numbers() -> None:
    body = {"to": ["{to}"], "note": "from {sender} try {attempt}", "n": "{attempt}", "x": True}
    request = provider(json=body).build_request(outbound())
    assert request.json == {"to": [TO], "note": "from  try 2", "n": 2, "x": True}


def test_values_in_the_url_are_percent_encoded() -> None:
    request = provider(url="/send/{to}/{text}", query={"cb": "{message_id}"}).build_request(
        outbound(text="a/b c?")
    )
    assert request.url.endswith("/send/%2B4915123456789/a%2Fb%20c%3F?cb=m1")


def test_credentials_stay_out_of_the_providers_repr() -> None:
    p = provider()
    assert "t0ken" not in repr(p.spec)


# -- mistakes reported at load ---------------------------------------------------------------


def load_error(**changes: Any) -> ConfigError:
    body = copy.deepcopy(EXAMPLE["providers"]["aggregator"])
    body.update(auth={"kind": "bearer", "token": "t0ken"})
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}
    document = {"providers": {"agg": body}, "rules": [{"providers": ["agg"]}]}
    text = yaml.safe_dump(document, sort_keys=False)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="routing.yaml")
    return caught.value


def test_unknown_template_field_is_reported_at_its_line() -> None:
    error = load_error(url="/send/{too}")
    assert len(error.problems) == 1
    assert error.path == "providers.agg.url"
    assert error.line is not None
    assert str(error).startswith(f"routing.yaml:{error.line}:")
    assert "unknown template field '{too}': did you mean 'to'?" in str(error)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{to.__class__}", "no attribute or index access"),
        ("{to.__class__.__init__.__globals__}", "no attribute or index access"),
        ("{to[0]}", "no attribute or index access"),
        ("{to!r}", "conversions and format specs are not supported"),
        ("{text:>{segments}}", "conversions and format specs are not supported"),
        ("{}", "names no field"),
        ("{0}", "names no field"),
        ("{to", "expected '}' before end of string"),
        ("to}", "Single '}' encountered"),
    ],
)
def test_templates_cannot_reach_into_python_objects(template: str, fragment: str) -> None:
    error = load_error(json={"to": template})
    assert error.path == "providers.agg.json"
    assert "json.to: " in str(error)
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"auth": {"kind": "bearr", "token": "t"}}, "auth", "did you mean 'bearer'?"),
        ({"auth": {"token": "t"}}, "auth", "auth needs 'kind'"),
        ({"auth": {"kind": "basic", "username": "u"}}, "auth", "needs 'password'"),
        ({"auth": {"kind": "bearer", "token": "t", "user": "u"}}, "auth", "unknown key(s): user"),
        ({"status_outcomes": {400: "rejcted"}}, "status_outcomes", "did you mean 'rejected'?"),
        ({"status_outcomes": {"4x4": "auth"}}, "status_outcomes", "'4x4' is not an HTTP status"),
        ({"status_outcomes": {600: "auth"}}, "status_outcomes", "'600' is not an HTTP status"),
        ({"code_outcomes": {"X": "fine"}}, "code_outcomes", "unknown outcome 'fine'"),
        ({"code_path": None}, "code_outcomes", "code_outcomes needs code_path"),
        ({"id_path": "data..id"}, "id_path", "expected a path like data.messages[0].id"),
        ({"detail_path": "error message"}, "detail_path", "expected a path like"),
        ({"form": {"to": "{to}"}}, "json", "either form: or json:"),
        ({"method": "GET"}, "json", "a GET request has no body"),
        ({"method": "DELETE"}, "method", "method is one of GET, POST, PUT, PATCH"),
        ({"base_url": None}, "url", "is a path: give base_url"),
        ({"url": "ftp://x/send"}, "url", "must start with '/'"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a valid HTTP header name"),
        ({"json": "{to}"}, "json", "json must be a mapping or a list"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_mistakes_are_reported_at_load(changes: dict[str, Any], key: str, fragment: str) -> None:
    error = load_error(**changes)
    assert [p.path for p in error.problems] == [f"providers.agg.{key}"]
    assert fragment in str(error)


def test_missing_id_path_is_reported_once() -> None:
    error = load_error(id_path=None)
    assert [p.message for p in error.problems] == ["provider 'agg' (type http) needs 'id_path'"]


@pytest.mark.parametrize(
    "auth",
    [
        {"kind": "header", "name": "Bad Name", "value": "s3cr3t-value"},
        {"kind": "basic", "username": "s3cr3t-value", "password": ""},
        {"kind": "bearer", "token": "s3cr3t-value", "extra": "s3cr3t-value"},
        {"kind": "query", "name": "key", "value": ["s3cr3t-value"]},
    ],
)
def test_auth_errors_never_quote_a_credential(auth: dict[str, Any]) -> None:
    message = str(load_error(auth=auth))
    assert "s3cr3t" not in message
