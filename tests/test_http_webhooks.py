"""The generic ``http`` adapter's webhooks: receipts, inbound messages and their
authentication, all declared in YAML.

Over real sockets: the local aggregator (tests/local_aggregator.py) sends through
the router's adapter, then calls the router's webhook app back as
config/http-aggregator.yaml declares it (an HMAC over timestamp and body, HTTP
Basic, a shared token in a header or the query).  What a genuine callback moves
(``status()``, delivery reports, opt-outs), a forged one must not.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Hooks, call, reaches, state_of
from local_aggregator import LocalAggregator
from provider_support import serving
from test_http_adapter import EXAMPLE, OTP, TO, section

from smsroute import (
    ConfigError,
    DeliveryReport,
    InboundMessage,
    Message,
    parse_config,
)

PROMO = Message(to=TO, text="Sale!", category="marketing")
OUR_NUMBER = "+4930123456"


def hooked(gateway: LocalAggregator, hooks: Hooks, **changes: Any) -> Any:
    """A config of one provider pointed at ``gateway``, its receipts sent to ``hooks``."""
    name = "aggregator" if gateway.variant == "json" else "legacy-gateway"
    body = section(name, gateway, status_callback=f"{hooks.url}/{name}/status", **changes)
    document = {
        "defaults": {"default_region": "DE"},
        "providers": {name: body},
        "rules": [{"name": "default", "providers": [name]}],
    }
    return parse_config(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    yield h
    await h.close()


def one_byte_changed(raw: bytes) -> bytes:
    """``raw`` with its last byte replaced by another."""
    return raw[:-1] + (b"0" if raw[-1:] != b"0" else b"1")


AUTH_KINDS = [
    ("json", "hmac", None),
    ("json", "hmac", {"signed": "body", "encoding": "base64", "algorithm": "sha512"}),
    ("json", "hmac", {"signed": "url+body", "algorithm": "sha1", "prefix": ""}),
    ("json", "basic", None),
    ("json", "token-header", None),
    ("json", "token-query", None),
    ("form", "basic", None),
    ("form", "hmac", {"signed": "url+body", "prefix": "v1="}),
]
AUTH_IDS = [
    "json-hmac-timestamp",
    "json-hmac-body-base64-sha512",
    "json-hmac-url-sha1",
    "json-basic",
    "json-token-header",
    "json-token-query",
    "form-get-basic",
    "form-get-hmac-url",
]


def gateway_for(variant: str, kind: str, options: dict[str, str] | None) -> LocalAggregator:
    if options is not None and options.get("signed") != "timestamp.body":
        options = {**options, "timestamp_header": "", "tolerance": ""}
    aggregator = LocalAggregator(
        variant, "bearer" if variant == "json" else "query", webhook_auth=kind
    )
    if options is not None:
        aggregator.hmac_options = {
            **aggregator.hmac_options,
            **{k: v for k, v in options.items() if v},
        }
        for key in [k for k, v in options.items() if not v]:
            aggregator.hmac_options.pop(key, None)
    return aggregator


@pytest.mark.parametrize(("variant", "kind", "options"), AUTH_KINDS, ids=AUTH_IDS)
async def test_a_signed_receipt_moves_the_status(
    hooks: Hooks, variant: str, kind: str, options: dict[str, str] | None
) -> None:
    async with gateway_for(variant, kind, options) as gateway:
        config = hooked(gateway, hooks)
        async with serving(hooks, config) as router:
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            gateway.receipts("delivered")
            result = await router.send(OTP)
            async with asyncio.timeout(5):
                await gateway.wait_receipts(1)
            assert gateway.receipts_sent == [(result.provider_message_id, "delivered", 200)]
            assert await state_of(router, result.message_id) == "delivered"
    assert [(r.message_id, r.status) for r in reports] == [(result.message_id, "delivered")]


@pytest.mark.parametrize(("variant", "kind", "options"), AUTH_KINDS, ids=AUTH_IDS)
async def test_a_forged_receipt_is_refused_and_moves_nothing(
    hooks: Hooks, variant: str, kind: str, options: dict[str, str] | None
) -> None:
    async with gateway_for(variant, kind, options) as gateway:
        config = hooked(gateway, hooks)
        async with serving(hooks, config) as router:
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            result = await router.send(OTP)
            method, url, headers, body = gateway.receipt_request(
                gateway.messages[0], "delivered", None
            )
            if kind == "hmac":  # the signature, one byte off
                name = gateway.hmac_options["header"]
                headers[name] = headers[name][:-2] + ("00" if headers[name][-2:] != "00" else "11")
            elif kind == "basic":
                headers["Authorization"] = (
                    "Basic "
                    + base64.b64encode(
                        one_byte_changed(
                            f"{gateway.callback_username}:{gateway.callback_password}".encode()
                        )
                    ).decode()
                )
            elif kind == "token-header":
                headers["X-Webhook-Token"] = one_byte_changed(
                    gateway.webhook_token.encode()
                ).decode()
            else:
                forged = one_byte_changed(gateway.webhook_token.encode()).decode()
                url = url.replace(gateway.webhook_token, forged)
            assert await call(method, url, headers, body) == 403
            # The same request unchanged is accepted: the forgery alone made the 403.
            genuine = gateway.receipt_request(gateway.messages[0], "delivered", None)
            assert await state_of(router, result.message_id) == "accepted"
            assert reports == []
            assert await call(*genuine) == 200
            assert await state_of(router, result.message_id) == "delivered"


async def test_a_changed_body_under_a_genuine_signature_is_refused(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        result = await router.send(OTP)
        method, url, headers, body = gateway.receipt_request(gateway.messages[0], "delivered", None)
        tampered = body.replace(b"DELIVRD", b"UNDELIV")
        assert await call(method, url, headers, tampered) == 403
        assert await state_of(router, result.message_id) == "accepted"


@pytest.mark.parametrize("age", [301, -301])
async def test_a_stale_or_future_timestamp_is_refused(hooks: Hooks, age: int) -> None:
    async with (
        LocalAggregator("json", "bearer") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        result = await router.send(OTP)
        record = gateway.messages[0]
        method, url, _, body = gateway.receipt_request(record, "delivered", None)
        # Signed correctly, but at a time outside the 300 s tolerance.
        stamp = str(int(time.time()) - age)
        digest = hmac.new(
            gateway.webhook_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Aggregator-Timestamp": stamp,
            "X-Aggregator-Signature": f"sha256={digest}",
        }
        assert await call(method, url, headers, body) == 403
        assert await state_of(router, result.message_id) == "accepted"


async def test_undelivered_receipt_carries_its_error_code_and_time(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        gateway.receipts("undelivered", error_code="E12")
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await gateway.wait_receipts(1)
        assert await state_of(router, result.message_id) == "undelivered"
    assert [(r.status, r.error_code) for r in reports] == [("undelivered", "E12")]
    assert reports[0].at.tzinfo is not None


async def test_one_call_with_several_receipts_moves_each_message(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        first = await router.send(OTP)
        second = await router.send(OTP)
        results = [
            {"id": m.provider_message_id, "status": status}
            for m, status in zip(gateway.messages, ("DELIVRD", "REJECTD"), strict=True)
        ]
        results.append({"id": "agg-999999", "status": "NEWWORD"})  # not ours: ignored
        body = json.dumps({"results": results}).encode()
        method, url, headers, body = gateway.signed(
            "POST", f"{hooks.url}/aggregator/status", body, "application/json"
        )
        assert await call(method, url, headers, body) == 200
        assert await state_of(router, first.message_id) == "delivered"
        assert await state_of(router, second.message_id) == "failed"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"results": [{"status": "DELIVRD"}]}, b"receipt without a message id at 'id'"),
        ({"results": [{"id": "agg-000001"}]}, b"receipt without a status at 'status'"),
        ({"result": []}, b"receipt body has no list at 'results'"),
        ([1, 2], b"receipt body has no list at 'results'"),
    ],
)
async def test_a_signed_but_malformed_receipt_is_a_400(
    hooks: Hooks, body: Any, fragment: bytes
) -> None:
    async with (
        LocalAggregator("json", "bearer") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        result = await router.send(OTP)
        method, url, headers, raw = gateway.signed(
            "POST", f"{hooks.url}/aggregator/status", json.dumps(body).encode(), None
        )
        status, answer = await _call_reading(method, url, headers, raw)
        assert status == 400
        assert fragment in answer
        assert await state_of(router, result.message_id) == "accepted"


async def _call_reading(
    method: str, url: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=body or None) as resp,
    ):
        return resp.status, await resp.read()


async def test_the_undeclared_method_is_a_405(hooks: Hooks) -> None:
    async with (
        LocalAggregator("form", "query") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        result = await router.send(OTP)
        _, url, headers, _ = gateway.receipt_request(gateway.messages[0], "delivered", None)
        assert await call("POST", url, headers, b"") == 405  # its receipts come by GET
        assert await state_of(router, result.message_id) == "accepted"


# -- inbound messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["json", "form"])
async def test_an_inbound_stop_opts_the_sender_out(hooks: Hooks, variant: str) -> None:
    async with LocalAggregator(variant, "bearer" if variant == "json" else "query") as gateway:
        config = hooked(gateway, hooks)
        name = next(iter(config.providers))
        async with serving(hooks, config) as router:
            inbound: list[InboundMessage] = []
            router.on_inbound(inbound.append)
            url = f"{hooks.url}/{name}/inbound"
            forged = gateway.inbound_request(url, TO, OUR_NUMBER, "STOP")
            method, target, headers, body = forged
            if variant == "json":
                body = body.replace(b"STOP", b"STOP ")  # signed as STOP, sent otherwise
            else:
                headers = {**headers, "Authorization": "Basic c21zcm91dGU6d3Jvbmc="}
            assert await call(method, target, headers, body) == 403
            assert not router.is_opted_out(TO)
            status = await gateway.send_inbound(url, sender=TO, recipient=OUR_NUMBER, text="STOP")
            assert status == 200
            assert router.is_opted_out(TO)
            refused = await router.send(PROMO)
            assert refused.reason == "opted_out"
    assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [(TO, OUR_NUMBER, "STOP")]
    assert inbound[0].provider_message_id is not None
    assert inbound[0].provider_message_id.startswith("mo-")


# -- without webhook_auth, and with webhook_auth: none -------------------------------------------


async def test_without_webhook_auth_every_webhook_is_refused(hooks: Hooks) -> None:
    async with LocalAggregator("json", "bearer", webhook_auth="none") as gateway:
        config = hooked(gateway, hooks, webhook_auth=None, receipts=None, inbound=None)
        async with serving(hooks, config) as router:
            result = await router.send(OTP)
            for kind, request in (
                ("status", gateway.receipt_request(gateway.messages[0], "delivered", None)),
                ("inbound", gateway.inbound_request("", TO, OUR_NUMBER, "STOP")),
            ):
                method, _, headers, body = request
                status, answer = await _call_reading(
                    method, f"{hooks.url}/aggregator/{kind}", headers, body
                )
                assert status == 403
                assert b"declares no webhook_auth" in answer
            assert await state_of(router, result.message_id) == "accepted"
            assert not router.is_opted_out(TO)


async def test_webhook_auth_none_accepts_unsigned_webhooks(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer", webhook_auth="none") as gateway,
        serving(hooks, hooked(gateway, hooks)) as router,
    ):
        gateway.receipts("delivered")
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await gateway.wait_receipts(1)
        assert await state_of(router, result.message_id) == "delivered"
        url = f"{hooks.url}/aggregator/inbound"
        assert await gateway.send_inbound(url, sender=TO, recipient=OUR_NUMBER, text="STOP")
        assert router.is_opted_out(TO)


async def test_an_undelivered_receipt_resends_through_the_next_gateway(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer") as first,
        LocalAggregator("json", "bearer") as second,
    ):
        document = {
            "defaults": {"default_region": "DE", "webhook_url": hooks.url},
            "providers": {
                "first": section("aggregator", first),
                "second": section("aggregator", second),
            },
            "rules": [
                {"name": "default", "providers": ["first", "second"], "on_undelivered": "resend"}
            ],
        }
        config = parse_config(yaml.safe_dump(document, sort_keys=False))
        first.receipts("undelivered", error_code="E7")
        second.receipts("delivered")
        async with serving(hooks, config) as router:
            result = await router.send(OTP)
            async with asyncio.timeout(10):
                await reaches(router, result.message_id, "delivered")
            state = await router.status(result.message_id)
            assert state is not None
            assert [h[:2] for h in state.history] == [
                ("accepted", "first"),
                ("undelivered", "first"),
                ("accepted", "second"),
                ("delivered", "second"),
            ]
            assert second.messages[0].fields["reference"] == result.message_id
            # Each gateway's delivery health counts its own attempt.
            ratios = {p: router.state.health(p).delivery_ratio for p in ("first", "second")}
            assert ratios == {"first": 0.0, "second": 1.0}


def two_gateways(hooks: Hooks, first: LocalAggregator, second: LocalAggregator) -> Any:
    """first then second, resending undelivered messages; first's receipts say which of
    its error codes are the number's (E1) and which mean an opt-out (E21)."""
    body = section("aggregator", first)
    body["receipts"] = {**body["receipts"], "permanent_errors": ["E1"], "opt_out_errors": ["E21"]}
    document = {
        "defaults": {"default_region": "DE", "webhook_url": hooks.url},
        "providers": {"first": body, "second": section("aggregator", second)},
        "rules": [
            {"name": "default", "providers": ["first", "second"], "on_undelivered": "resend"}
        ],
    }
    return parse_config(yaml.safe_dump(document, sort_keys=False))


async def test_a_permanent_error_code_is_not_resent_nor_blamed_on_the_gateway(
    hooks: Hooks,
) -> None:
    async with (
        LocalAggregator("json", "bearer") as first,
        LocalAggregator("json", "bearer") as second,
    ):
        first.receipts("undelivered", error_code="E1")
        async with serving(hooks, two_gateways(hooks, first, second)) as router:
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            result = await router.send(OTP)
            async with asyncio.timeout(5):
                await first.wait_receipts(1)
            assert await state_of(router, result.message_id) == "undelivered"
            assert [(r.error_code, r.retryable, r.opted_out) for r in reports] == [
                ("E1", False, False)
            ]
            assert second.messages == []  # the number's failure: no resend
            assert router.state.health("first").delivery_ratio is None  # nor blamed on it
            # An error code the list does not name is the gateway's: resent through second.
            first.receipts("undelivered", error_code="E2")
            second.receipts("delivered")
            other = await router.send(OTP)
            async with asyncio.timeout(10):
                await reaches(router, other.message_id, "delivered")
            assert len(second.messages) == 1


async def test_an_opt_out_error_code_opts_the_number_out(hooks: Hooks) -> None:
    async with (
        LocalAggregator("json", "bearer") as first,
        LocalAggregator("json", "bearer") as second,
    ):
        first.receipts("undelivered", error_code="E21")
        async with serving(hooks, two_gateways(hooks, first, second)) as router:
            result = await router.send(PROMO)
            async with asyncio.timeout(5):
                await first.wait_receipts(1)
            assert await state_of(router, result.message_id) == "undelivered"
            assert router.is_opted_out(TO)
            again = await router.send(PROMO)
            assert (again.ok, again.reason, again.attempts) == (False, "opted_out", ())
            assert len(first.messages) == 1
            assert second.messages == []


# -- mistakes reported at load -------------------------------------------------------------------


def load_error(**changes: Any) -> ConfigError:
    body = copy.deepcopy(EXAMPLE["providers"]["aggregator"])
    body.update(auth={"kind": "bearer", "token": "t0ken"})
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    document = {"providers": {"agg": body}, "rules": [{"providers": ["agg"]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(document, sort_keys=False), file="routing.yaml")
    return caught.value


RECEIPTS = EXAMPLE["providers"]["aggregator"]["receipts"]
INBOUND = EXAMPLE["providers"]["aggregator"]["inbound"]
HMAC = EXAMPLE["providers"]["aggregator"]["webhook_auth"]["hmac"]


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        (
            {"receipts": {**RECEIPTS, "statuses": {"DELIVRD": "delivred"}}},
            "receipts.statuses.DELIVRD",
            "unknown status 'delivred': did you mean 'delivered'?",
        ),
        (
            {"receipts": {k: v for k, v in RECEIPTS.items() if k != "status"}},
            "receipts.status",
            "receipts needs 'status'",
        ),
        (
            {"receipts": {k: v for k, v in RECEIPTS.items() if k != "statuses"}},
            "receipts.statuses",
            "receipts need 'statuses'",
        ),
        (
            {"inbound": {k: v for k, v in INBOUND.items() if k != "text"}},
            "inbound.text",
            "inbound needs 'text'",
        ),
        ({"inbound": {**INBOUND, "sendr": "from"}}, "inbound.sendr", "did you mean 'sender'?"),
        (
            {"receipts": {**RECEIPTS, "message_id": "results..id"}},
            "receipts.message_id",
            "expected a path like",
        ),
        (
            {"receipts": {**RECEIPTS, "method": "GET"}},
            "receipts.format",
            "a GET has no body",
        ),
        (
            {"inbound": {**INBOUND, "format": "form", "list": "messages"}},
            "inbound.list",
            "list is a path into a JSON body",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "algorithm": "md5"}}},
            "webhook_auth.hmac.algorithm",
            "unsupported algorithm 'md5': choose sha1 or sha256 or sha512",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "signed": "headers"}}},
            "webhook_auth.hmac.signed",
            "unsupported signed 'headers'",
        ),
        (
            {"webhook_auth": {"hmac": {k: v for k, v in HMAC.items() if k != "timestamp_header"}}},
            "webhook_auth.hmac.timestamp_header",
            "signed: timestamp.body needs timestamp_header",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "signed": "body", "tolerance": None}}},
            "webhook_auth.hmac.timestamp_header",
            "a timestamp outside the signature proves nothing",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "tolerance": "soon"}}},
            "webhook_auth.hmac.tolerance",
            "expected a duration",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "secret": None}}},
            "webhook_auth.hmac.secret",
            "hmac needs 'secret'",
        ),
        (
            {"webhook_auth": {"hmac": {**HMAC, "headr": "X"}}},
            "webhook_auth.hmac.headr",
            "did you mean 'header'?",
        ),
        (
            {"webhook_auth": {"signature": {}}},
            "webhook_auth",
            "unknown webhook_auth kind 'signature'",
        ),
        ({"webhook_auth": "off"}, "webhook_auth", "or 'none' to accept unsigned webhooks"),
        (
            {"webhook_auth": {"token": {"header": "X-T", "query": "t", "value": "v"}}},
            "webhook_auth.token",
            "one of header",
        ),
        ({"webhook_auth": None}, "webhook_auth", "receipts and inbound need webhook_auth"),
        (
            {"receipts": {**RECEIPTS, "permanent_errors": "E1"}},
            "receipts.permanent_errors",
            "a list of the gateway's error codes",
        ),
        (
            {
                "receipts": {
                    **{k: v for k, v in RECEIPTS.items() if k != "error_code"},
                    "opt_out_errors": ["E21"],
                }
            },
            "receipts.opt_out_errors",
            "no 'error_code' field",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and ("." in v or v == "webhook_auth") else None,
)
def test_webhook_mistakes_are_reported_at_load(
    changes: dict[str, Any], path: str, fragment: str
) -> None:
    error = load_error(**changes)
    assert [p.path for p in error.problems] == [f"providers.agg.{path}"]
    assert fragment in str(error)


def test_a_get_webhook_signed_over_the_body_alone_is_refused_at_load() -> None:
    receipts = {**RECEIPTS, "method": "GET", "format": "form", "list": None}
    receipts = {k: v for k, v in receipts.items() if v is not None}
    receipts["error_code"] = "err"
    hmac_section = {k: v for k, v in HMAC.items() if k not in ("timestamp_header", "tolerance")}
    error = load_error(receipts=receipts, webhook_auth={"hmac": {**hmac_section, "signed": "body"}})
    assert [p.path for p in error.problems] == ["providers.agg.webhook_auth.hmac.signed"]
    assert "sign url+body" in str(error)


@pytest.mark.parametrize(
    "auth",
    [
        {"hmac": {**HMAC, "secret": ["s3cr3t-value"]}},
        {"basic": {"username": "s3cr3t-user:x", "password": "s3cr3t-value"}},
        {"token": {"header": "Bad Name", "value": "s3cr3t-value"}},
        {"token": {"value": "s3cr3t-value"}},
    ],
)
def test_webhook_auth_errors_never_quote_a_secret(auth: dict[str, Any]) -> None:
    error = load_error(webhook_auth=auth)
    assert all(p.path.startswith("providers.agg.webhook_auth.") for p in error.problems)
    assert "s3cr3t" not in str(error)
