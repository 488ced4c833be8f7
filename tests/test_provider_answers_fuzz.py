"""Whatever a provider answers a send with, ``Router.send`` returns a result of a
documented outcome, and nothing of the message or of the credentials leaks.

A provider's answer is input like any other: an edge proxy's HTML page, a body
cut short, a field of the wrong type, a number of 4,000 digits, JSON nested
3,000 deep, a Retry-After of ``1e400``.  For every HTTP provider type (twilio,
vonage, plivo, telnyx, infobip, sinch, bandwidth, messagebird and the generic
``http``), a router with that provider alone sends to a server on 127.0.0.1
whose answer is whatever hypothesis draws: a status from 100 to 599 (mostly
the usual ones), a Content-Type that may lie, a Retry-After of any text, and a
body that is one of the provider's own success or error bodies (its fields
dropped, retyped, nulled, blown up or nested deep, its free text quoting back
the number, the text or the key), arbitrary JSON, any of those cut short, not
UTF-8 or in UTF-16, or any bytes at all.  A second server, on a raw socket,
answers what no HTTP framework sends: a Content-Length longer than the body, a
connection closed mid-body, mid-headers or before any answer, a status line
that is not HTTP, a ``100 Continue`` before the answer.  And beside the
properties, a sweep gives each adapter's ``parse_response`` every documented
answer with each of its values changed in turn (what hypothesis reaches only
now and then), and every odd Retry-After.

The contract, for every answer:

- ``send`` returns a :class:`SendResult` (within the provider's timeout): it
  never raises and never hangs;
- its outcome is one of :class:`Outcome`, and the adapter classified the answer
  itself: an adapter that raised is a bug even though the router survives it
  (the attempt then reads ``adapter error: ...`` and an ERROR is logged);
  ``HttpProvider.parse_response`` "must not raise on garbage";
- an answer that is not a 2xx, or is broken, is never a success; a success has a
  message id; the message's recorded state is what the result says;
- a Retry-After is a finite pause of zero seconds or more;
- nothing leaks: no reason, detail, error code or log record (at any level)
  holds the destination's digits, the message's text or a credential;
- nothing else changes: every answer reaches the server (the breaker reopens at
  once in this config, pauses are waited out on a manual clock), an opt-out is
  recorded only for a rejection, and after the whole run the same router sends
  again when the server answers as the provider does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from log_support import Records, every_log_record
from multidict import CIMultiDict, CIMultiDictProxy

from smsroute import ManualClock, Message, Outcome, Router, SendResult, parse_config
from smsroute.providers import BUILTIN, load_provider_class
from smsroute.providers.base import HttpProvider

HANDSET = "+4915123456789"
#: What must never show of it: its digits after the country code, however it is written.
DIGITS = "15123456789"
TEXT = "secret-text-7f3a"
MESSAGE = Message(to=HANDSET, text=TEXT, category="otp")
#: The provider's timeout: what an answer that never ends costs (a 1xx with nothing after it).
TIMEOUT = "1s"
JSON_TYPE = (("Content-Type", "application/json"),)


# -- what the servers answer -------------------------------------------------------------------


@attrs.frozen
class Answer:
    """One answer to a send request: its status, headers and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __repr__(self) -> str:  # what hypothesis shows of a failing example
        body = self.body if len(self.body) <= 400 else self.body[:400] + b"..."
        return f"Answer({self.status}, {self.headers!r}, {body!r})"


@attrs.frozen
class Broken:
    """An answer written on a raw socket, and how its connection goes wrong.

    ``how``: ``short`` (a Content-Length longer than the body, then closed), ``cut``
    (closed mid-body), ``chunk`` (closed mid-chunk), ``silent`` (closed before any
    answer), ``head`` (closed mid-headers), ``status`` (a status line that is not
    HTTP), ``continue`` (``100 Continue``, then the whole answer: not broken) or
    ``eof`` (no Content-Length, the body ends at the close: not broken either).
    ``cut`` says where to cut (modulo the length).
    """

    answer: Answer
    how: str
    cut: int

    @property
    def intact(self) -> bool:
        return self.how in ("continue", "eof")


BROKEN_HOWS = ("short", "cut", "chunk", "silent", "head", "status", "continue", "eof")


def _head(answer: Answer, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} Whatever"]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    lines += [*extra, "Connection: close"]
    return "\r\n".join(lines).encode() + b"\r\n\r\n"


def wire(broken: Broken) -> bytes:
    """The bytes a raw server writes for ``broken`` (before it closes the connection)."""
    a, cut, body = broken.answer, broken.cut, broken.answer.body
    if broken.how == "short":
        return _head(a, f"Content-Length: {len(body) + 1 + cut}") + body
    if broken.how == "cut":  # one byte short at least
        return _head(a, f"Content-Length: {len(body) + 1}") + body[: cut % (len(body) + 1)]
    if broken.how == "chunk":
        return _head(a, "Transfer-Encoding: chunked") + b"%x\r\n" % (len(body) + 1 + cut) + body
    if broken.how == "silent":
        return b""
    if broken.how == "head":
        whole = _head(a, f"Content-Length: {len(body)}")
        return whole[: 5 + cut % (len(whole) - 6)]
    if broken.how == "status":
        return b"HTTP/1.1 2OO OK\r\n\r\n" if cut % 2 else b"<html>" + body[: cut % 64] + b"\r\n\r\n"
    if broken.how == "continue":
        return b"HTTP/1.1 100 Continue\r\n\r\n" + _head(a, f"Content-Length: {len(body)}") + body
    assert broken.how == "eof", broken.how
    return _head(a) + body


class AnswerServer:
    """A provider's API on 127.0.0.1 (aiohttp) that answers any request with ``answer``."""

    def __init__(self) -> None:
        self.answer = Answer(500, (), b"")
        #: Requests that reached it.
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        a = self.answer
        # Without a Content-Type, aiohttp writes its own: application/octet-stream.
        return web.Response(status=a.status, body=a.body, headers=CIMultiDict(a.headers))


class RawServer:
    """A provider's API on a raw socket: reads a request, writes ``broken``'s bytes,
    closes the connection."""

    def __init__(self) -> None:
        self.broken = Broken(Answer(500, (), b""), "eof", 0)
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.requests += 1
            writer.write(wire(self.broken))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away (its timeout): nobody to answer
        finally:
            writer.close()


# -- the provider types, configured for the test -----------------------------------------------


@attrs.frozen
class Case:
    """A provider type: its YAML lines, the credentials in them, and what it really
    answers a send with (the first of ``shapes`` is its success)."""

    name: str
    settings: tuple[str, ...]
    #: The values of its secret options: never to be shown anywhere.
    secrets: tuple[str, ...]
    #: (status, body) of its answers as documented, echoing the number and the text
    #: where it does: a success first, then errors.
    shapes: tuple[tuple[int, Any], ...]

    def config_text(self, base_url: str) -> str:
        lines = [
            f"type: {self.name}",
            f"base_url: {base_url}",
            f"timeout: {TIMEOUT}",
            # Every answer must reach the server: a breaker that opens (an AUTH answer
            # trips it at once) lets the next message through a millisecond later.
            "breaker: {consecutive_failures: 1000000, min_calls: 1000000, "
            "open_for: 1ms, max_open_for: 1ms}",
            *self.settings,
        ]
        section = "\n".join(f"    {line}" for line in lines)
        return (
            f"defaults:\n  default_region: DE\nproviders:\n  {self.name}:\n{section}\n"
            f"rules:\n  - name: default\n    providers: [{self.name}]\n"
        )

    def success(self) -> Answer:
        status, doc = self.shapes[0]
        return Answer(status, JSON_TYPE, json.dumps(doc).encode())


TWILIO_TOKEN = "twilio-token-4c9b1e"
VONAGE_SECRET = "vonage-secret-8a2d"
PLIVO_TOKEN = "plivo-token-2f7e6c"
TELNYX_KEY = "KEYtelnyx-5b8d3a"
INFOBIP_KEY = "infobip-key-9e4c71"
SINCH_TOKEN = "sinch-token-6d2a8f"
BANDWIDTH_PASSWORD = "bandwidth-password-3e9f"
MESSAGEBIRD_KEY = "messagebird-key-7c5a2e"
HTTP_TOKEN = "aggregator-token-1b6e4d"

# The shapes are those of the fakes in smsroute/testing/ (and of tests/local_aggregator.py).
CASES = [
    Case(
        "twilio",
        ('account_sid: "AC7d1e7d1e"', f'auth_token: "{TWILIO_TOKEN}"', 'from: "+15005550006"'),
        (TWILIO_TOKEN,),
        (
            (
                201,
                {
                    "account_sid": "AC7d1e7d1e",
                    "api_version": "2010-04-01",
                    "body": TEXT,
                    "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
                    "error_code": None,
                    "error_message": None,
                    "from": "+15005550006",
                    "num_segments": "1",
                    "price": None,
                    "sid": "SM0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
                    "status": "queued",
                    "to": HANDSET,
                    "uri": "/2010-04-01/Accounts/AC7d1e7d1e/Messages/SM0f.json",
                },
            ),
            (
                400,
                {
                    "code": 21211,
                    "message": f"The 'To' number {HANDSET} is not a valid phone number.",
                    "more_info": "https://www.twilio.com/docs/errors/21211",
                    "status": 400,
                },
            ),
            (400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
            (429, {"code": 20429, "message": "Too Many Requests", "status": 429}),
            (401, {"code": 20003, "message": "Authenticate", "status": 401}),
        ),
    ),
    Case(
        "vonage",
        ('api_key: "vonage-key"', f'api_secret: "{VONAGE_SECRET}"', "from: Acme"),
        (VONAGE_SECRET,),
        (
            (
                200,
                {
                    "message-count": "1",
                    "messages": [
                        {
                            "to": HANDSET[1:],
                            "message-id": "0A00000012345678",
                            "status": "0",
                            "remaining-balance": "3.14159265",
                            "message-price": "0.03330000",
                            "network": "26202",
                        }
                    ],
                },
            ),
            (
                200,
                {
                    "message-count": "2",
                    "messages": [
                        {"to": HANDSET[1:], "message-id": "0A00000012345678", "status": "0"},
                        {"status": "1", "error-text": "Throughput Rate Exceeded"},
                    ],
                },
            ),
            (
                200,
                {"message-count": "1", "messages": [{"status": "3", "error-text": "Invalid to"}]},
            ),
            (
                200,
                {"message-count": "1", "messages": [{"status": "6", "error-text": "Unroutable"}]},
            ),
            (502, {"error-text": "Bad Gateway"}),
        ),
    ),
    Case(
        "plivo",
        ('auth_id: "MAXXXXXXXXXXXXXXXXXX"', f'auth_token: "{PLIVO_TOKEN}"', 'from: "+14155550100"'),
        (PLIVO_TOKEN,),
        (
            (
                202,
                {
                    "api_id": "db342550-7f1d-11e1-8ea7-1231380bc196",
                    "message": "message(s) queued",
                    "message_uuid": ["db3ce55a-7f1d-11e1-8ea7-1231380bc196"],
                },
            ),
            (
                202,
                {
                    "api_id": "db342550",
                    "message": "message(s) queued",
                    "message_uuid": [],
                    "invalid_number": [HANDSET[1:]],
                },
            ),
            (400, {"api_id": "db342550", "error": f"{HANDSET[1:]} is not a valid number"}),
            (400, {"api_id": "db342550", "error": {"dst": ["required"], "text": ["too long"]}}),
            (401, {"api_id": "db342550", "error": "Authentication failed"}),
        ),
    ),
    Case(
        "telnyx",
        (f'api_key: "{TELNYX_KEY}"', 'from: "+14155550100"'),
        (TELNYX_KEY,),
        (
            (
                200,
                {
                    "data": {
                        "record_type": "message",
                        "direction": "outbound",
                        "id": "40317d2e-a3d1-4a58-a3bf-2b3b8ba5f3ee",
                        "type": "SMS",
                        "from": {"phone_number": "+14155550100", "carrier": "Telnyx"},
                        "to": [{"phone_number": HANDSET, "status": "queued", "carrier": ""}],
                        "text": TEXT,
                        "parts": 1,
                        "errors": [],
                    }
                },
            ),
            (
                200,
                {
                    "data": {
                        "id": "40317d2e",
                        "to": [{"phone_number": HANDSET, "status": "sending_failed"}],
                        "errors": [{"code": "40300", "title": "Blocked due to STOP message"}],
                    }
                },
            ),
            (
                400,
                {
                    "errors": [
                        {
                            "code": "40310",
                            "title": "Invalid 'to' address",
                            "detail": f"The 'to' address {HANDSET} is invalid.",
                            "source": {"pointer": "/to"},
                            "meta": {"url": "https://developers.telnyx.com/api/errors/40310"},
                        }
                    ]
                },
            ),
            (
                400,
                {
                    "errors": [
                        {
                            "code": "10004",
                            "title": "Missing required parameter",
                            "source": {"pointer": "/from"},
                        }
                    ]
                },
            ),
            (401, {"errors": [{"code": "10009", "title": "Authentication failed"}]}),
        ),
    ),
    Case(
        "infobip",
        (f'api_key: "{INFOBIP_KEY}"', "from: InfoSMS"),
        (INFOBIP_KEY,),
        (
            (
                200,
                {
                    "bulkId": "2034072219640523072",
                    "messages": [
                        {
                            "messageId": "2250be2d4219-3af1-78856-aabe-1362af1edfd2",
                            "status": {
                                "groupId": 1,
                                "groupName": "PENDING",
                                "id": 26,
                                "name": "PENDING_ACCEPTED",
                                "description": "Message sent to next instance",
                            },
                            "destination": HANDSET[1:],
                            "details": {"messageCount": 1},
                        }
                    ],
                },
            ),
            (
                200,
                {
                    "messages": [
                        {
                            "messageId": "2250be2d4219",
                            "status": {
                                "groupId": 5,
                                "groupName": "REJECTED",
                                "id": 51,
                                "name": "REJECTED_DESTINATION",
                                "description": f"Destination {HANDSET[1:]} is invalid",
                            },
                            "error": {
                                "groupName": "HANDSET_ERRORS",
                                "name": "EC_UNKNOWN_SUBSCRIBER",
                                "permanent": True,
                            },
                        }
                    ]
                },
            ),
            (
                400,
                {
                    "errorCode": "E400",
                    "description": "Request cannot be processed.",
                    "action": "Check the syntax, violations and adjust the request.",
                    "violations": [
                        {"property": "messages[0].sender", "violation": "must not be blank"}
                    ],
                    "resources": [],
                },
            ),
            (
                401,
                {
                    "requestError": {
                        "serviceException": {
                            "messageId": "UNAUTHORIZED",
                            "text": "Invalid login details",
                            "validationErrors": {"to": ["bad"]},
                        }
                    }
                },
            ),
        ),
    ),
    Case(
        "sinch",
        ('service_plan_id: "plan-1a2b3c"', f'api_token: "{SINCH_TOKEN}"', 'from: "+15005550006"'),
        (SINCH_TOKEN,),
        (
            (
                201,
                {
                    "id": "01FC66621XXXXX119Z8PMV1QPQ",
                    "to": [HANDSET[1:]],
                    "from": "15005550006",
                    "canceled": False,
                    "body": TEXT,
                    "type": "mt_text",
                    "created_at": "2019-08-24T14:15:22.123Z",
                    "delivery_report": "none",
                    "expire_at": "2019-08-27T14:15:22.123Z",
                    "flash_message": False,
                },
            ),
            (400, {"code": "syntax_invalid_parameter_format", "text": f"Bad to {HANDSET[1:]}"}),
            (401, {"code": "unauthorized", "text": "Unauthorized"}),
            (403, {"code": "missing_callback_url", "text": "No callback URL"}),
        ),
    ),
    Case(
        "bandwidth",
        (
            'account_id: "9900000"',
            'username: "bandwidth-user"',
            f'password: "{BANDWIDTH_PASSWORD}"',
            'application_id: "93de2206-9669-4e07-948d-329f4b722ee2"',
            'from: "+19195551234"',
        ),
        (BANDWIDTH_PASSWORD,),
        (
            (
                202,
                {
                    "id": "1589228074636lm4k2je7j7jklbn2",
                    "owner": "+19195551234",
                    "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2",
                    "time": "2020-05-11T20:14:34.636Z",
                    "segmentCount": 1,
                    "direction": "out",
                    "to": [HANDSET],
                    "from": "+19195551234",
                    "text": TEXT,
                    "priority": "default",
                },
            ),
            (
                400,
                {
                    "type": "request-validation",
                    "description": "Your request could not be accepted",
                    "fieldErrors": [{"fieldName": "to", "description": f"'{HANDSET}' is bad"}],
                },
            ),
            (
                404,
                {
                    "timestamp": "2020-05-11T20:14:34.000+0000",
                    "status": 404,
                    "error": "Not Found",
                    "message": "Not Found",
                    "path": "/api/v2/users/9900000/messages",
                },
            ),
            (429, {"type": "too-many-requests", "description": "Slow down"}),
        ),
    ),
    Case(
        "messagebird",
        (f'access_key: "{MESSAGEBIRD_KEY}"', "from: Acme"),
        (MESSAGEBIRD_KEY,),
        (
            (
                201,
                {
                    "id": "e8077d803532c0b5937c639b60216938",
                    "href": "https://rest.messagebird.com/messages/e8077d80",
                    "direction": "mt",
                    "type": "sms",
                    "originator": "Acme",
                    "body": TEXT,
                    "reference": None,
                    "datacoding": "plain",
                    "mclass": 1,
                    "createdDatetime": "2016-05-03T14:26:57+00:00",
                    "recipients": {
                        "totalCount": 1,
                        "totalSentCount": 1,
                        "items": [{"recipient": int(HANDSET[1:]), "status": "sent"}],
                    },
                },
            ),
            (
                401,
                {
                    "errors": [
                        {
                            "code": 2,
                            "description": "Request not allowed (incorrect access_key)",
                            "parameter": "access_key",
                        }
                    ]
                },
            ),
            (
                422,
                {
                    "errors": [
                        {
                            "code": 9,
                            "description": f"no (correct) recipients found: {HANDSET[1:]}",
                            "parameter": "recipients",
                        }
                    ]
                },
            ),
            (422, {"errors": [{"code": 25, "description": "Not enough balance"}]}),
        ),
    ),
    Case(
        "http",
        (
            "url: /api/v1/messages",
            f'auth: {{kind: bearer, token: "{HTTP_TOKEN}"}}',
            'json: {to: "{to}", from: "{sender}", text: "{text}", reference: "{message_id}"}',
            "from: Acme",
            "id_path: data.messages[0].id",
            "code_path: error.code",
            "code_outcomes: {INVALID_NUMBER: rejected, NO_ROUTE: unroutable, "
            "RATE_LIMITED: throttled, NO_CREDIT: auth}",
            "detail_path: error.message",
            "status_outcomes: {402: auth, 5xx: transient}",
        ),
        (HTTP_TOKEN,),
        (
            (
                202,
                {"data": {"messages": [{"id": "agg-000001", "status": "queued", "to": HANDSET}]}},
            ),
            (400, {"error": {"code": "INVALID_NUMBER", "message": f"{HANDSET} is not valid"}}),
            (200, {"error": {"code": "NO_ROUTE", "message": "no route to DE"}}),
            (429, {"error": {"code": "RATE_LIMITED", "message": "slow down"}}),
            (402, {"error": {"code": "NO_CREDIT", "message": "top up"}}),
        ),
    ),
]
BY_NAME = {case.name: case for case in CASES}


def test_every_http_provider_type_is_fuzzed() -> None:
    """A provider type added to smsroute is added here too (SMPP is no HTTP API)."""
    http = {name for name in BUILTIN if issubclass(load_provider_class(name), HttpProvider)}
    assert http == set(BY_NAME)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_credential_is_looked_for(name: str) -> None:
    """The leak checks below look for the value of each of the adapter's secret options."""
    case = BY_NAME[name]
    options = parse_config(case.config_text("http://127.0.0.1:9")).providers[name].options
    found = set()
    for option in load_provider_class(name).secret_options:
        value = options.get(option)
        if isinstance(value, Mapping):  # the generic adapter's auth: {kind, token}
            found |= {str(v) for k, v in value.items() if k != "kind"}
        elif value is not None:
            found.add(str(value))
    assert found == set(case.secrets)


# -- hypothesis: the answers ---------------------------------------------------------------------


def _clean(text: str) -> str:
    """A header value aiohttp writes: no control character but tab."""
    return "".join(c for c in text if c == "\t" or (c >= " " and c != "\x7f"))


ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "9" * 5000,  # int() refuses more than 4300 digits
            "\u00b2",  # a digit to str.isdigit(), not to int()
            "\u0661\u0662",  # Arabic-Indic digits, which int() reads
            "1e400",
            "NaN",
            "Infinity",
            "\ud800",  # a lone surrogate
            "null",
            "PENDING",
            "REJECTED",
            "queued",
            "sending_failed",
            "request-validation",
            "INVALID_NUMBER",
        ]
    ),
)
ODD_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**4000, -(10**4000), 2**63, 0, 1, 2, 21610, 40300]),
    st.floats(allow_nan=True, allow_infinity=True),
    ODD_TEXT,
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    )


ODD_JSON = st.recursive(ODD_SCALAR, _containers, max_leaves=6)
#: Fields where providers write free text, quoting the request back.
FREE_TEXT = frozenset(
    {"message", "description", "text", "error-text", "title", "detail", "error", "violation"}
)


def quoting(secrets: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Free text as providers write it, quoting back the number, the text or a key."""
    quotes = [
        f"The 'To' number {HANDSET} is not a valid phone number.",
        f"{HANDSET[1:]} is not a valid destination",
        f"Invalid destination 0049 {DIGITS} (0{DIGITS})",
        f"Message '{TEXT}' contains blocked content",
        TEXT,
        *(f"Authentication failed for key {secret}" for secret in secrets),
        *secrets,
    ]
    return st.tuples(st.text(max_size=5), st.sampled_from(quotes), st.text(max_size=5)).map("".join)


#: Stands for a value nested that deep, put into the JSON text when it is written
#: (json.dumps cannot nest a list a thousand deep itself).
DEEP_VALUE = "@@deep-{}@@"
_DEEP_VALUE = re.compile(rb'"@@deep-(\d+)@@"')


@st.composite
def mutated(draw: st.DrawFn, shape: Any, secrets: tuple[str, ...], key: str = "") -> Any:
    """``shape``, a body the provider writes, with some of its parts changed: a field
    dropped, retyped, nulled, blown up or nested deep; its free text quoting back
    the number, the text or a key."""
    if key in FREE_TEXT and draw(st.integers(0, 3)) == 0:
        return draw(quoting(secrets))
    choice = draw(st.integers(0, 24))
    if choice == 22:
        return draw(ODD_JSON)  # a wrong type, null, a huge number, nested garbage
    if choice == 23:
        return DEEP_VALUE.format(draw(st.integers(1, 1200)))
    if choice == 24:  # the same value, one level deeper
        return draw(st.sampled_from([[shape], {"value": shape}, [shape, shape]]))
    if isinstance(shape, dict):
        out: dict[str, Any] = {}
        for name, value in shape.items():
            if draw(st.integers(0, 11)) != 11:  # else missing
                out[name] = draw(mutated(value, secrets, name))
        out.update(draw(st.dictionaries(st.text(max_size=8), ODD_JSON, max_size=1)))
        return out
    if isinstance(shape, list):
        items = [draw(mutated(item, secrets, key)) for item in shape]
        return draw(st.sampled_from([items, items[:0], items * 2]))
    return shape


_MISSING = object()


def _values(
    doc: Any, at: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(where, value) of each value in ``doc``, ``doc`` itself first."""
    yield at, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _values(value, (*at, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _values(value, (*at, index))


def _replaced(doc: Any, at: tuple[str | int, ...], value: Any) -> Any:
    """``doc`` with ``value`` where ``at`` says (left out, for ``_MISSING``)."""
    if not at:
        return value
    step, rest = at[0], at[1:]
    if isinstance(doc, dict):
        out = {**doc, str(step): _replaced(doc[step], rest, value)}
        return {k: v for k, v in out.items() if v is not _MISSING}
    items = [_replaced(v, rest, value) if i == step else v for i, v in enumerate(doc)]
    return [v for v in items if v is not _MISSING]


def near(value: Any) -> list[Any]:
    """Values a provider might write instead of ``value``: the same type oddly (a
    digit int() does not read, 5,000 digits, a lone surrogate), another type, or
    nested deeper; ``_MISSING`` to leave the field out."""
    anything: list[Any] = [None, True, 0, -1, 2**63, 10**4000, 1.5, math.nan, math.inf]
    anything += ["", "\u00b2", "\u0661\u0662", "9" * 5000, "\ud800", [], {}, [value]]
    anything += [{"value": value}, DEEP_VALUE.format(3000), _MISSING]
    if isinstance(value, str):
        anything += [value.upper(), f" {value} ", value * 100, value[:1], value + "\x00"]
    elif isinstance(value, int) and not isinstance(value, bool):
        anything += [-value, value * 10**30, float(value), str(value), f"{value}.0"]
    elif isinstance(value, list):
        anything += [value * 2, value[1:]]
    return anything


@st.composite
def retyped(draw: st.DrawFn, shape: Any, secrets: tuple[str, ...]) -> Any:
    """``shape``, a body the provider writes, with one of its values (or the whole)
    missing or changed: :func:`near` it, anything at all, nested deep, or free text
    quoting back what was sent."""
    at, value = draw(st.sampled_from(list(_values(shape))))
    nearby = [new for new in near(value) if at or new is not _MISSING]
    anything = [st.sampled_from(nearby), ODD_JSON]
    anything.append(st.integers(1, 1200).map(DEEP_VALUE.format))
    if at and at[-1] in FREE_TEXT:
        anything.append(quoting(secrets))
    return _replaced(shape, at, draw(st.one_of(*anything)))


def _json(doc: Any, **options: Any) -> bytes:
    text = json.dumps(doc, **options).encode("utf-8", "surrogatepass")
    return _DEEP_VALUE.sub(lambda m: b"[" * int(m[1]) + b"]" * int(m[1]), text)


def encoded(doc: Any) -> st.SearchStrategy[bytes]:
    """``doc`` as JSON: whole, cut short, with a byte that is not UTF-8, or UTF-16."""
    ascii_ = _json(doc)
    raw = _json(doc, ensure_ascii=False)  # a lone surrogate as it is: not UTF-8
    cut = st.integers(0, max(0, len(ascii_) - 1))
    return st.one_of(
        st.just(ascii_),
        st.just(raw),
        cut.map(lambda n: ascii_[:n]),
        cut.map(lambda n: ascii_[:n] + b"\xff" + ascii_[n:]),
        st.just(raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")),
    )


SPECIAL_BODIES = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b'"ok"',
    b"1" * 5000,  # more digits than int() reads
    b"NaN",
    b"-Infinity",
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"\x00" * 8,
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b"\xff\xfe{\x00}\x00",  # UTF-16 with its byte order mark
    b"[" * 5000,
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]
COMMON = (200, 201, 202, 400, 401, 404, 429, 500, 502, 503)
#: Mostly the usual statuses, else any final one, or one aiohttp lets a server send
#: oddly (101; 204 and 304 without their body); rarely a 1xx with nothing after it.
STATUSES = [*COMMON * 25, *range(200, 600), *(101, 204, 205, 304) * 5, 100, 103]
HTTP_DATES = st.builds(
    "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
    st.sampled_from(["Mon", "Sun", "Xyz"]),
    st.integers(0, 40),
    st.sampled_from(["Jan", "Dec", "Foo"]),
    st.one_of(st.integers(0, 10000), st.sampled_from([2**70, 99999])),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.one_of(
        st.sampled_from(["GMT", "-0000", "+0000", "+2359", "UT", "EST"]),
        st.integers(-(10**20), 10**20).map("{:+05d}".format),
    ),
)
ODD_RETRY_AFTER = [
    *("0", "120", "-1", "1.5", "inf", "-inf", "1e400", "nan", "1_0", " 7 ", "", "\u00b2"),
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 -0000",
    "Mon, 01 Jan 0001 00:00:00 +2359",
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",  # OverflowError
    "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",  # OverflowError
    "Mon, 01 Jan 2020 99:99:99 GMT",
]
RETRY_AFTER = st.one_of(
    st.sampled_from(ODD_RETRY_AFTER),
    st.integers(0, 10**12).map(str),
    HTTP_DATES,
    st.text(max_size=30).map(_clean),
)
CONTENT_TYPE = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "text/html; charset=iso-8859-1",
        "application/json; charset=utf-16",
        "garbage",
        ";;;",
        "text/html; charset=\u00e9",
    ]
)
HEADER_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: (
        n.lower()
        not in (
            "connection",
            "content-encoding",
            "content-length",
            "content-type",
            "keep-alive",
            "retry-after",
            "transfer-encoding",
            "upgrade",
        )
    )
)


@st.composite
def answers(draw: st.DrawFn, case: Case) -> Answer:
    """What a server might answer ``case``'s send request with."""
    if draw(st.integers(0, 2)):  # one of the provider's own answers, changed
        status, shape = draw(st.sampled_from(case.shapes))
        if draw(st.integers(0, 2)) == 0:
            status = draw(st.sampled_from(STATUSES))
        changed = st.one_of(
            retyped(shape, case.secrets), retyped(shape, case.secrets), mutated(shape, case.secrets)
        )
        body = draw(encoded(draw(changed)))
    else:
        status = draw(st.sampled_from(STATUSES))
        body = draw(
            st.one_of(
                ODD_JSON.flatmap(encoded), st.binary(max_size=300), st.sampled_from(SPECIAL_BODIES)
            )
        )
    headers: list[tuple[str, str]] = []
    if draw(st.integers(0, 4)):
        headers.append(("Content-Type", draw(CONTENT_TYPE)))
    if status in (429, 503) or draw(st.integers(0, 3)) == 0:
        headers.append(("Retry-After", draw(RETRY_AFTER)))
    if draw(st.integers(0, 15)) == 0:  # and the body is not in that encoding
        headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "deflate", "br", "x"]))))
    headers += draw(st.lists(st.tuples(HEADER_NAME, st.text(max_size=20).map(_clean)), max_size=2))
    return Answer(status, tuple(headers), body)


# -- the rig: one server, one router, for the whole run -------------------------------------------


def leaks(text: str | None, secrets: Sequence[str]) -> list[str]:
    """What of the message and the credentials ``text`` shows."""
    return [s for s in (DIGITS, TEXT, *secrets) if text and s in text]


@attrs.define
class Rig:
    """A router with ``case``'s provider alone, pointed at ``server``, on a manual clock,
    and every log record."""

    case: Case
    server: AnswerServer | RawServer
    router: Router
    clock: ManualClock
    logs: Records

    async def send(self, status: int, *, whole: bool = True) -> SendResult:
        """Send the message once and check what every answer must give: ``status`` is
        the answer's, ``whole`` false when its connection broke before its end."""
        router, case = self.router, self.case
        before = self.server.requests
        opted_out = router.is_opted_out(HANDSET)
        self.logs.records.clear()
        async with asyncio.timeout(20):  # the provider's timeout is 1s: a hang fails here
            result = await router.send(MESSAGE)
        assert isinstance(result, SendResult)
        assert self.server.requests == before + 1, "the request never reached the server"
        assert result.status in ("accepted", "failed")
        assert isinstance(result.outcome, Outcome)
        assert len(result.attempts) == 1, result.attempts
        attempt = result.attempts[0]
        assert (attempt.provider, attempt.outcome) == (case.name, result.outcome)
        assert not (attempt.detail or "").startswith("adapter error"), (
            f"the {case.name} adapter raised on the answer: {attempt.detail}"
        )
        assert not [text for level, text in self.logs.records if level >= logging.ERROR]
        assert result.ok is (attempt.outcome is Outcome.ACCEPTED)
        if not whole or not 200 <= status < 300:
            assert not result.ok, "a success out of an answer that is no 2xx, or is broken"
        if result.ok:
            assert isinstance(result.provider_message_id, str)
            assert result.provider_message_id
            assert result.reason is None
        else:
            assert isinstance(result.reason, str)
        assert attempt.status_code in (None, status)
        if attempt.retry_after is not None:
            assert math.isfinite(attempt.retry_after), attempt.retry_after
            assert attempt.retry_after >= 0
        state = await router.status(result.message_id)
        assert state is not None
        assert state.status == ("accepted" if result.ok else "failed")
        if router.is_opted_out(HANDSET) and not opted_out:
            assert attempt.outcome is Outcome.REJECTED  # only a refusal says so
        shown = [result.reason, attempt.detail, attempt.error_code]
        shown += [text for _, text in self.logs.records]
        for text in shown:
            assert not leaks(text, case.secrets), f"{leaks(text, case.secrets)} in {text!r}"
        # Wait out what the answer asked for: a Retry-After pause, the open breaker.
        self.clock.advance(1.0 + (attempt.retry_after or 0.0))
        return result


@contextmanager
def rig(case: Case, server: AnswerServer | RawServer) -> Iterator[tuple[asyncio.Runner, Rig]]:
    """``case``'s rig, and the event loop it runs on: hypothesis drives it example by
    example, so the server and the router last the whole run."""
    with asyncio.Runner() as runner, every_log_record() as logs:
        runner.run(server.start())
        clock = ManualClock(1_000_000.0)
        router = Router(parse_config(case.config_text(server.url)), clock=clock, metrics=False)
        runner.run(router.__aenter__())
        try:
            yield runner, Rig(case, server, router, clock, logs)
        finally:
            runner.run(router.__aexit__(None, None, None))
            runner.run(server.stop())


def fuzzing(examples: int) -> settings:
    """The settings of one provider's run (the rig outlives the examples on purpose)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- the properties ----------------------------------------------------------------------------


#: Free text that quotes back the text and every provider's key, wherever each writes it.
QUOTED = f"Message '{TEXT}' refused for key " + ", ".join(s for c in CASES for s in c.secrets)
QUOTING_EVERYWHERE = {
    **dict.fromkeys(["message", "error", "description", "text", "title", "detail"], QUOTED),
    "code": "x",
    "errorCode": "E400",
    "type": "request-validation",
    "errors": [{"code": "10009", "title": QUOTED, "description": QUOTED}],
    "messages": [{"status": "3", "error-text": QUOTED}],
}


@pytest.mark.parametrize("name", list(BY_NAME))
def test_any_answer_is_a_documented_outcome_that_leaks_nothing(name: str) -> None:
    """Any status, headers and body: a documented outcome the adapter came to itself,
    no success out of an error, a finite pause, nothing of the message or the key
    shown; and the same router sends again afterwards (see the module's docstring)."""
    case = BY_NAME[name]
    server = AnswerServer()
    with rig(case, server) as (runner, r):

        @fuzzing(200)
        @given(answers(case))
        # Found by these tests, each then fixed: JSON nested deeper than Python recurses
        # (RecursionError, in every adapter).
        @example(Answer(200, JSON_TYPE, b'{"messages":' + b"[" * 3000 + b"]" * 3000 + b"}"))
        # A Retry-After date with a 20-digit offset (OverflowError), a pause without end.
        @example(Answer(429, (("Retry-After", "Mon, 01 Jan 2020 00:00:00 +1" + "0" * 19),), b""))
        @example(Answer(429, (("Retry-After", "1e400"),), b""))
        # The text and the key quoted back in the provider's error message.
        @example(Answer(400, JSON_TYPE, json.dumps(QUOTING_EVERYWHERE).encode()))
        # A list where a set is looked into (TypeError: unhashable), in three adapters.
        @example(Answer(400, JSON_TYPE, b'{"code": [], "message": "Too Many Requests"}'))
        @example(Answer(200, JSON_TYPE, b'{"data": {"id": "x", "to": [{"status": []}]}}'))
        @example(
            Answer(
                200,
                JSON_TYPE,
                b'{"messages": [{"messageId": "x", "status": {"name": [],'
                b' "groupName": "REJECTED"}}]}',
            )
        )
        # A field of another type than the documented one: a count where a list is
        # iterated; a list as a pointer; a digit int() does not read (the sweep below).
        @example(Answer(400, JSON_TYPE, b'{"errorCode": "E400", "violations": 5}'))
        @example(
            Answer(400, JSON_TYPE, b'{"errors": [{"code": "10004", "source": {"pointer": []}}]}')
        )
        @example(Answer(200, JSON_TYPE, b'{"messages": [{"status": "\\u00b2"}]}'))
        def any_answer(answer: Answer) -> None:
            server.answer = answer
            runner.run(r.send(answer.status))

        any_answer()
        # The same router, after all of that: the provider's own success is a success.
        server.answer = case.success()
        assert runner.run(r.send(server.answer.status)).ok


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_connection_that_breaks_mid_answer_is_a_failure_not_a_hang(name: str) -> None:
    """An answer cut short, or not HTTP at all, on a raw socket: a failure, within the
    provider's timeout, with the same contract; and the same router sends again."""
    case = BY_NAME[name]
    server = RawServer()
    with rig(case, server) as (runner, r):

        @fuzzing(50)
        @given(
            st.builds(Broken, answers(case), st.sampled_from(BROKEN_HOWS), st.integers(0, 2**16))
        )
        def broken_answer(broken: Broken) -> None:
            server.broken = broken
            runner.run(r.send(broken.answer.status, whole=broken.intact))

        broken_answer()
        server.broken = Broken(case.success(), "eof", 0)
        assert runner.run(r.send(server.broken.answer.status)).ok


@pytest.mark.parametrize("name", list(BY_NAME))
def test_each_value_of_each_answer_changed_alone_is_classified_without_raising(name: str) -> None:
    """Beside the properties, every time, what they reach only now and then: each
    documented answer with each of its values in turn :func:`near` it, read by the
    adapter's ``parse_response`` under the answer's own status and under a 2xx, a
    4xx and a 5xx (which the adapters read differently); the special bodies under
    each; and the documented answers with each odd Retry-After."""
    case = BY_NAME[name]
    config = parse_config(case.config_text("http://127.0.0.1:9")).providers[name]
    provider = load_provider_class(name)(config)
    assert isinstance(provider, HttpProvider)
    sweep = [
        Answer(code, JSON_TYPE, _json(_replaced(shape, at, new)))
        for status, shape in case.shapes
        for at, value in _values(shape)
        for new in near(value)
        if at or new is not _MISSING
        for code in sorted({status, 200, 400, 500})
    ]
    sweep += [Answer(code, (), body) for body in SPECIAL_BODIES for code in (200, 400, 500)]
    sweep += [
        Answer(code, (("Retry-After", value),), json.dumps(shape).encode())
        for _, shape in case.shapes
        for value in ODD_RETRY_AFTER
        for code in (429, 503)
    ]
    wrong = []
    for answer in sweep:
        headers = CIMultiDictProxy(CIMultiDict(answer.headers))
        try:
            reply = provider.parse_response(answer.status, headers, answer.body)
        except Exception as exc:
            wrong.append(f"{answer!r} raised {exc!r}")
            continue
        retry = reply.retry_after
        if not isinstance(reply.outcome, Outcome) or not (
            retry is None or (math.isfinite(retry) and retry >= 0)
        ):
            wrong.append(f"{answer!r} came to {reply!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_rig_takes_the_providers_own_answers_as_the_provider_means_them(name: str) -> None:
    """What gives the properties above their teeth: with the same setup, the
    provider's success is a success (also through the raw server), its errors are
    failures, and the number they quote is masked."""
    case = BY_NAME[name]
    server = AnswerServer()
    with rig(case, server) as (runner, r):
        for i, (status, doc) in enumerate(case.shapes):
            server.answer = Answer(status, JSON_TYPE, json.dumps(doc).encode())
            result = runner.run(r.send(status))
            assert result.ok is (i == 0), result
            assert result.attempts[0].status_code == status
    raw = RawServer()
    with rig(case, raw) as (runner, r):
        for how in ("eof", "continue"):
            raw.broken = Broken(case.success(), how, 0)
            assert runner.run(r.send(case.shapes[0][0])).ok
