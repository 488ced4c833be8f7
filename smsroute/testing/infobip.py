"""A fake Infobip SMS API v3 that answers as Infobip does.

It checks the ``Authorization: App <API key>`` header, reads the JSON body,
validates it as Infobip's v3 schema requires (HTTP 400 ``E400`` with
``violations``), and answers 200 with one entry per destination.  Like Infobip,
a destination it will not take still comes back in a **200**, with status group
``REJECTED`` and the reason (``REJECTED_DESTINATION`` for an invalid number,
``REJECTED_NETWORK`` for a country the account cannot reach).  The official
``infobip-api-python-client`` SDK runs against it (tests/test_infobip.py).

``fail(200, code)`` scripts such a rejection (``code``: a status name or id
from :data:`STATUSES`, by default ``REJECTED_DESTINATION``); ``fail(status)`` for
any other status answers Infobip's ``ApiError`` body (``code``: its
``errorCode``, by default ``E<status>``).

Callbacks: delivery reports (``{"results": [...]}``, the SDK's ``SmsDeliveryResult``)
to the message's ``webhooks.delivery.url`` with its ``callbackData``, and inbound
messages (``MO_JSON_2``, the SDK's ``SmsInboundMessageResult``).  Infobip signs
neither; with ``callback_username``/``callback_password`` the fake sends HTTP
Basic credentials, as a Subscriptions notification profile with ``BASIC``
security settings does.  ``receipts("undelivered", error_code=...)`` takes a
delivery error of :data:`DELIVERY_ERRORS` (name or id; by default
``EC_ABSENT_SUBSCRIBER_SM``); ``receipts("failed", error_code=...)`` a
rejection status of :data:`STATUSES` (by default ``REJECTED_NETWORK``).
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import hmac
import json
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage, country_of

#: status name -> (id, groupId, groupName, description), from Infobip's
#: "Response status and error codes" page.
STATUSES: dict[str, tuple[int, int, str, str]] = {
    "PENDING_ACCEPTED": (26, 1, "PENDING", "Message sent to next instance"),
    "UNDELIVERABLE_REJECTED_OPERATOR": (4, 2, "UNDELIVERABLE", "Message rejected by operator"),
    "REJECTED_NETWORK": (6, 5, "REJECTED", "Network is forbidden"),
    "REJECTED_PREFIX_MISSING": (8, 5, "REJECTED", "Number prefix missing"),
    "REJECTED_DND": (10, 5, "REJECTED", "Destination on DND list"),
    "REJECTED_SOURCE": (11, 5, "REJECTED", "Invalid source address"),
    "REJECTED_NOT_ENOUGH_CREDITS": (12, 5, "REJECTED", "Not enough credits"),
    "REJECTED_SENDER": (13, 5, "REJECTED", "By sender"),
    "REJECTED_DESTINATION_BLOCKLISTED": (14, 5, "REJECTED", "By destination"),
    "REJECTED_PREPAID_PACKAGE_EXPIRED": (17, 5, "REJECTED", "Account credits are expired"),
    "REJECTED_DESTINATION_NOT_REGISTERED": (18, 5, "REJECTED", "Destination not registered"),
    "REJECTED_ROUTE_NOT_AVAILABLE": (19, 5, "REJECTED", "Route not available"),
    "REJECTED_FLOODING_FILTER": (20, 5, "REJECTED", "Rejected by flooding filter"),
    "REJECTED_SYSTEM_ERROR": (21, 5, "REJECTED", "System error"),
    "REJECTED_DUPLICATE_MESSAGE_ID": (23, 5, "REJECTED", "Duplicate message id"),
    "REJECTED_INVALID_UDH": (24, 5, "REJECTED", "Invalid UDH"),
    "REJECTED_MESSAGE_TOO_LONG": (25, 5, "REJECTED", "Message too long"),
    "MISSING_TO": (51, 5, "REJECTED", "Missing to"),
    "REJECTED_DESTINATION": (52, 5, "REJECTED", "Invalid destination address"),
    "SIGNALS_BLOCKED": (87, 5, "REJECTED", "Rejected by anti-fraud"),
    "UNDELIVERABLE_REJECTED_PLATFORM": (100, 5, "REJECTED", "Rejected by platform"),
}
_BY_ID = {v[0]: k for k, v in STATUSES.items()}
#: Statuses that only delivery reports carry: name -> (id, groupId, groupName, description).
REPORT_STATUSES: dict[str, tuple[int, int, str, str]] = {
    "PENDING_WAITING_DELIVERY": (3, 1, "PENDING", "Message sent, waiting for delivery report"),
    "PENDING_ENROUTE": (7, 1, "PENDING", "Message sent to next instance"),
    "UNDELIVERABLE_NOT_DELIVERED": (9, 2, "UNDELIVERABLE", "Message sent not delivered"),
    "DELIVERED_TO_OPERATOR": (2, 3, "DELIVERED", "Message delivered to operator"),
    "DELIVERED_TO_HANDSET": (5, 3, "DELIVERED", "Message delivered to handset"),
    "EXPIRED_EXPIRED": (15, 4, "EXPIRED", "Message expired"),
}
#: Delivery errors: name -> (id, groupId, groupName, description, permanent).  Names and
#: ids from Infobip's "Response status and error codes" (ids as mirrored by third
#: parties); the group ids and permanent flags are ours [unconfirmed].
DELIVERY_ERRORS: dict[str, tuple[int, int, str, str, bool]] = {
    "NO_ERROR": (0, 0, "OK", "No Error", False),
    "EC_UNKNOWN_SUBSCRIBER": (1, 1, "HANDSET_ERRORS", "Unknown Subscriber", True),
    "EC_ABSENT_SUBSCRIBER_SM": (6, 1, "HANDSET_ERRORS", "Absent Subscriber", False),
    "EC_TELESERVICE_NOT_PROVISIONED": (
        11,
        1,
        "HANDSET_ERRORS",
        "Teleservice not provisioned",
        True,
    ),
}
_ERROR_BY_ID = {v[0]: k for k, v in DELIVERY_ERRORS.items()}
#: Our receipt status -> the status name of the report the fake sends.
RECEIPTS: dict[str, str] = {
    "queued": "PENDING_ACCEPTED",
    "sent": "PENDING_ENROUTE",
    "delivered": "DELIVERED_TO_HANDSET",
    "undelivered": "UNDELIVERABLE_NOT_DELIVERED",
    "failed": "REJECTED_NETWORK",
}
#: The destination of the request being handled (each request is its own task),
#: so that a scripted rejection names it as Infobip would.
_DESTINATION: contextvars.ContextVar[str] = contextvars.ContextVar("destination", default="")

#: errorCode -> (description, action, resources) of Infobip's ApiError answers
#: (the SMS OpenAPI description's ApiError400/401/403/429/500).
API_ERRORS: dict[str, tuple[str, str, list[dict[str, str]]]] = {
    "E400": (
        "Request cannot be processed.",
        "Check the syntax, violations and adjust the request.",
        [],
    ),
    "E401": (
        "The request lacks valid authentication credentials for the requested resource.",
        "Check the resources and adjust authentication credentials.",
        [
            {
                "name": "API Authentication",
                "url": "https://www.infobip.com/docs/essentials/api-authentication",
            }
        ],
    ),
    "E403": (
        "Insufficient permissions to access the requested resource.",
        "Repeat the request with new or different credentials.",
        [
            {
                "name": "API Scopes",
                "url": "https://www.infobip.com/docs/essentials/api-essentials/api-authorization#api-scopes",
            }
        ],
    ),
    "E429": (
        "Too many requests sent.",
        "Check request rate limit specified in the API endpoint documentation resource.",
        [
            {
                "name": "Throttling handling errors",
                "url": "https://www.infobip.com/docs/essentials/integration-best-practices#throttling-handling-errors",
            }
        ],
    ),
    "E500": ("Something went wrong.", "Contact the support.", []),
}


def _status(name: str) -> dict[str, Any]:
    status_id, group_id, group_name, description = STATUSES.get(name) or REPORT_STATUSES[name]
    return {
        "groupId": group_id,
        "groupName": group_name,
        "id": status_id,
        "name": name,
        "description": description,
    }


def _status_name(code: Any) -> str:
    """The status name a scripted rejection ``code`` (name, id or None) stands for."""
    if code is None:
        return "REJECTED_DESTINATION"
    if isinstance(code, int) and code in _BY_ID:
        return _BY_ID[code]
    if isinstance(code, str) and code in STATUSES:
        return code
    raise ValueError(f"unknown Infobip status {code!r}: use one of {', '.join(STATUSES)}")


def _error(code: Any) -> dict[str, Any]:
    """The ``error`` object of a delivery report for ``code`` (name, id or None: no error)."""
    name = _ERROR_BY_ID.get(code, "") if isinstance(code, int) else code or "NO_ERROR"
    if name not in DELIVERY_ERRORS:
        raise ValueError(
            f"unknown Infobip delivery error {code!r}: use one of {', '.join(DELIVERY_ERRORS)}"
        )
    error_id, group_id, group_name, description, permanent = DELIVERY_ERRORS[name]
    return {
        "groupId": group_id,
        "groupName": group_name,
        "id": error_id,
        "name": name,
        "description": description,
        "permanent": permanent,
    }


def _infobip_time(when: dt.datetime) -> str:
    """``2019-11-09T16:00:00.000+0000``: yyyy-MM-dd'T'HH:mm:ss.SSSZ, as Infobip writes times."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _e164(to: str) -> str:
    """Infobip takes numbers with or without the ``+``; the fake records them in E.164."""
    return to if to.startswith("+") else "+" + to


class FakeInfobip(FakeProvider):
    """Infobip's ``POST /sms/3/messages`` on 127.0.0.1.

    >>> async with FakeInfobip() as fake:
    ...     config = {"type": "infobip", "base_url": fake.url, "api_key": fake.api_key}

    ``unroutable_countries`` come back ``REJECTED_NETWORK`` (network not set up
    on the account); ``blocked_senders`` come back ``REJECTED_SENDER``.
    ``messages`` records, per request, the first destination it took (``to`` in E.164).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        unroutable_countries: Iterable[str] = (),
        blocked_senders: Iterable[str] = (),
        callback_username: str | None = None,
        callback_password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key or f"{uuid.uuid4().hex}-{uuid.uuid4()}"
        self.unroutable_countries = set(unroutable_countries)
        self.blocked_senders = set(blocked_senders)
        #: HTTP Basic credentials of a notification profile (None: Infobip's default, none).
        self.callback_username = callback_username
        self.callback_password = callback_password

    def fail(
        self, status: int, code: Any = None, times: int | None = None, *, country: str | None = None
    ) -> None:
        """As :meth:`FakeProvider.fail`; ``fail(200, code)`` is a 200 REJECTED answer.

        ``code`` for a 200 is a status name or id of :data:`STATUSES` (checked
        here, not at request time); for other statuses, the ``errorCode``.
        """
        if status == 200:
            _status_name(code)
        super().fail(status, code, times, country=country)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sms/3/messages", self.handle_send)

    def new_message_id(self) -> str:
        return str(uuid.uuid4())

    async def read(self, request: web.Request) -> Incoming:
        raw = await request.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return Incoming(fields={}, to=None)
        to: str | None = None
        messages = doc.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            destinations = messages[0].get("destinations")
            if isinstance(destinations, list) and destinations:
                first = destinations[0]
                if isinstance(first, dict) and isinstance(first.get("to"), str):
                    _DESTINATION.set(first["to"])
                    to = _e164(first["to"])
        return Incoming(fields=doc, to=to)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme == "App" and hmac.compare_digest(key.strip(), self.api_key)

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        if not self._authorized(request):
            return self.error_response(401, "E401")
        messages = incoming.fields.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._violation("messages", "must not be empty")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return self._violation(f"messages[{i}]", "must be an object")
            destinations = message.get("destinations")
            if not isinstance(destinations, list) or not destinations:
                return self._violation(f"messages[{i}].destinations", "must not be empty")
            for j, destination in enumerate(destinations):
                to = destination.get("to") if isinstance(destination, dict) else None
                if not isinstance(to, str) or not to.strip():
                    return self._violation(
                        f"messages[{i}].destinations[{j}].to", "must not be blank"
                    )
                if len(to) > 64:
                    return self._violation(
                        f"messages[{i}].destinations[{j}].to", "size must be between 0 and 64"
                    )
            content = message.get("content")
            text = content.get("text") if isinstance(content, dict) else None
            if not isinstance(text, str) or not text:
                return self._violation(f"messages[{i}].content.text", "must not be blank")
            sender = message.get("sender")
            if sender is not None and (not isinstance(sender, str) or not sender.strip()):
                return self._violation(f"messages[{i}].sender", "must not be blank")
            webhooks = message.get("webhooks")
            if webhooks is not None:
                delivery = webhooks.get("delivery") if isinstance(webhooks, dict) else None
                url = delivery.get("url") if isinstance(delivery, dict) else None
                if url is not None and not (
                    isinstance(url, str) and url.startswith(("http://", "https://"))
                ):
                    return self._violation(
                        f"messages[{i}].webhooks.delivery.url", "must be a valid URL"
                    )
        # Valid JSON but no destination Infobip will take: still a 200, every
        # destination REJECTED, and nothing sent.
        body, taken = self._answers(dict(incoming.fields), self.new_message_id())
        if taken is None:
            return web.json_response(body, status=200)
        return None

    def _destination_status(self, message: dict[str, Any], to: str) -> str:
        """The status Infobip gives one destination: taken, or why not."""
        try:
            valid = phonenumbers.is_valid_number(phonenumbers.parse(_e164(to), None))
        except phonenumbers.NumberParseException:
            valid = False
        if not valid:
            return "REJECTED_DESTINATION"
        if message.get("sender") in self.blocked_senders:
            return "REJECTED_SENDER"
        if country_of(_e164(to)) in self.unroutable_countries:
            return "REJECTED_NETWORK"
        return "PENDING_ACCEPTED"

    def _answers(
        self, fields: dict[str, Any], first_id: str
    ) -> tuple[dict[str, Any], ReceivedMessage | None]:
        """Infobip's 200 body, one entry per destination, and the first one taken."""
        answers: list[dict[str, Any]] = []
        record: ReceivedMessage | None = None
        for message in fields["messages"]:
            text = message["content"]["text"]
            count = analyze(text).segments
            webhooks = message.get("webhooks")
            delivery = webhooks.get("delivery") if isinstance(webhooks, dict) else None
            for destination in message["destinations"]:
                to = destination["to"]
                state = self._destination_status(message, to)
                mid = destination.get("messageId") or (
                    first_id if not answers else self.new_message_id()
                )
                answers.append(
                    {
                        "messageId": mid,
                        "status": _status(state),
                        "destination": to,
                        "details": {"messageCount": count},
                    }
                )
                if record is None and state == "PENDING_ACCEPTED":
                    record = ReceivedMessage(
                        provider_message_id=mid,
                        to=_e164(to),
                        sender=message.get("sender"),
                        text=text,
                        fields=fields,
                        received_at=self.now(),
                        status_callback=delivery.get("url") if isinstance(delivery, dict) else None,
                    )
        options = fields.get("options")
        schedule = options.get("schedule") if isinstance(options, dict) else None
        bulk_id = schedule.get("bulkId") if isinstance(schedule, dict) else None
        return {"bulkId": bulk_id or self._bulk_id(), "messages": answers}, record

    def _bulk_id(self) -> str:
        return str(10**18 + secrets.randbelow(9 * 10**18))

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        body, record = self._answers(dict(incoming.fields), message_id)
        assert record is not None  # check() answered when no destination was taken
        return web.json_response(body, status=200), record

    # -- callbacks: delivery reports and inbound messages --------------------------------

    def _callback(self, url: str, doc: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if self.callback_username is not None and self.callback_password is not None:
            pair = f"{self.callback_username}:{self.callback_password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return "POST", url, headers, json.dumps(doc, separators=(",", ":")).encode()

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: a delivery report whose status is REJECTED_DESTINATION_BLOCKLISTED."""
        return "failed", "REJECTED_DESTINATION_BLOCKLISTED"

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        """Infobip's delivery report for ``record``, to its ``webhooks.delivery.url``."""
        assert record.status_callback is not None
        name = RECEIPTS[status]
        error = _error(None)
        if status == "undelivered":
            error = _error(error_code if error_code is not None else "EC_ABSENT_SUBSCRIBER_SM")
        elif status == "failed" and error_code is not None:
            name = _status_name(error_code)
        message = record.fields["messages"][0]
        webhooks = message.get("webhooks")
        callback_data = webhooks.get("callbackData") if isinstance(webhooks, dict) else None
        now = dt.datetime.now(dt.UTC)
        result: dict[str, Any] = {
            "bulkId": self._bulk_id(),
            "messageId": record.provider_message_id,
            "to": record.to.removeprefix("+"),
            "sender": record.sender,
            "sentAt": _infobip_time(now),
            "doneAt": _infobip_time(now),
            "messageCount": analyze(record.text).segments,
            "mccMnc": "26201",
            "price": {"pricePerMessage": 0.01, "currency": "EUR"},
            "status": _status(name),
            "error": error,
        }
        if callback_data is not None:
            result["callbackData"] = callback_data
        return self._callback(record.status_callback, {"results": [result]})

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        """An inbound message as Infobip forwards it (``MO_JSON_2``)."""
        keyword, _, rest = text.strip().partition(" ")
        result = {
            "messageId": str(10**17 + secrets.randbelow(9 * 10**17)),
            "from": sender.removeprefix("+"),
            "to": recipient.removeprefix("+"),
            "text": text,
            "cleanText": rest,
            "keyword": keyword.upper(),
            "receivedAt": _infobip_time(dt.datetime.now(dt.UTC)),
            "smsCount": analyze(text).segments if text else 1,
            "price": {"pricePerMessage": 0, "currency": "EUR"},
        }
        doc = {"results": [result], "messageCount": 1, "pendingMessageCount": 0}
        return self._callback(url, doc)

    def _violation(self, prop: str, violation: str) -> web.Response:
        return self.error_response(
            400, "E400", violations=[{"property": prop, "violation": violation}]
        )

    def opt_out_response(self, incoming: Incoming) -> web.Response:
        """A 200 whose destination is REJECTED_DESTINATION_BLOCKLISTED (the account's
        blocklist, Infobip's Do Not Contact list of opted-out numbers)."""
        return self._rejection("REJECTED_DESTINATION_BLOCKLISTED")

    def error_response(
        self, status: int, code: Any, *, violations: list[dict[str, str]] | None = None
    ) -> web.Response:
        if status == 200:
            return self._rejection(code)
        error_code = str(code) if code is not None else f"E{status}"
        description, action, resources = API_ERRORS.get(
            error_code, API_ERRORS["E500"] if status >= 500 else API_ERRORS["E400"]
        )
        if violations is None:
            violations = (
                [{"property": "property.path", "violation": "Violation message."}]
                if error_code == "E400"
                else []
            )
        body = {
            "errorCode": error_code,
            "description": description,
            "action": action,
            "violations": violations,
            "resources": resources,
        }
        return web.json_response(body, status=status)

    def _rejection(self, code: Any) -> web.Response:
        """A 200 whose only destination Infobip did not take (``code``: status name or id)."""
        name = _status_name(code)
        body = {
            "bulkId": self._bulk_id(),
            "messages": [
                {
                    "messageId": self.new_message_id(),
                    "status": _status(name),
                    "destination": _DESTINATION.get(),
                    "details": {"messageCount": 1},
                }
            ],
        }
        return web.json_response(body, status=200)
