"""A generic HTTP adapter: an SMS API declared entirely in YAML.

For the local aggregator nobody wrote an adapter for.  The request (method,
URL, auth, headers, query, form or JSON body) is built from templates over
the message's fields, and the answer is classified by tables the config
gives: which HTTP statuses and which values in the body mean which outcome,
and where the message id is.  No vendor publishes anything to check this
against: tests/test_http_adapter.py runs it against a small aggregator
written in the test, in a JSON and a form variant.

Config (besides the common keys; see config/http-aggregator.yaml)::

    aggregator:
      type: http
      base_url: https://sms.example.net
      method: POST                          # GET, POST, PUT or PATCH (default POST)
      url: /api/v1/messages                 # a path under base_url, or a whole URL
      auth: {kind: bearer, token: ${AGGREGATOR_TOKEN}}
      json:                                 # or form: {...}; or only query: {...}
        to: "{to}"
        from: "{sender}"
        text: "{text}"
        callback: "{status_callback}"       # left out when no webhook is configured
      id_path: data.messages[0].id          # where the message id is in a success
      code_path: error.code                 # a value in the body that decides...
      code_outcomes: {INVALID_NUMBER: rejected, NO_ROUTE: unroutable}
      detail_path: error.message            # the provider's own explanation
      status_outcomes: {402: auth, 5xx: transient}

Templates
    ``{field}`` is replaced by one of :data:`TEMPLATE_FIELDS`; write ``{{`` and
    ``}}`` for literal braces.  Only plain names: no attribute or index access,
    conversions or format specs, so a template can never reach into Python
    objects.  A value that is exactly one placeholder keeps the field's type in
    a JSON body (``"{segments}"`` sends a number) and is left out of a body,
    query or headers when the field has no value (``sender``,
    ``status_callback``).  Values placed in the URL are percent-encoded.  A header
    carries printable ASCII without a space at either end: a message whose value a
    header template cannot carry so (a CR, a non-ASCII sender) is answered UNROUTABLE
    without a request, and the next provider is tried.

auth
    ``{kind: basic, username, password}``, ``{kind: bearer, token}``,
    ``{kind: header, name, value}`` or ``{kind: query, name, value}``.
    Credentials are kept out of errors, replies and reprs, and are masked in
    any provider message that echoes them.

Classifying an answer
    1. ``code_path`` names a value in the JSON body; when ``code_outcomes``
       maps it (compared as text), that outcome wins whatever the HTTP status
       (for APIs that answer 200 with an error inside).
    2. Else ``status_outcomes``: an exact status (``404``) before a class
       (``4xx``).
    3. Else the usual meaning of the status (:func:`classify_status`: 2xx
       accepted, 429 throttled, 401/403/404 auth, 408/5xx transient, other 4xx
       rejected).
    An accepted answer must carry a message id at ``id_path`` (a string or an
    integer), or it is a malformed reply (TRANSIENT).  ``Retry-After`` is read
    on every answer that is not accepted.  Paths are dotted names and ``[n]``
    indexes (negative from the end): ``data.messages[0].id``, ``[0].status``.

Webhooks (see config/http-aggregator.yaml)
    ``receipts: {format: json|form, method: POST|GET, message_id, status, statuses,
    reference?, error_code?, timestamp?, list?}`` and ``inbound: {format, method,
    sender, recipient, text, message_id?, timestamp?, list?}`` say where each field
    is: a dotted path into a JSON body (``results.0.status``), or a field name of a
    form body (the query of a GET).  ``statuses`` maps the gateway's values (as
    text) to ours; any other value is ``unknown``.  ``list`` is a path to an array
    when one call carries several; the paths are then inside each item.
    ``permanent_errors`` and ``opt_out_errors`` (receipts, with ``error_code``) list
    the gateway's codes that mean the failure is the number's (no resend, the
    provider's health not blamed) or that the recipient opted out (recorded).

    ``webhook_auth`` is ``{hmac: {header, algorithm: sha1|sha256|sha512, secret,
    signed: body|url+body|timestamp.body, timestamp_header?, tolerance?: 300s,
    encoding: hex|base64, prefix?}}``, ``{basic: {username, password}}``,
    ``{token: {header | query, value}}``, or ``none``.  Without it every webhook is
    refused (403), and declaring receipts or inbound without it is a ConfigError:
    unsigned webhooks are accepted only when the config says ``none``.  Secrets are
    compared in constant time; a method other than the declared one is a 405.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import hashlib
import hmac
import json
import re
import string
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import quote, urlencode

import attrs
from multidict import CIMultiDictProxy

from smsroute.config import ProviderConfig
from smsroute.message import DELIVERY_STATUSES, DeliveryStatus, Outcome
from smsroute.numbers import scrub
from smsroute.providers.base import (
    CannotCarry,
    HttpProvider,
    HttpRequest,
    Inbound,
    OutboundSMS,
    Receipt,
    Reply,
    WebhookError,
    WebhookRequest,
    classify_status,
    iso_time,
    parse_retry_after,
    unix_seconds,
    with_plus,
    within,
)
from smsroute.units import parse_duration

__all__ = ["TEMPLATE_FIELDS", "HttpApiProvider", "JsonPath", "Template", "compile_options"]

#: The fields a template may name, and what they hold.
TEMPLATE_FIELDS: Mapping[str, str] = {
    "to": "destination in E.164, with the plus: +4915123456789",
    "to_digits": "destination in E.164 without the plus: 4915123456789",
    "text": "the message text",
    "sender": "the sender ('from' of the provider or the message); no value when neither gives one",
    "message_id": "smsroute's id of this message (the same across failover)",
    "status_callback": "URL for delivery receipts; no value when no webhook is configured",
    "country": "ISO country of the destination: DE",
    "encoding": "GSM-7 or UCS-2",
    "segments": "number of SMS parts (a number)",
    "category": "otp, transactional, marketing or a category the config declares",
    "attempt": "which provider of this message this is: 1, 2, ... (a number)",
}

METHODS = ("GET", "POST", "PUT", "PATCH")
AUTH_KINDS: Mapping[str, tuple[str, ...]] = {
    "basic": ("username", "password"),
    "bearer": ("token",),
    "header": ("name", "value"),
    "query": ("name", "value"),
}
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)

_FORMATTER = string.Formatter()
_PATH = re.compile(r"(?:[A-Za-z0-9_\-]+|\[-?\d+\])(?:\.[A-Za-z0-9_\-]+|\[-?\d+\])*")
_PATH_STEP = re.compile(r"([A-Za-z0-9_\-]+)|\[(-?\d+)\]")
_STATUS_KEY = re.compile(r"([1-5])(\d\d|xx)", re.IGNORECASE)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MISSING: Any = object()

Value = str | int | None


def _did_you_mean(word: str, choices: Any) -> str:
    hint = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"did you mean '{hint[0]}'? " if hint else ""


# -- templates ----------------------------------------------------------------------------


#: What an HTTP header value can carry intact: visible ASCII, with spaces and tabs inside.
_HEADER_VALUE = re.compile(r"(?:[!-~](?:[ \t!-~]*[!-~])?)?")


def _field_of(template: Template) -> str:
    """The message's fields a template places (named in a refusal), e.g. ``sender``."""
    fields = [f for _, f in template.parts if f is not None]
    return " and ".join(dict.fromkeys(fields)) or "value"


@attrs.frozen(slots=True)
class Template:
    """A string with ``{field}`` placeholders, parsed once at load time.

    >>> t = Template.parse("Code for {to}: {{literal}}")
    >>> t.render({"to": "+4915123456789"})
    'Code for +4915123456789: {literal}'
    """

    source: str
    #: (literal text, then a field name or None), in order.
    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse ``text``; ``ValueError`` with a sentence for anything but plain ``{field}``."""
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise ValueError(f"{exc} (write a literal brace as '{{{{' or '}}}}')") from None
        parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parsed:
            if field is None:
                parts.append((literal, None))
                continue
            shown = "{" + field + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            if field == "" or field.isdigit():
                raise ValueError(f"placeholder '{shown}' names no field: write e.g. {{to}}")
            if not field.isidentifier():
                raise ValueError(
                    f"'{shown}': only plain field names are allowed, no attribute or index "
                    "access (write e.g. {to})"
                )
            if field not in TEMPLATE_FIELDS:
                raise ValueError(
                    f"unknown template field '{{{field}}}': {_did_you_mean(field, TEMPLATE_FIELDS)}"
                    f"fields: {', '.join(TEMPLATE_FIELDS)}"
                )
            if conversion or spec:
                raise ValueError(f"'{shown}': conversions and format specs are not supported")
            parts.append((literal, field))
        return cls(text, tuple(parts))

    @property
    def only_field(self) -> str | None:
        """The field name when the template is exactly one placeholder, else None."""
        if len(self.parts) == 1 and self.parts[0][0] == "":
            return self.parts[0][1]
        return None

    def render(
        self, values: Mapping[str, Value], escape: Callable[[str], str] | None = None
    ) -> str:
        """The text with every placeholder replaced (a field without a value gives '')."""
        out: list[str] = []
        for literal, field in self.parts:
            out.append(literal)
            if field is not None:
                value = values[field]
                if value is not None:
                    text = str(value)
                    out.append(escape(text) if escape else text)
        return "".join(out)

    def value(self, values: Mapping[str, Value]) -> Value:
        """Like :meth:`render`, but a lone placeholder gives the field's own value (or None)."""
        field = self.only_field
        if field is not None:
            return values[field]
        return self.render(values)


def _scalar_template(value: Any, what: str) -> Template:
    if isinstance(value, bool):
        return Template(str(value).lower(), ((str(value).lower(), None),))
    if isinstance(value, int | float):
        return Template(str(value), ((str(value), None),))
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string or a number, got {_kind(value)}")
    return Template.parse(value)


def _flat_templates(value: Any, option: str) -> tuple[tuple[str, Template], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a mapping of name -> template, got {_kind(value)}")
    out: list[tuple[str, Template]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{option}: names must be non-empty strings")
        if option == "headers" and not _HEADER_NAME.fullmatch(key):
            raise ValueError(f"headers: '{key}' is not a valid HTTP header name")
        if isinstance(item, dict | list):
            hint = " (use json: for a nested body)" if option == "form" else ""
            raise ValueError(f"{option}.{key} must be a string or a number{hint}")
        try:
            out.append((key, _scalar_template(item, f"{option}.{key}")))
        except ValueError as exc:
            raise ValueError(f"{option}.{key}: {exc}") from None
    return tuple(out)


# A JSON body template: the YAML structure with every string replaced by a Template.
JsonTemplate: TypeAlias = (
    Template | Mapping[str, "JsonTemplate"] | list["JsonTemplate"] | int | float | bool | None
)


def _json_template(value: Any, where: str) -> JsonTemplate:
    if isinstance(value, str):
        try:
            return Template.parse(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if isinstance(value, dict):
        return {str(k): _json_template(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_json_template(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise ValueError(
        f"{where}: a JSON body holds strings, numbers, booleans, null, lists, mappings"
    )


def _render_json(node: JsonTemplate, values: Mapping[str, Value]) -> Any:
    if isinstance(node, Template):
        return node.value(values)
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, child in node.items():
            rendered = _render_json(child, values)
            if rendered is None and isinstance(child, Template):
                continue  # a lone placeholder without a value: leave the key out
            out[key] = rendered
        return out
    if isinstance(node, list):
        return [_render_json(child, values) for child in node]
    return node


# -- paths into a JSON answer ----------------------------------------------------------------


@attrs.frozen(slots=True)
class JsonPath:
    """A dotted path into a JSON document: ``data.messages[0].id``.

    >>> JsonPath.parse("data.messages[0].id").find({"data": {"messages": [{"id": "m1"}]}})
    'm1'
    """

    source: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: Any) -> JsonPath:
        """Parse ``text``; ``ValueError`` with a sentence when it is not a path."""
        if not isinstance(text, str) or not _PATH.fullmatch(text):
            raise ValueError(
                f"expected a path like data.messages[0].id (names with letters, digits, "
                f"'_' or '-', joined by '.', and [n] indexes), got {text!r}"
            )
        steps: list[str | int] = []
        for m in _PATH_STEP.finditer(text):
            steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        return cls(text, tuple(steps))

    def find(self, document: Any) -> Any:
        """The value at this path, or ``None`` when any step is missing."""
        node = document
        for step in self.steps:
            if isinstance(step, str) and isinstance(node, dict):
                node = node.get(step, _MISSING)
            elif isinstance(node, list) and (isinstance(step, int) or step.isdigit()):
                index = int(step)
                node = node[index] if -len(node) <= index < len(node) else _MISSING
            else:
                return None
            if node is _MISSING:
                return None
        return node


def _as_text(value: Any) -> str | None:
    """A scalar of a JSON answer as text, for comparing with a config's keys."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


# -- webhooks: receipts, inbound messages and their authentication -----------------------------

WEBHOOK_FORMATS = ("json", "form")
WEBHOOK_METHODS = ("POST", "GET")
RECEIPT_FIELDS: Mapping[str, bool] = {  # field -> required
    "message_id": True,
    "status": True,
    "reference": False,
    "error_code": False,
    "timestamp": False,
}
INBOUND_FIELDS: Mapping[str, bool] = {
    "sender": True,
    "recipient": True,
    "text": True,
    "message_id": False,
    "timestamp": False,
}
HMAC_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
HMAC_SIGNED = ("body", "url+body", "timestamp.body")
HMAC_ENCODINGS = ("hex", "base64")
HMAC_KEYS = frozenset(
    {
        "header",
        "algorithm",
        "secret",
        "signed",
        "timestamp_header",
        "tolerance",
        "encoding",
        "prefix",
    }
)
#: Seconds a signed timestamp may be off from now (``tolerance``'s default).
DEFAULT_TOLERANCE = 300.0
#: The last Unix second a datetime can hold (9999-12-31T23:59:59Z).
_LAST_SECOND = 253402300799
#: What ``webhook_auth: none`` is written as.
UNSIGNED = "none"


@attrs.frozen(slots=True)
class FormField:
    """A field of a form body or query string, by its name."""

    source: str

    def find(self, document: Any) -> Any:
        return document.get(self.source) if isinstance(document, dict) else None


Locator: TypeAlias = JsonPath | FormField


@attrs.frozen(slots=True)
class WebhookSpec:
    """A ``receipts:`` or ``inbound:`` section, parsed."""

    format: str
    method: str
    list: JsonPath | None
    fields: Mapping[str, Locator]
    #: The provider's status values (as text) -> ours; receipts only.
    statuses: Mapping[str, DeliveryStatus] = attrs.field(factory=dict)
    #: Error codes (as text) meaning the failure is the number's: no resend, and the
    #: provider's delivery health is not blamed; receipts only.
    permanent_errors: frozenset[str] = frozenset()
    #: Error codes meaning the recipient opted out (recorded, and permanent too).
    opt_out_errors: frozenset[str] = frozenset()


@attrs.frozen(slots=True)
class HmacAuth:
    header: str
    algorithm: str
    secret: bytes = attrs.field(repr=False)
    signed: str
    timestamp_header: str | None
    tolerance: float
    encoding: str
    prefix: str


@attrs.frozen(slots=True)
class BasicAuth:
    username: bytes = attrs.field(repr=False)
    password: bytes = attrs.field(repr=False)


@attrs.frozen(slots=True)
class TokenAuth:
    header: str | None
    query: str | None
    value: bytes = attrs.field(repr=False)


@attrs.frozen(slots=True)
class Unsigned:
    """``webhook_auth: none``: the config accepts unsigned webhooks, on purpose."""


WebhookAuth: TypeAlias = HmacAuth | BasicAuth | TokenAuth | Unsigned


class _Problems(Exception):
    """Several (key, problem) pairs at once, raised out of a section's parser."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _webhook_spec(section: str, value: Any) -> WebhookSpec:
    """A ``receipts`` or ``inbound`` section; :class:`_Problems` keyed by dotted paths."""
    roles = RECEIPT_FIELDS if section == "receipts" else INBOUND_FIELDS
    allowed = {
        "format",
        "method",
        "list",
        *roles,
        *(("statuses", "permanent_errors", "opt_out_errors") if section == "receipts" else ()),
    }
    if not isinstance(value, dict):
        example = "{format: json, message_id: id, status: status, statuses: {DELIVRD: delivered}}"
        if section == "inbound":
            example = "{format: json, sender: from, recipient: to, text: text}"
        raise _Problems(
            [(section, f"{section} must be a mapping like {example}, got {_kind(value)}")]
        )
    problems: list[tuple[str, str]] = []
    for key in value:
        if key not in allowed:
            problems.append(
                (
                    f"{section}.{key}",
                    f"unknown key '{key}' in {section}: {_did_you_mean(str(key), allowed)}"
                    f"allowed: {', '.join(sorted(allowed))}",
                )
            )
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in WEBHOOK_METHODS:
        problems.append(
            (f"{section}.method", f"method is POST or GET (how the gateway calls), got {method!r}")
        )
        method = "POST"
    method = method.upper()
    fmt = value.get("format", "form" if method == "GET" else "json")
    if fmt not in WEBHOOK_FORMATS:
        problems.append(
            (
                f"{section}.format",
                f"format is json (a JSON body) or form (form fields, or the query of a GET), "
                f"got {fmt!r}",
            )
        )
        fmt = "json"
    if method == "GET" and fmt == "json":
        problems.append(
            (
                f"{section}.format",
                "a GET has no body: its fields are in the query, write format: form",
            )
        )
    list_path: JsonPath | None = None
    if value.get("list") is not None:
        if fmt != "json":
            problems.append(
                (f"{section}.list", "list is a path into a JSON body: a form carries one record")
            )
        else:
            try:
                list_path = JsonPath.parse(value["list"])
            except ValueError as exc:
                problems.append((f"{section}.list", str(exc)))
    fields: dict[str, Locator] = {}
    for role, required in roles.items():
        given = value.get(role)
        if given is None:
            if required:
                problems.append(
                    (
                        f"{section}.{role}",
                        f"{section} needs '{role}': where it is in the "
                        f"{'body' if method == 'POST' else 'query'}",
                    )
                )
            continue
        if fmt == "form":
            if isinstance(given, str) and given:
                fields[role] = FormField(given)
            else:
                problems.append((f"{section}.{role}", f"a form field name, got {given!r}"))
            continue
        try:
            fields[role] = JsonPath.parse(given)
        except ValueError as exc:
            problems.append((f"{section}.{role}", str(exc)))
    statuses: dict[str, DeliveryStatus] = {}
    if section == "receipts":
        table = value.get("statuses")
        if not isinstance(table, dict) or not table:
            problems.append(
                (
                    "receipts.statuses",
                    "receipts need 'statuses': the gateway's values -> ours, like "
                    "{DELIVRD: delivered, UNDELIV: undelivered}",
                )
            )
        else:
            for raw, ours in table.items():
                if ours in DELIVERY_STATUSES:
                    statuses[str(raw)] = ours
                else:
                    problems.append(
                        (
                            f"receipts.statuses.{raw}",
                            f"unknown status {ours!r}: {_did_you_mean(str(ours), DELIVERY_STATUSES)}"
                            f"choose one of {', '.join(DELIVERY_STATUSES)}",
                        )
                    )
    codes: dict[str, frozenset[str]] = {}
    for key in ("permanent_errors", "opt_out_errors") if section == "receipts" else ():
        given = value.get(key, [])
        if not isinstance(given, list) or not all(
            isinstance(c, (str, int)) and not isinstance(c, bool) and str(c) for c in given
        ):
            problems.append(
                (
                    f"receipts.{key}",
                    f"a list of the gateway's error codes, like [21610, BLOCKED], got {_kind(given)}",
                )
            )
            continue
        if given and "error_code" not in fields:
            problems.append(
                (
                    f"receipts.{key}",
                    "says which error codes mean what, but receipts have no 'error_code' field to read them from",
                )
            )
        codes[key] = frozenset(str(c) for c in given)
    if problems:
        raise _Problems(problems)
    return WebhookSpec(
        fmt,
        method,
        list_path,
        fields,
        statuses,
        codes.get("permanent_errors", frozenset()),
        codes.get("opt_out_errors", frozenset()),
    )


def _secret_text(value: Any, where: str) -> str:
    """A credential of ``webhook_auth``: never quoted in a message."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise _Problems([(where, f"{where.rsplit('.', 1)[-1]} must be a non-empty string")])
    return value


def _header_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise _Problems([(where, f"expected an HTTP header name like X-Signature, got {value!r}")])
    return value


def _hmac_auth(value: Any) -> HmacAuth:
    where = "webhook_auth.hmac"
    if not isinstance(value, dict):
        raise _Problems([(where, f"hmac must be a mapping of {', '.join(sorted(HMAC_KEYS))}")])
    extra = sorted(str(k) for k in set(value) - HMAC_KEYS)
    if extra:
        raise _Problems(
            [
                (
                    f"{where}.{extra[0]}",
                    f"unknown key '{extra[0]}' in hmac: {_did_you_mean(extra[0], HMAC_KEYS)}"
                    f"allowed: {', '.join(sorted(HMAC_KEYS))}",
                )
            ]
        )
    problems: list[tuple[str, str]] = []

    def part(key: str, parse: Callable[[Any, str], Any], default: Any = _MISSING) -> Any:
        if value.get(key) is None:
            if default is _MISSING:
                problems.append((f"{where}.{key}", f"hmac needs '{key}'"))
            return default
        try:
            return parse(value[key], f"{where}.{key}")
        except _Problems as exc:
            problems.extend(exc.problems)
            return None

    def choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
        def parse(given: Any, at: str) -> str:
            if not isinstance(given, str) or given.lower() not in options:
                raise _Problems(
                    [
                        (
                            at,
                            f"unsupported {at.rsplit('.', 1)[-1]} {given!r}: choose {' or '.join(options)}",
                        )
                    ]
                )
            return given.lower()

        return parse

    def tolerance(given: Any, at: str) -> float:
        try:
            seconds = parse_duration(given)
        except ValueError as exc:
            raise _Problems([(at, str(exc))]) from None
        if seconds <= 0:
            raise _Problems([(at, "tolerance must be more than 0s, like 300s")])
        return seconds

    def prefix(given: Any, at: str) -> str:
        if not isinstance(given, str) or not given.isascii():
            raise _Problems([(at, f"prefix is ASCII text like 'sha256=', got {given!r}")])
        return given

    header = part("header", _header_name)
    algorithm = part("algorithm", choice(tuple(HMAC_ALGORITHMS)))
    secret = part("secret", _secret_text)
    signed = part("signed", choice(HMAC_SIGNED))
    timestamp_header = part("timestamp_header", _header_name, None)
    seconds = part("tolerance", tolerance, DEFAULT_TOLERANCE)
    encoding = part("encoding", choice(HMAC_ENCODINGS), "hex")
    text_prefix = part("prefix", prefix, "")
    stamped = signed == "timestamp.body"
    if stamped and value.get("timestamp_header") is None:
        problems.append(
            (f"{where}.timestamp_header", "signed: timestamp.body needs timestamp_header")
        )
    if not stamped and signed is not None:
        for key in ("timestamp_header", "tolerance"):
            if value.get(key) is not None:
                problems.append(
                    (
                        f"{where}.{key}",
                        f"{key} applies to signed: timestamp.body only: a timestamp outside "
                        "the signature proves nothing",
                    )
                )
    if problems:
        raise _Problems(problems)
    return HmacAuth(
        header=header,
        algorithm=algorithm,
        secret=secret.encode(),
        signed=signed,
        timestamp_header=timestamp_header,
        tolerance=seconds,
        encoding=encoding,
        prefix=text_prefix,
    )


def _basic_webhook_auth(value: Any) -> BasicAuth:
    where = "webhook_auth.basic"
    if not isinstance(value, dict) or set(value) != {"username", "password"}:
        raise _Problems([(where, "basic takes exactly username and password")])
    username = _secret_text(value["username"], f"{where}.username")
    password = _secret_text(value["password"], f"{where}.password")
    if ":" in username:
        raise _Problems([(f"{where}.username", "an HTTP Basic username has no ':'")])
    return BasicAuth(username.encode(), password.encode())


def _token_webhook_auth(value: Any) -> TokenAuth:
    where = "webhook_auth.token"
    if not isinstance(value, dict) or "value" not in value or len(value) != 2:
        raise _Problems(
            [(where, "token takes value, and one of header (a header's name) or query")]
        )
    header, query = value.get("header"), value.get("query")
    if (header is None) == (query is None):
        raise _Problems(
            [(where, "token takes value, and one of header (a header's name) or query")]
        )
    token = _secret_text(value["value"], f"{where}.value")
    if header is not None:
        return TokenAuth(_header_name(header, f"{where}.header"), None, token.encode())
    if not isinstance(query, str) or not query:
        raise _Problems([(f"{where}.query", "query is the name of a query parameter")])
    return TokenAuth(None, query, token.encode())


_WEBHOOK_AUTH_KINDS: Mapping[str, Callable[[Any], WebhookAuth]] = {
    "hmac": _hmac_auth,
    "basic": _basic_webhook_auth,
    "token": _token_webhook_auth,
}


def _webhook_auth(value: Any) -> WebhookAuth:
    """A ``webhook_auth`` section.  Messages never quote a secret."""
    if value == UNSIGNED:
        return Unsigned()
    kinds = ", ".join(_WEBHOOK_AUTH_KINDS)
    if not isinstance(value, dict) or len(value) != 1:
        raise _Problems(
            [
                (
                    "webhook_auth",
                    f"webhook_auth is one of {kinds} (a mapping with one key, like "
                    "{hmac: {header: X-Signature, ...}}), or 'none' to accept unsigned webhooks",
                )
            ]
        )
    ((kind, body),) = value.items()
    parse = _WEBHOOK_AUTH_KINDS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise _Problems(
            [
                (
                    "webhook_auth",
                    f"unknown webhook_auth kind {kind!r}: "
                    f"{_did_you_mean(str(kind), _WEBHOOK_AUTH_KINDS)}choose one of {kinds}, "
                    "or 'none'",
                )
            ]
        )
    return parse(body)


def _webhooks(
    options: Mapping[str, Any],
) -> tuple[WebhookSpec | None, WebhookSpec | None, WebhookAuth | None, list[tuple[str, str]]]:
    """The ``receipts``, ``inbound`` and ``webhook_auth`` sections: (each or None, problems)."""
    problems: list[tuple[str, str]] = []
    parsed: dict[str, Any] = {}
    for key, parse in (
        ("receipts", lambda v: _webhook_spec("receipts", v)),
        ("inbound", lambda v: _webhook_spec("inbound", v)),
        ("webhook_auth", _webhook_auth),
    ):
        if options.get(key) is None:
            parsed[key] = None
            continue
        try:
            parsed[key] = parse(options[key])
        except _Problems as exc:
            problems.extend(exc.problems)
            parsed[key] = None
    receipts, inbound, auth = parsed["receipts"], parsed["inbound"], parsed["webhook_auth"]
    declared = [s for s in ("receipts", "inbound") if options.get(s) is not None]
    if declared and options.get("webhook_auth") is None:
        problems.append(
            (
                "webhook_auth",
                f"{' and '.join(declared)} need webhook_auth: how the gateway signs its calls "
                "(hmac, basic or token), or webhook_auth: none to accept unsigned ones from "
                "anyone who finds the URL",
            )
        )
    if isinstance(auth, HmacAuth) and auth.signed == "body":
        for spec, name in ((receipts, "receipts"), (inbound, "inbound")):
            if spec is not None and spec.method == "GET":
                problems.append(
                    (
                        "webhook_auth.hmac.signed",
                        f"{name} come by GET, which has no body: sign url+body",
                    )
                )
    return receipts, inbound, auth, problems


def _text_of(value: Any, limit: int) -> str | None:
    """A scalar of a webhook as text (a string or an integer), cut to ``limit``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)[:limit]
    if isinstance(value, str) and value:
        return value[:limit]
    return None


def _webhook_time(value: Any) -> datetime.datetime | None:
    """Unix seconds (a number or digits) or ISO 8601; None when absent or unreadable."""
    if isinstance(value, str) and value.isdigit():
        value = unix_seconds(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return iso_time(value)
    if not 0 <= value <= _LAST_SECOND:  # False for NaN too
        return None
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


def _records(spec: WebhookSpec, request: WebhookRequest, what: str) -> list[Any]:
    """The records of a webhook call: its body (or query), or each item of ``list``."""
    if spec.format == "form":
        if spec.method == "GET":
            return [request.query]
        return [request.form()]
    doc = request.json()
    if spec.list is None:
        if not isinstance(doc, dict):
            raise WebhookError(400, f"{what} body is not a JSON object")
        return [doc]
    items = spec.list.find(doc)
    if not isinstance(items, list):
        raise WebhookError(400, f"{what} body has no list at '{spec.list.source}'")
    return items


def _source(locator: Locator) -> str:
    return locator.source


def hmac_signature(auth: HmacAuth, request: WebhookRequest, timestamp: str | None) -> bytes:
    """The digest the gateway should have sent for ``request``."""
    if auth.signed == "body":
        signed = request.body
    elif auth.signed == "url+body":
        signed = request.url.encode() + request.body
    else:
        signed = (timestamp or "").encode() + b"." + request.body
    return hmac.new(auth.secret, signed, HMAC_ALGORITHMS[auth.algorithm]).digest()


def _verify_hmac(auth: HmacAuth, request: WebhookRequest, now: float) -> None:
    presented = request.header(auth.header)
    if presented is None:
        raise WebhookError(403, f"missing {auth.header}")
    if not presented.startswith(auth.prefix):
        raise WebhookError(403, f"{auth.header} does not start with '{auth.prefix}'")
    encoded = presented[len(auth.prefix) :].strip()
    try:
        if auth.encoding == "hex":
            digest = bytes.fromhex(encoded)
        else:
            digest = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise WebhookError(403, f"{auth.header} is not {auth.encoding}") from None
    timestamp = None
    if auth.timestamp_header is not None:
        timestamp = request.header(auth.timestamp_header)
        if timestamp is None:
            raise WebhookError(403, f"missing {auth.timestamp_header}")
    expected = hmac_signature(auth, request, timestamp)
    if not hmac.compare_digest(expected, digest):
        raise WebhookError(403, f"{auth.header} does not match")
    if auth.timestamp_header is not None:
        signed_at = unix_seconds(timestamp)
        if signed_at is None:
            raise WebhookError(403, f"{auth.timestamp_header} is not Unix seconds")
        if not within(signed_at, now, auth.tolerance):
            raise WebhookError(403, f"stale {auth.timestamp_header}: replayed or a clock is off")


def _verify_basic(auth: BasicAuth, request: WebhookRequest) -> None:
    scheme, _, encoded = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise WebhookError(403, "missing HTTP Basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise WebhookError(403, "HTTP Basic credentials are not base64") from None
    username, _, password = decoded.partition(b":")
    good_user = hmac.compare_digest(username, auth.username)
    good_password = hmac.compare_digest(password, auth.password)
    if not (good_user and good_password):
        raise WebhookError(403, "wrong HTTP Basic credentials")


def _verify_token(auth: TokenAuth, request: WebhookRequest) -> None:
    if auth.header is not None:
        where = auth.header
        presented = request.header(auth.header)
    else:
        where = f"query parameter {auth.query}"
        presented = request.query.get(auth.query or "") or None
    if presented is None:
        raise WebhookError(403, f"missing {where}")
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), auth.value):
        raise WebhookError(403, f"wrong {where}")


# -- the compiled config -----------------------------------------------------------------------


def _outcome(value: Any, where: str) -> Outcome:
    if isinstance(value, str) and value in OUTCOMES:
        return Outcome(value)
    raise ValueError(
        f"{where}: unknown outcome {value!r}: {_did_you_mean(str(value), OUTCOMES)}"
        f"choose one of {', '.join(OUTCOMES)}"
    )


@attrs.frozen(slots=True)
class Spec:
    """An ``http`` provider section, parsed: what :class:`HttpApiProvider` runs."""

    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...]
    query: tuple[tuple[str, Template], ...]
    form: tuple[tuple[str, Template], ...] | None
    json: JsonTemplate
    id_path: JsonPath
    code_path: JsonPath | None
    detail_path: JsonPath | None
    status_outcomes: Mapping[int, Outcome]
    class_outcomes: Mapping[int, Outcome]
    code_outcomes: Mapping[str, Outcome]
    #: Headers and query parameters carrying the credentials, and the secrets themselves.
    auth_headers: Mapping[str, str] = attrs.field(repr=False)
    auth_query: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    secrets: tuple[str, ...] = attrs.field(repr=False)
    #: What its webhooks carry, and how they are authenticated (None: refused).
    receipts: WebhookSpec | None = None
    inbound: WebhookSpec | None = None
    webhook_auth: WebhookAuth | None = None


def _auth(
    value: Any,
) -> tuple[dict[str, str], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(headers, query parameters, secrets) of an ``auth`` section.

    Messages never quote a value: they may be credentials.
    """
    if value is None:
        return {}, (), ()
    if not isinstance(value, dict):
        raise ValueError(
            f"auth must be a mapping like {{kind: bearer, token: ${{TOKEN}}}}, got {_kind(value)}"
        )
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in AUTH_KINDS:
        if kind is None:
            raise ValueError(f"auth needs 'kind': one of {', '.join(AUTH_KINDS)}")
        raise ValueError(
            f"unknown auth kind {kind!r}: {_did_you_mean(str(kind), AUTH_KINDS)}"
            f"choose one of {', '.join(AUTH_KINDS)}"
        )
    keys = AUTH_KINDS[kind]
    extra = sorted(set(value) - {"kind", *keys})
    if extra:
        raise ValueError(
            f"auth kind {kind} takes {', '.join(keys)}; unknown key(s): {', '.join(extra)}"
        )
    fields: dict[str, str] = {}
    for key in keys:
        item = value.get(key)
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item:
            raise ValueError(f"auth kind {kind} needs '{key}' (a non-empty string)")
        fields[key] = item
    if kind == "basic":
        raw = f"{fields['username']}:{fields['password']}".encode()
        token = base64.b64encode(raw).decode("ascii")
        return {"Authorization": f"Basic {token}"}, (), (fields["password"], token)
    if kind == "bearer":
        return {"Authorization": f"Bearer {fields['token']}"}, (), (fields["token"],)
    if not (kind == "query" or _HEADER_NAME.fullmatch(fields["name"])):
        raise ValueError(f"auth: '{fields['name']}' is not a valid HTTP header name")
    if kind == "header":
        return {fields["name"]: fields["value"]}, (), (fields["value"],)
    return {}, ((fields["name"], fields["value"]),), (fields["value"],)


def _status_outcomes(value: Any) -> tuple[dict[int, Outcome], dict[int, Outcome]]:
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        raise ValueError("status_outcomes must be a mapping like {404: auth, 5xx: transient}")
    exact: dict[int, Outcome] = {}
    classes: dict[int, Outcome] = {}
    for key, name in value.items():
        m = _STATUS_KEY.fullmatch(str(key))
        if m is None:
            raise ValueError(
                f"status_outcomes: '{key}' is not an HTTP status (100 to 599) or a class like 4xx"
            )
        outcome = _outcome(name, f"status_outcomes.{key}")
        if m.group(2).lower() == "xx":
            classes[int(m.group(1))] = outcome
        else:
            exact[int(str(key))] = outcome
    return exact, classes


def _code_outcomes(value: Any) -> dict[str, Outcome]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ValueError("code_outcomes must be a mapping of body value -> outcome")
    return {str(k): _outcome(v, f"code_outcomes.{k}") for k, v in value.items()}


def compile_options(
    options: Mapping[str, Any], base_url: str | None
) -> tuple[Spec | None, list[tuple[str, str]]]:
    """Parse an ``http`` provider section: (the spec or None, the problems as (key, sentence))."""
    problems: list[tuple[str, str]] = []

    def take(key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        if options.get(key) is None:
            return default
        try:
            return parse(options[key])
        except ValueError as exc:
            problems.append((key, str(exc)))
            return _MISSING

    def method(value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in METHODS:
            raise ValueError(f"method is one of {', '.join(METHODS)}, got {value!r}")
        return value.upper()

    def url(value: Any) -> Template:
        if not isinstance(value, str) or not value:
            raise ValueError(f"url must be a path like /api/send or a whole URL, got {value!r}")
        template = Template.parse(value)
        if value.startswith("/"):
            if not base_url:
                raise ValueError(f"url '{value}' is a path: give base_url, or a whole URL here")
            prefix = base_url.rstrip("/")
            literal, field = template.parts[0]
            return Template(prefix + value, ((prefix + literal, field), *template.parts[1:]))
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"url must start with '/' (under base_url) or http(s)://, got {value!r}"
            )
        return template

    def json_body(value: Any) -> JsonTemplate:
        if not isinstance(value, dict | list):
            raise ValueError(f"json must be a mapping or a list (the body), got {_kind(value)}")
        return _json_template(value, "json")

    spec_method = take("method", method, "POST")
    spec_url = take("url", url)
    if options.get("url") is None:
        problems.append(("url", "an http provider needs 'url': a path under base_url or a URL"))
    headers = take("headers", lambda v: _flat_templates(v, "headers"), ())
    query = take("query", lambda v: _flat_templates(v, "query"), ())
    form = take("form", lambda v: _flat_templates(v, "form"))
    json_tpl = take("json", json_body)
    if options.get("form") is not None and options.get("json") is not None:
        problems.append(("json", "give either form: or json: as the body, not both"))
    if spec_method == "GET":
        for key in ("form", "json"):
            if options.get(key) is not None:
                problems.append((key, "a GET request has no body: put the fields in query:"))
    id_path = take("id_path", JsonPath.parse)
    if options.get("id_path") is None:
        problems.append(("id_path", "an http provider needs 'id_path': where the message id is"))
    code_path = take("code_path", JsonPath.parse)
    detail_path = take("detail_path", JsonPath.parse)
    status = take("status_outcomes", _status_outcomes, ({}, {}))
    codes = take("code_outcomes", _code_outcomes, {})
    if options.get("code_outcomes") is not None and options.get("code_path") is None:
        problems.append(("code_outcomes", "code_outcomes needs code_path: where the code is"))
    auth = take("auth", _auth, ({}, (), ()))
    receipts, inbound, webhook_auth, webhook_problems = _webhooks(options)
    problems += webhook_problems
    if problems:
        return None, problems
    spec = Spec(
        method=spec_method,
        url=spec_url,
        headers=headers,
        query=query,
        form=form,
        json=json_tpl,
        id_path=id_path,
        code_path=code_path,
        detail_path=detail_path,
        status_outcomes=status[0],
        class_outcomes=status[1],
        code_outcomes=codes,
        auth_headers=auth[0],
        auth_query=auth[1],
        secrets=auth[2],
        receipts=receipts,
        inbound=inbound,
        webhook_auth=webhook_auth,
    )
    return spec, []


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _values(sms: OutboundSMS) -> dict[str, Value]:
    return {
        "to": sms.to,
        "to_digits": sms.to.lstrip("+"),
        "text": sms.text,
        "sender": sms.sender,
        "message_id": sms.message_id,
        "status_callback": sms.status_callback,
        "country": sms.country,
        "encoding": sms.encoding,
        "segments": sms.segments,
        "category": sms.category,
        "attempt": sms.attempt,
    }


def _url_escape(text: str) -> str:
    return quote(text, safe="")


# -- the adapter ---------------------------------------------------------------------------


class HttpApiProvider(HttpProvider):
    """Any HTTP SMS API, declared in the provider's config section (see the module doc)."""

    type_name = "http"
    required_options = frozenset({"url", "id_path"})
    optional_options = frozenset(
        {
            "method",
            "auth",
            "headers",
            "query",
            "form",
            "json",
            "code_path",
            "code_outcomes",
            "detail_path",
            "status_outcomes",
            "receipts",
            "inbound",
            "webhook_auth",
        }
    )
    secret_options = frozenset({"auth", "webhook_auth"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        spec, problems = compile_options(config.options, config.base_url)
        if spec is None:
            raise ValueError(
                f"provider '{config.name}' (type http): "
                + "; ".join(f"{key}: {problem}" for key, problem in problems)
            )
        self.spec = spec
        self._headers = {"Accept": "application/json", **spec.auth_headers}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        base_url = options.get("base_url")
        _, problems = compile_options(options, base_url if isinstance(base_url, str) else None)
        # The loader itself reports a missing required option.
        return [
            (key, problem)
            for key, problem in problems
            if key not in cls.required_options or options.get(key) is not None
        ]

    # -- webhooks --------------------------------------------------------------------------

    # Either method may be declared; verify_webhook refuses (405) the one that was not.
    webhook_methods = {
        "status": frozenset({"POST", "GET"}),
        "inbound": frozenset({"POST", "GET"}),
    }

    def _declared(self, kind: str) -> WebhookSpec | None:
        return self.spec.receipts if kind == "status" else self.spec.inbound

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        auth = self.spec.webhook_auth
        if auth is None:
            raise WebhookError(
                403,
                f"provider {self.name} declares no webhook_auth: give it hmac, basic or token "
                "(or webhook_auth: none to accept unsigned webhooks)",
            )
        declared = self._declared(kind)
        if declared is None:
            section = "receipts" if kind == "status" else "inbound"
            raise WebhookError(404, f"provider {self.name} declares no {section}: section")
        if request.method != declared.method:
            raise WebhookError(405, f"method {request.method} not allowed: {declared.method}")
        if isinstance(auth, HmacAuth):
            _verify_hmac(auth, request, now)
        elif isinstance(auth, BasicAuth):
            _verify_basic(auth, request)
        elif isinstance(auth, TokenAuth):
            _verify_token(auth, request)

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        spec = self.spec.receipts
        if spec is None:
            raise WebhookError(404, f"provider {self.name} declares no receipts: section")
        receipts = []
        for record in _records(spec, request, "receipt"):
            f = spec.fields
            found = _text_of(f["message_id"].find(record), 200)
            if found is None:
                raise WebhookError(
                    400, f"receipt without a message id at '{_source(f['message_id'])}'"
                )
            raw = _as_text(f["status"].find(record))
            if raw is None:
                raise WebhookError(400, f"receipt without a status at '{_source(f['status'])}'")
            reference = _text_of(f["reference"].find(record), 200) if "reference" in f else None
            code = _text_of(f["error_code"].find(record), 100) if "error_code" in f else None
            at = _webhook_time(f["timestamp"].find(record)) if "timestamp" in f else None
            opted_out = code is not None and code in spec.opt_out_errors
            permanent = opted_out or (code is not None and code in spec.permanent_errors)
            receipts.append(
                Receipt(
                    provider_message_id=found,
                    status=spec.statuses.get(raw, "unknown"),
                    error_code=code,
                    at=at,
                    message_id=reference,
                    retryable=False if permanent else None,
                    opted_out=opted_out,
                )
            )
        return receipts

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        spec = self.spec.inbound
        if spec is None:
            raise WebhookError(404, f"provider {self.name} declares no inbound: section")
        messages = []
        for record in _records(spec, request, "inbound message"):
            f = spec.fields
            sender = _text_of(f["sender"].find(record), 64)
            recipient = _text_of(f["recipient"].find(record), 64)
            text = f["text"].find(record)
            if sender is None or recipient is None or not isinstance(text, str):
                raise WebhookError(
                    400,
                    f"inbound message without a sender at '{_source(f['sender'])}', a recipient "
                    f"at '{_source(f['recipient'])}' and a text at '{_source(f['text'])}'",
                )
            found = _text_of(f["message_id"].find(record), 200) if "message_id" in f else None
            at = _webhook_time(f["timestamp"].find(record)) if "timestamp" in f else None
            messages.append(
                Inbound(
                    sender=with_plus(sender),
                    recipient=with_plus(recipient),
                    text=text,
                    provider_message_id=found,
                    at=at,
                )
            )
        return messages

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        spec = self.spec
        values = _values(sms)
        url = spec.url.render(values, _url_escape)
        params = [(k, v) for k, t in spec.query if (v := t.value(values)) is not None]
        params += spec.auth_query
        if params:
            url += ("&" if "?" in url else "?") + urlencode([(k, str(v)) for k, v in params])
        headers = dict(self._headers)
        for name, template in spec.headers:
            value = template.value(values)
            if value is not None:
                value = str(value)
                # A header carries printable ASCII, spaces inside: a CR or LF would end it
                # (aiohttp raises), a space at either end is stripped by the server, and
                # other bytes have no charset a gateway agrees on (RFC 9110, 5.5).
                if not _HEADER_VALUE.fullmatch(value):
                    raise CannotCarry(
                        f"{_field_of(template)} in header {name}",
                        "a header value is printable ASCII, without a space at either end",
                    )
                headers[name] = value
        headers.update(spec.auth_headers)  # a header template never overrides the credentials
        if spec.form is not None:
            form = {k: str(v) for k, t in spec.form if (v := t.value(values)) is not None}
            return HttpRequest(spec.method, url, headers, data=form)
        if spec.json is not None:
            return HttpRequest(spec.method, url, headers, json=_render_json(spec.json, values))
        return HttpRequest(spec.method, url, headers)

    def _unsecret(self, text: str) -> str:
        # Some APIs quote the credential they refused: never let it into a reply.
        for secret in self.spec.secrets:
            text = text.replace(secret, "***")
        return text

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        spec = self.spec
        try:
            doc: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
            doc = _MISSING
        is_json = isinstance(doc, dict | list)
        found_code = _as_text(spec.code_path.find(doc)) if is_json and spec.code_path else None
        outcome = spec.code_outcomes.get(found_code) if found_code is not None else None
        code = self._unsecret(found_code)[:100] if found_code is not None else None
        if outcome is None:
            outcome = spec.status_outcomes.get(status) or spec.class_outcomes.get(status // 100)
        if outcome is None:
            outcome = classify_status(status)
        if outcome is Outcome.ACCEPTED:
            if not is_json:
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    detail=f"malformed reply: HTTP {status} without a JSON body",
                )
            found = spec.id_path.find(doc)
            if isinstance(found, bool) or not isinstance(found, str | int) or found == "":
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    error_code=code,
                    detail=f"malformed reply: success without a message id at '{spec.id_path.source}'",
                )
            return Reply(
                Outcome.ACCEPTED,
                provider_message_id=str(found),
                status_code=status,
                error_code=code,
            )
        if not is_json:
            detail = f"HTTP {status} without a JSON body"
        else:
            detail = f"code {code}" if code is not None else f"HTTP {status}"
            said = _as_text(spec.detail_path.find(doc)) if spec.detail_path else None
            if said:
                # Providers quote the number back in their messages.
                detail += f": {scrub(self._unsecret(said)[:200])}"
        return Reply(
            outcome,
            status_code=status,
            error_code=code,
            detail=detail,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
