"""The provider interface, and the outcome taxonomy that decides failover.

Every answer of every provider is mapped to exactly one outcome::

    Outcome
    ├── ACCEPTED     the provider took the message (2xx with a message id)  -> stop: success
    ├── REJECTED     invalid number, blocked content, opted out              -> stop: failed, healthy
    ├── UNROUTABLE   this provider cannot reach that destination             -> next provider, healthy
    ├── THROTTLED    429 / rate-limit code; paused until Retry-After         -> next provider, healthy
    ├── AUTH         401/403, bad credentials, misconfigured account         -> next provider, opens breaker
    ├── TRANSIENT    5xx, refused, reset, malformed reply                    -> next provider, unhealthy
    └── TIMEOUT      no answer in time: the SMS may have gone out            -> rule's on_timeout, unhealthy

A provider is one small class: implement :meth:`Provider.send` (or, for an
HTTP API, :meth:`HttpProvider.build_request` and :meth:`HttpProvider.parse_response`).
It must never retry on its own: the router is the only retry loop, and nested
retries multiply.  It must never raise for a provider's answer: map it to a
:class:`Reply`.  Network errors and timeouts may propagate; the router
classifies them (timeout -> TIMEOUT, connection errors -> TRANSIENT).
"""

from __future__ import annotations

import abc
import datetime
import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import parse_qsl, quote_plus, urlsplit

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from smsroute.clock import Clock
from smsroute.message import DeliveryStatus, Encoding, Outcome

if TYPE_CHECKING:
    from smsroute.config import ProviderConfig

__all__ = [
    "CannotCarry",
    "HttpProvider",
    "HttpRequest",
    "Inbound",
    "LinkState",
    "OutboundSMS",
    "Outcome",
    "Provider",
    "ProviderSink",
    "Receipt",
    "Reply",
    "WebhookError",
    "WebhookRequest",
    "accepted",
    "classify_status",
    "form_encode",
    "iso_time",
    "json_object",
    "malformed",
    "new_http_request",
    "new_outbound_sms",
    "new_reply",
    "parse_retry_after",
    "unix_seconds",
    "url_problem",
    "with_plus",
    "within",
]


# The send path builds OutboundSMS, HttpRequest and Reply with new_outbound_sms,
# new_http_request and new_reply: attrs' frozen __init__ sets each field through
# ``object.__setattr__`` (a method-wrapper call per field; 12.6k instructions for
# an OutboundSMS).  Each class's slots live in a plain base class (attrs adds none
# of its own when a base has them): its instance is filled by ordinary attribute
# stores and then becomes the frozen class by ``__class__`` assignment, allowed
# between a class and a subclass that adds no slot.  The same pattern as
# smsroute.message.new_attempt; tests/test_hot_path.py compares every field.


class _OutboundSMSSlots:
    __slots__ = (
        "__weakref__",
        "attempt",
        "category",
        "country",
        "encoding",
        "message_id",
        "segments",
        "sender",
        "status_callback",
        "text",
        "timeout",
        "to",
    )
    message_id: str
    to: str
    country: str
    text: str
    sender: str | None
    encoding: Encoding
    segments: int
    category: str
    attempt: int
    status_callback: str | None
    timeout: float | None


@attrs.frozen(slots=True)
class OutboundSMS(_OutboundSMSSlots):
    """One message as handed to one provider: already validated and normalised.

    ``to`` is E.164; ``attempt`` counts every provider tried for this message so
    far, this one included (Twilio's ``Attempt`` field exists for exactly this);
    ``status_callback`` is the URL the provider should post receipts to, or None.
    ``timeout`` is the seconds this attempt may still take (the provider's
    ``timeout``, or less when the message's deadline is nearer): an adapter
    making its own HTTP call passes it on.  The router enforces it regardless.
    """

    message_id: str
    to: str
    country: str
    text: str
    sender: str | None
    encoding: Encoding
    segments: int
    category: str
    attempt: int = 1
    status_callback: str | None = None
    timeout: float | None = None


def new_outbound_sms(
    message_id: str,
    to: str,
    country: str,
    text: str,
    sender: str | None,
    encoding: Encoding,
    segments: int,
    category: str,
    attempt: int = 1,
    status_callback: str | None = None,
    timeout: float | None = None,
) -> OutboundSMS:
    """``OutboundSMS(...)`` with the same arguments, in under a third of the instructions."""
    self = _OutboundSMSSlots()
    self.message_id = message_id
    self.to = to
    self.country = country
    self.text = text
    self.sender = sender
    self.encoding = encoding
    self.segments = segments
    self.category = category
    self.attempt = attempt
    self.status_callback = status_callback
    self.timeout = timeout
    self.__class__ = OutboundSMS
    return self  # type: ignore[return-value]  # it is an OutboundSMS now


class _ReplySlots:
    __slots__ = (
        "__weakref__",
        "detail",
        "error_code",
        "opted_out",
        "outcome",
        "part_ids",
        "provider_message_id",
        "retry_after",
        "status_code",
    )
    outcome: Outcome
    provider_message_id: str | None
    status_code: int | None
    error_code: str | None
    detail: str | None
    retry_after: float | None
    part_ids: tuple[str, ...]
    opted_out: bool


@attrs.frozen(slots=True)
class Reply(_ReplySlots):
    """A provider's answer, classified.

    ``detail`` is a short explanation safe for logs: never the number, the text
    or a credential.  ``retry_after`` is in seconds when the provider said when
    to come back.  ``part_ids`` are the ids of the message's parts when the
    provider gave each part its own id and reports each part's delivery apart
    (Vonage): empty for a message of one part or one id.  ``opted_out`` is true
    when the answer means the recipient opted out (Twilio 21610, Telnyx 40300: each
    adapter's error table says which codes): the router then records the opt-out
    and refuses the number's next messages of the opted-out categories itself.
    """

    outcome: Outcome
    provider_message_id: str | None = None
    status_code: int | None = None
    error_code: str | None = None
    detail: str | None = None
    retry_after: float | None = None
    part_ids: tuple[str, ...] = ()
    opted_out: bool = False


def new_reply(
    outcome: Outcome,
    provider_message_id: str | None = None,
    status_code: int | None = None,
    error_code: str | None = None,
    detail: str | None = None,
    retry_after: float | None = None,
    part_ids: tuple[str, ...] = (),
    opted_out: bool = False,
) -> Reply:
    """``Reply(...)`` with the same arguments, in under a third of the instructions."""
    self = _ReplySlots()
    self.outcome = outcome
    self.provider_message_id = provider_message_id
    self.status_code = status_code
    self.error_code = error_code
    self.detail = detail
    self.retry_after = retry_after
    self.part_ids = part_ids
    self.opted_out = opted_out
    self.__class__ = Reply
    return self  # type: ignore[return-value]  # it is a Reply now


class CannotCarry(ValueError):
    """Raised by :meth:`HttpProvider.build_request` (or an adapter's own ``send``) when
    this provider cannot carry one of the message's values as written (its sender in
    an HTTP header, say), though another provider might: the adapter answers
    :data:`Outcome.UNROUTABLE` without a request (the router tries the next provider
    and the provider's breaker and health are not blamed).  The text names the field
    and the limit, never the value.  A value that no provider could carry is refused
    before any adapter sees it (``Runtime.prepare``)."""

    def __init__(self, field: str, limit: str) -> None:
        super().__init__(f"cannot carry the {field}: {limit}")


class WebhookError(Exception):
    """A webhook request we refuse: ``status`` is 400 (malformed), 403 (bad or
    missing signature) or 404 (this provider has no webhook of that kind).
    The message is safe to log: no number, text or secret."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen(slots=True)
class WebhookRequest:
    """A webhook call as a provider made it: ``url`` is the public URL it called
    (the one it signed), ``body`` the raw bytes.

    Everything here reads what anyone may have sent: each reader either returns
    or raises :class:`WebhookError`, never anything else.
    """

    method: str
    url: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def check_url(self) -> None:
        """:class:`WebhookError` 400 unless ``url`` is an absolute http(s) URL
        every adapter can take apart (UTF-8, a host, a port from 1 to 65535)."""
        problem = url_problem(self.url)
        if problem is not None:
            raise WebhookError(400, f"the request's URL cannot be rebuilt: {problem}")

    @property
    def query(self) -> dict[str, str]:
        """The URL's query parameters (the last value of a repeated one)."""
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        """A signature, credential or timestamp header, stripped; None when absent
        or blank, :class:`WebhookError` 403 when it is not ASCII (none of those is)."""
        value = self.headers.get(name)
        if value is None or not value.strip():
            return None
        if not value.isascii():
            raise WebhookError(403, f"{name} is not ASCII")
        return value.strip()

    def form_pairs(self) -> list[tuple[str, str]]:
        """The body as ``application/x-www-form-urlencoded`` (name, value) pairs, in
        order; :class:`WebhookError` 400 unless it, and each escape in it, is UTF-8."""
        try:
            return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise WebhookError(400, "body is not UTF-8 form data") from None

    def form(self) -> dict[str, str]:
        """The body as ``application/x-www-form-urlencoded`` parameters."""
        return dict(self.form_pairs())

    def params(self) -> dict[str, str]:
        """Query parameters for GET, form parameters (over the query's) for POST."""
        if self.method.upper() == "GET":
            return self.query
        return {**self.query, **self.form()}

    def json(self) -> Any:
        """The body parsed as JSON; :class:`WebhookError` 400 when it is not.

        Strict: UTF-8 only (RFC 8259), no NaN or Infinity, no lone surrogate
        escape (``"\\ud800"``: no text can hold it), nesting within the
        interpreter's recursion limit.
        """
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookError(400, "body is not UTF-8 JSON") from None
        try:
            doc = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise WebhookError(400, "JSON body is nested too deeply") from None
        except ValueError:
            raise WebhookError(400, "body is not valid JSON") from None
        if "\\u" in text:  # only an escape can make a surrogate out of valid UTF-8
            try:
                json.dumps(doc, ensure_ascii=False).encode("utf-8")
            except RecursionError:
                raise WebhookError(400, "JSON body is nested too deeply") from None
            except UnicodeEncodeError:
                raise WebhookError(400, "JSON body has a lone surrogate escape") from None
        return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def url_problem(url: str) -> str | None:
    """Why ``url`` is no absolute http(s) URL with a readable host and port, or None."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return "it holds bytes that are not UTF-8"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "its host or port is malformed"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it has no http(s) scheme and host"
    if port == 0:
        return "its port is 0"
    return None


#: Unix seconds are at most this many digits (until the year 33658).
_MAX_SECOND_DIGITS = 12


def unix_seconds(value: str | None) -> int | None:
    """A timestamp written as whole Unix seconds (ASCII digits, 12 at most), or None."""
    if (
        value is None
        or not 0 < len(value) <= _MAX_SECOND_DIGITS
        or not value.isascii()
        or not value.isdigit()
    ):
        return None
    return int(value)


def within(signed_at: object, now: float, tolerance: float) -> bool:
    """Whether a signed time (seconds, a number from the request) is a real number
    within ``tolerance`` of ``now``: False for NaN, infinities, huge integers, bools."""
    if isinstance(signed_at, bool) or not isinstance(signed_at, int | float):
        return False
    if not -1e15 < signed_at < 1e15:  # exact for any int: no float overflow
        return False
    return abs(now - signed_at) <= tolerance


@attrs.frozen(slots=True)
class Receipt:
    """One delivery receipt as an adapter reads it, before correlation.

    ``message_id`` is ours when the provider echoes it (a client reference, or
    the ``smsroute_id`` the router adds to callback URLs).  ``retryable`` says
    whether another provider might deliver where this one failed.
    ``event_id`` distinguishes two genuine events with the same status; None
    when the provider gives no such id (duplicates are then judged by content).
    ``opted_out`` is true when the receipt's error code means the recipient opted
    out (Vonage err-code 9, Plivo 200, Bandwidth 4775, ...: ``RECEIPT_OPT_OUT_CODES``
    in each adapter, ``OPT_OUT_STATUSES`` in Infobip's, say which): the router then
    records the opt-out, for a receipt correlated to a message it sent only.
    """

    provider_message_id: str
    status: DeliveryStatus
    error_code: str | None = None
    at: datetime.datetime | None = None
    retryable: bool | None = None
    message_id: str | None = None
    event_id: str | None = None
    opted_out: bool = False


@attrs.frozen(slots=True)
class Inbound:
    """One inbound message as an adapter reads it."""

    sender: str
    recipient: str
    text: str
    provider_message_id: str | None = None
    at: datetime.datetime | None = None


class ProviderSink(Protocol):
    """Where a provider that holds its own connection (SMPP) hands what arrives on it.

    The router's :class:`~smsroute.webhooks.Webhooks`: the receipts and inbound
    messages go through the same de-duplication, correlation, delivery and
    opt-out handling as those a webhook brings, after its parse step.
    """

    @property
    def clock(self) -> Clock:
        """The router's clock (for timeouts such as inbound reassembly)."""

    async def accept_receipts(self, provider_name: str, receipts: list[Receipt]) -> None:
        """Correlate and apply receipts ``provider_name`` received."""

    async def accept_inbound(self, provider_name: str, messages: list[Inbound]) -> None:
        """Opt-outs and ``on_inbound`` callbacks for messages ``provider_name`` received."""


@attrs.frozen(slots=True)
class LinkState:
    """The connections of a provider that keeps them (SMPP binds), for explain and metrics.

    ``up`` and ``down`` count binds; ``in_flight`` requests await an answer out
    of ``window`` (over every bind); ``problems`` say why binds are down.
    """

    up: int
    down: int
    in_flight: int
    window: int
    problems: tuple[str, ...] = ()

    def summary(self) -> str:
        """In words, as ``smsroute explain`` prints it: ``2/2 binds up, window 0/20``,
        then why the others are down."""
        text = f"{self.up}/{self.up + self.down} binds up, window {self.in_flight}/{self.window}"
        return f"{text} ({'; '.join(self.problems)})" if self.problems else text


class Provider(abc.ABC):
    """One configured account at one SMS provider.

    Subclasses set ``type_name`` (the config's ``type:``) and declare the
    options they read from the provider's config section; the loader rejects
    any other key with a "did you mean".
    """

    type_name: ClassVar[str]
    #: Options the config must give for this type (besides the common keys).
    required_options: ClassVar[frozenset[str]] = frozenset()
    #: Options the config may give for this type.
    optional_options: ClassVar[frozenset[str]] = frozenset()
    #: Options whose values are secrets: never shown in errors or logs.
    secret_options: ClassVar[frozenset[str]] = frozenset()
    #: Options naming a file, as key paths (``("tls", "ca")`` is ``tls: {ca: file}``):
    #: the loader reads a relative name from the config file's directory, as price
    #: files are, and hands :meth:`check_options` and the adapter the path it found.
    file_options: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: Where the real API lives when the config gives no ``base_url``.
    default_base_url: ClassVar[str] = ""
    #: True when the adapter sends our message id and receipts echo it back
    #: (a client reference); otherwise the router puts it in the callback URL.
    echoes_message_id: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.name
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Type-specific checks of a provider's config section: a list of (key, problem).

        ``options`` is the whole section as written (common keys such as
        ``from`` included).  The loader has already checked that required
        options are present and no unknown key is given; override to check values.
        """
        return []

    @classmethod
    def check_webhook_options(
        cls, options: Mapping[str, Any], webhook_url: str | None
    ) -> list[tuple[str, str]]:
        """Whether the options can verify the webhooks this provider will be sent:
        a list of (key, problem), as :meth:`check_options`.

        ``webhook_url`` is where its delivery receipts go (its ``status_callback``,
        or ``defaults.webhook_url``), None when the config asks for none.
        """
        return []

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        """None when the provider's webhooks are verified with these options (or it takes
        none); else what would verify them, for a warning (``smsroute check`` and
        ``serve``): its webhooks are then accepted from anyone who can reach their URLs.
        The default: verified (adapters whose verification is optional override it)."""
        return None

    @abc.abstractmethod
    async def send(self, sms: OutboundSMS, session: aiohttp.ClientSession) -> Reply:
        """Send one message and classify the answer.  Never retry."""

    async def start(self, sink: ProviderSink | None) -> None:  # noqa: B027 - optional hook
        """Open what the provider keeps open (SMPP binds) when the router starts.

        Called once per router start for every provider (``async with router``
        or the first send); must not raise for a provider that cannot be
        reached (report it, keep trying).  ``sink`` takes the receipts and
        inbound messages that arrive on the provider's own connections.
        """

    def links(self) -> LinkState | None:
        """The state of the provider's connections, or None when it keeps none (HTTP)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release anything the provider holds (the HTTP session is the router's)."""

    # -- webhooks: receipts and inbound messages --------------------------------------
    #: HTTP methods the provider uses to call each webhook kind.
    webhook_methods: ClassVar[Mapping[str, frozenset[str]]] = {
        "status": frozenset({"POST"}),
        "inbound": frozenset({"POST"}),
    }

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:  # noqa: B027
        """Check the request's signature; raise :class:`WebhookError` 403 if it is
        forged, stale or unsigned while a secret is configured.

        ``now`` is the current Unix time (for timestamp tolerances).  The default
        accepts everything: adapters with a signature scheme override it.
        """

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        """The delivery receipts in a status webhook (raise WebhookError 400 if malformed)."""
        raise WebhookError(404, f"provider type {self.type_name} does not take delivery receipts")

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        """The messages in an inbound webhook (raise WebhookError 400 if malformed)."""
        raise WebhookError(404, f"provider type {self.type_name} does not take inbound messages")

    def webhook_response(self, kind: str) -> tuple[int, str, bytes]:
        """What to answer an accepted webhook: (status, content type, body).

        A plain 200 by default; providers that read the answer (Twilio reads
        TwiML from inbound answers) override it.
        """
        return 200, "text/plain", b"ok"


class _HttpRequestSlots:
    __slots__ = ("__weakref__", "data", "headers", "json", "method", "url")
    method: str
    url: str
    headers: Mapping[str, str]
    data: Mapping[str, str] | None
    json: Any


@attrs.frozen(slots=True)
class HttpRequest(_HttpRequestSlots):
    """One HTTP request an :class:`HttpProvider` wants made."""

    method: str
    url: str
    headers: Mapping[str, str] = attrs.field(repr=False)  # credentials live here
    data: Mapping[str, str] | None = attrs.field(default=None, repr=False)
    json: Any = attrs.field(default=None, repr=False)


def new_http_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None = None,
    json: Any = None,
) -> HttpRequest:
    """``HttpRequest(...)`` with the same arguments, in under half the instructions."""
    self = _HttpRequestSlots()
    self.method = method
    self.url = url
    self.headers = headers
    self.data = data
    self.json = json
    self.__class__ = HttpRequest
    return self  # type: ignore[return-value]  # it is an HttpRequest now


class HttpProvider(Provider):
    """A provider reached by one HTTP request per message.

    Implement :meth:`build_request` and :meth:`parse_response`, both pure, so
    they are tested without a network; :meth:`send` does the I/O, within
    ``sms.timeout`` (aiohttp's own total timeout: the router sets no second
    timer of its own around it).
    """

    _timeout: aiohttp.ClientTimeout | None = None
    #: The values of its secret options, kept out of its replies (made on first use).
    _secrets: tuple[str, ...] | None = None

    @abc.abstractmethod
    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        """The HTTP request that sends ``sms``."""

    @abc.abstractmethod
    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        """Classify the provider's answer.  Must not raise on garbage: return TRANSIENT."""

    async def send(self, sms: OutboundSMS, session: aiohttp.ClientSession) -> Reply:
        try:
            req = self.build_request(sms)
        except CannotCarry as exc:  # no request: the next provider may carry it
            return new_reply(Outcome.UNROUTABLE, detail=str(exc))
        # Encode the body here rather than through aiohttp's FormData/JsonPayload:
        # same bytes on the wire, a fraction of the CPU on the hot path.
        headers = dict(req.headers)
        body: bytes | None
        if req.data is not None:
            body = form_encode(req.data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif req.json is not None:
            body = json.dumps(req.json, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        else:
            body = None
        if sms.timeout is None:
            request = session.request(req.method, req.url, headers=headers, data=body)
        else:
            timeout = self._timeout
            if timeout is None or timeout.total != sms.timeout:
                # Exact: aiohttp rounds timeouts of 5 s or more up to a whole second.
                timeout = self._timeout = aiohttp.ClientTimeout(
                    total=max(sms.timeout, 0.001), ceil_threshold=math.inf
                )
            request = session.request(
                req.method, req.url, headers=headers, data=body, timeout=timeout
            )
        async with request as resp:
            raw = await resp.read()
            reply = self.parse_response(resp.status, resp.headers, raw)
        if reply.detail is None:  # an acceptance: nothing quoted back
            return reply
        return _withhold(reply, sms.text, self._secret_values())

    def _secret_values(self) -> tuple[str, ...]:
        found = self._secrets
        if found is None:
            options = self.config.options
            found = self._secrets = tuple(
                str(value)
                for name in sorted(self.secret_options)
                if isinstance(value := options.get(name), str | int)
                and not isinstance(value, bool)
                and str(value)
            )
        return found


#: A text shorter than this is not looked for in an answer (it would mask the answer's words).
_MIN_WITHHELD = 4


def _withhold(reply: Reply, text: str, secrets: tuple[str, ...]) -> Reply:
    """``reply`` with the message's text and the provider's credentials masked in its detail.

    Providers quote the request back in their error messages: each adapter masks
    the numbers they quote (``scrub``), but only here are the text and the
    credentials known.
    """
    detail = reply.detail
    assert detail is not None
    if len(text) >= _MIN_WITHHELD:
        detail = detail.replace(text, "***")
    for secret in secrets:
        detail = detail.replace(secret, "***")
    return reply if detail == reply.detail else attrs.evolve(reply, detail=detail)


def malformed(status: int, why: str) -> Reply:
    """A TRANSIENT reply for an answer the adapter cannot read (never raise on garbage)."""
    return Reply(Outcome.TRANSIENT, status_code=status, detail=f"malformed reply: {why}")


def json_object(status: int, headers: CIMultiDictProxy[str], body: bytes) -> dict[str, Any] | Reply:
    """The body as a JSON object, or the reply an answer without one comes to.

    A 2xx or 5xx without a JSON object is malformed (TRANSIENT); any other status
    without one is classified by the status alone, honouring Retry-After.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        doc = None
    if isinstance(doc, dict):
        return doc
    if status >= 500 or 200 <= status < 300:
        return malformed(status, f"HTTP {status} without a JSON object")
    return Reply(
        classify_status(status),
        status_code=status,
        detail=f"HTTP {status} without a JSON body",
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def accepted(status: int, message_id: object, what: str = "message id") -> Reply:
    """ACCEPTED with ``message_id``, or malformed when the answer carried none."""
    if not isinstance(message_id, str) or not message_id:
        return malformed(status, f"HTTP {status} without a {what}")
    return new_reply(Outcome.ACCEPTED, message_id, status)


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
_PHONE = re.compile(r"\+?[0-9]*")
# Plain words and spaces ("Your code is 123456"): quote_plus only turns the spaces to "+".
_WORDS = re.compile(r"[A-Za-z0-9_.~ -]*")


#: Field names, quoted (adapters use a handful; bounded all the same).
_QUOTED_KEYS: dict[str, str] = {}


def form_encode(data: Mapping[str, str]) -> str:
    """``application/x-www-form-urlencoded`` of ``data``, as ``urllib.parse.urlencode``
    writes it, in a fraction of the time: field names are quoted once and
    cached, and values that need no quoting (ids, digits, E.164 numbers) skip
    the general quoter, told apart by string methods before any regex.  A
    property test keeps it equal to ``urlencode``.
    """
    parts = []
    keys = _QUOTED_KEYS
    for key, value in data.items():
        if not value.isascii():
            value = quote_plus(value)
        elif value.isalnum():
            pass
        elif value[:1] == "+" and value[1:].isdigit():
            value = "%2B" + value[1:]
        elif _UNRESERVED.fullmatch(value):
            pass
        elif _PHONE.fullmatch(value):
            value = value.replace("+", "%2B")
        elif _WORDS.fullmatch(value):
            value = value.replace(" ", "+")
        else:
            value = quote_plus(value)
        quoted = keys.get(key)
        if quoted is None:
            quoted = quote_plus(key)
            if len(keys) < 512:
                keys[key] = quoted
        parts.append(f"{quoted}={value}")
    return "&".join(parts)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" and "1e400" are no number of seconds: a pause that would never end
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year or offset of 20 digits
        return None
    current = time.time() if now is None else now
    return max(0.0, when - current)


def classify_status(status: int) -> Outcome:
    """The outcome an HTTP status means when the body says nothing more specific.

    401/403 and 404 (a wrong account or endpoint) are AUTH: the provider is
    unusable as configured; 408 and 5xx are TRANSIENT; 429 THROTTLED; any other
    4xx means the provider refused this request as written: REJECTED.
    """
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status == 429:
        return Outcome.THROTTLED
    if status in (401, 403, 404):
        return Outcome.AUTH
    if status == 408 or status >= 500:
        return Outcome.TRANSIENT
    if 400 <= status < 500:
        return Outcome.REJECTED
    return Outcome.TRANSIENT


# -- webhook fields most providers write the same way ---------------------------------


def iso_time(value: object) -> datetime.datetime | None:
    """An ISO 8601 time from a webhook (``2019-08-24T14:15:22.123Z``,
    ``2020-01-01 12:00:00``), or None when absent or unreadable.  A time
    without an offset is UTC, which is what every provider here means by it.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def with_plus(number: str) -> str:
    """A number a provider wrote in international form without ``+``, with it back.

    Seven digits or more only: short codes (3 to 6 digits) and sender names
    stay as they are.
    """
    number = number.strip()
    return "+" + number if number.isdigit() and len(number) > 6 else number
