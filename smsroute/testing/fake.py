"""The machinery every fake provider shares: a real aiohttp server on 127.0.0.1,
a record of what it received, and a script of faults.

A fake is used like this (``FakeTwilio`` shown; every fake has the same script)::

    async with FakeTwilio() as fake:
        config = {... "base_url": fake.url, "account_sid": fake.account_sid, ...}
        fake.fail(503, times=2)      # the next two requests get 503
        fake.hang()                   # then every request hangs...
        fake.heal()                   # ...until healed
        assert len(fake.messages) == 1

Faults apply in the order they were scripted; the first one that matches a
request (by ``country`` when given) takes it and uses up one of its ``times``.
``latency`` delays every answer and is not used up.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
import attrs
import phonenumbers
from aiohttp import web


@attrs.frozen(slots=True)
class ReceivedMessage:
    """A message a fake accepted, as it arrived on the wire."""

    provider_message_id: str
    to: str
    sender: str | None
    text: str
    fields: Mapping[str, Any]
    received_at: float  # time.monotonic() when accepted
    status_callback: str | None = None


@attrs.define(slots=True)
class Fault:
    """One scripted fault: ``kind`` is fail, hang, drop, throttle or garbage."""

    kind: str
    status: int = 0
    code: Any = None
    retry_after: float | None = None
    times: int | None = None
    country: str | None = None


@attrs.frozen(slots=True)
class Incoming:
    """A request as a fake read it, before any check: the raw fields and the destination."""

    fields: Mapping[str, Any]
    to: str | None


def country_of(number: str | None) -> str | None:
    """ISO country of an E.164 number, or None when it cannot be told."""
    if not number:
        return None
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None


class FakeProvider(abc.ABC):
    """Base class of the fake provider servers in :mod:`smsroute.testing`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        #: Every message the fake accepted, in order.
        self.messages: list[ReceivedMessage] = []
        #: How many requests reached the send endpoint, faults included.
        self.requests = 0
        #: Requests being handled right now, and the most there ever were at once.
        self.in_flight = 0
        self.peak_in_flight = 0
        self._faults: list[Fault] = []
        self._latency = 0.0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._counter = 0
        #: (status, error code, delay, before answer) of the receipt for each accepted message.
        self._receipt_plan: tuple[str, Any, float, bool] | None = None
        #: Every receipt the fake sent: (provider message id, our status, HTTP answer).
        self.receipts_sent: list[tuple[str, str, int]] = []
        self._client: aiohttp.ClientSession | None = None
        self._receipt_sent = asyncio.Event()
        self._requested = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Numbers (E.164) that opted out at the provider: see :meth:`opt_out`.
        self.opted_out: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to put in the provider's ``base_url``."""
        if self._runner is None:
            raise RuntimeError("the fake is not started: use 'async with' or await start()")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host``:``port`` (a free port when 0)."""
        app = web.Application(client_max_size=1024**2)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server):
            raise RuntimeError("aiohttp did not start a TCP server")
        self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening; hung requests are released, pending receipts dropped."""
        self._release.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the fault script --------------------------------------------------------------

    def fail(
        self, status: int, code: Any = None, times: int | None = None, *, country: str | None = None
    ) -> None:
        """Answer ``status`` with the provider's error body for ``code`` (or its usual code)."""
        self._faults.append(Fault("fail", status=status, code=code, times=times, country=country))

    def hang(self, times: int | None = None, *, country: str | None = None) -> None:
        """Never answer (until :meth:`heal` or the client gives up)."""
        self._faults.append(Fault("hang", times=times, country=country))

    def stall(self, times: int | None = None, *, country: str | None = None) -> None:
        """Send the status line, headers and half the body, then nothing more (until :meth:`heal`)."""
        self._faults.append(Fault("stall", times=times, country=country))

    def drop(self, times: int | None = None, *, country: str | None = None) -> None:
        """Close the connection without answering."""
        self._faults.append(Fault("drop", times=times, country=country))

    def throttle(
        self, retry_after: float = 1.0, times: int | None = None, *, country: str | None = None
    ) -> None:
        """Answer 429 with ``Retry-After`` and the provider's throttling body."""
        self._faults.append(
            Fault("throttle", status=429, retry_after=retry_after, times=times, country=country)
        )

    def garbage(self, times: int | None = None, *, country: str | None = None) -> None:
        """Answer 200 with a body that is not the provider's format."""
        self._faults.append(Fault("garbage", status=200, times=times, country=country))

    def opt_out(self, number: str) -> None:
        """Answer every message to ``number`` (E.164) with the provider's own "recipient
        opted out" error (Twilio 21610, Telnyx 40300, Infobip REJECTED_DESTINATION_BLOCKLISTED),
        as when the recipient replied STOP to the provider; :meth:`heal` does not undo it."""
        if type(self).opt_out_response is FakeProvider.opt_out_response:
            raise NotImplementedError(
                f"{type(self).__name__}: the provider has no documented opted-out answer at send time"
            )
        self.opted_out.add(number)

    def latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds``."""
        self._latency = seconds

    def heal(self) -> None:
        """Remove every fault and the latency; release hung requests."""
        self._faults.clear()
        self._latency = 0.0
        self._release.set()
        self._release = asyncio.Event()

    def _take_fault(self, incoming: Incoming) -> Fault | None:
        country = None
        for fault in self._faults:
            if fault.country is not None:
                if country is None:
                    country = country_of(incoming.to) or "?"
                if fault.country != country:
                    continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    # -- delivery receipts and inbound messages ------------------------------------------

    def receipts(
        self,
        outcome: str = "delivered",
        *,
        error_code: Any = None,
        delay: float = 0.0,
        before_answer: bool = False,
    ) -> None:
        """After accepting a message that has a status callback, call it back.

        ``outcome`` is ``delivered``, ``undelivered``, ``failed``, ``opted_out``
        (the provider's receipt saying the recipient opted out: Vonage err-code 9,
        Plivo 200, Bandwidth 4775, ...; :meth:`opt_out_receipt`) or ``never``
        (the silent provider: accepts, never reports).  The receipt is the
        provider's real payload, signed as the provider signs it.  With
        ``before_answer`` the receipt is delivered before the send is answered,
        as happens when a provider's callback beats its own HTTP response.
        Off until called: a fake never calls a URL a test did not ask it to.
        """
        if outcome not in ("delivered", "undelivered", "failed", "opted_out", "never"):
            raise ValueError(f"unknown receipt outcome {outcome!r}")
        if type(self).receipt_request is FakeProvider.receipt_request:
            raise NotImplementedError(f"{type(self).__name__} does not send receipts yet")
        if outcome == "opted_out":
            opt_out = self.opt_out_receipt()
            if opt_out is None:
                raise NotImplementedError(
                    f"{type(self).__name__}: the provider has no documented opted-out receipt"
                )
            outcome, default_code = opt_out
            error_code = default_code if error_code is None else error_code
        self._receipt_plan = (
            None if outcome == "never" else (outcome, error_code, delay, before_answer)
        )

    async def wait_receipts(self, count: int) -> None:
        """Wait until ``count`` receipts were sent and answered.

        Wrap it in ``asyncio.timeout(...)``: a receipt that never comes never ends it.
        """
        while len(self.receipts_sent) < count:
            self._receipt_sent.clear()
            await self._receipt_sent.wait()

    async def wait_requests(self, count: int) -> None:
        """Wait until ``count`` send requests have arrived (answered or not).

        Wrap it in ``asyncio.timeout(...)``: a request that never comes never ends it.
        """
        while self.requests < count:
            self._requested.clear()
            await self._requested.wait()

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """(status, error code) of the provider's receipt for a recipient who opted
        out, as :meth:`receipts` takes them; None when the provider documents none."""
        return None

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        """(method, url, headers, body) of the provider's receipt for ``record``."""
        raise NotImplementedError(f"{type(self).__name__} does not send receipts yet")

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        """(method, url, headers, body) of the provider's inbound-message webhook."""
        raise NotImplementedError(f"{type(self).__name__} does not send inbound messages yet")

    async def send_inbound(self, url: str, *, sender: str, recipient: str, text: str) -> int:
        """Deliver an inbound message to ``url`` as the provider would; returns the HTTP status."""
        method, target, headers, body = self.inbound_request(url, sender, recipient, text)
        return await self._call(method, target, headers, body)

    async def send_receipt(
        self, record: ReceivedMessage, status: str, error_code: Any = None
    ) -> int:
        """Send one receipt for ``record`` now; returns the HTTP status it got."""
        method, url, headers, body = self.receipt_request(record, status, error_code)
        try:
            answer = await self._call(method, url, headers, body)
        except (aiohttp.ClientError, OSError, TimeoutError):
            answer = 0  # nobody listening: recorded as 0
        self.receipts_sent.append((record.provider_message_id, status, answer))
        self._receipt_sent.set()
        return answer

    async def _call(self, method: str, url: str, headers: dict[str, str], body: bytes) -> int:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._client.request(method, url, headers=headers, data=body) as resp:
            await resp.read()
            return resp.status

    def _schedule_receipt(self, record: ReceivedMessage) -> None:
        plan = self._receipt_plan
        if plan is None or not record.status_callback or plan[3]:
            return
        status, code, delay, _ = plan

        async def later() -> None:
            if delay:
                await asyncio.sleep(delay)
            await self.send_receipt(record, status, code)

        task = asyncio.ensure_future(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what a subclass provides ------------------------------------------------------

    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the provider's endpoints; the send endpoint calls :meth:`handle_send`."""

    @abc.abstractmethod
    async def read(self, request: web.Request) -> Incoming:
        """Read the request's fields and destination, checking nothing yet."""

    @abc.abstractmethod
    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        """Auth and field checks as the provider does them: an error answer, or None."""

    @abc.abstractmethod
    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        """The provider's success answer and the record of the accepted message."""

    @abc.abstractmethod
    def error_response(self, status: int, code: Any) -> web.Response:
        """The provider's error answer for HTTP ``status`` and error ``code`` (None: usual)."""

    def throttle_response(self, retry_after: float | None) -> web.Response:
        """The provider's answer when throttling (a 429 with Retry-After by default)."""
        resp = self.error_response(429, None)
        if retry_after is not None:
            resp.headers["Retry-After"] = f"{retry_after:g}"
        return resp

    def opt_out_response(self, incoming: Incoming) -> web.Response:
        """The provider's answer to a message for a number that opted out (see :meth:`opt_out`)."""
        raise NotImplementedError(f"{type(self).__name__} has no opted-out answer")

    def garbage_response(self) -> web.Response:
        """A 200 answer no client can parse."""
        return web.Response(
            status=200, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )

    def new_message_id(self) -> str:
        """A fresh provider message id (subclasses give it the provider's shape)."""
        self._counter += 1
        return f"{self._counter:032x}"

    # -- the request path -----------------------------------------------------------------

    async def handle_send(self, request: web.Request) -> web.StreamResponse:
        """Read, apply latency and faults, check, accept: in that order."""
        self.requests += 1
        self._requested.set()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        incoming = await self.read(request)
        if self._latency:
            await asyncio.sleep(self._latency)
        fault = self._take_fault(incoming)
        if fault is not None:
            if fault.kind == "hang":
                await self._release.wait()
                return self.error_response(503, None)
            if fault.kind == "stall":
                stalled = web.StreamResponse(
                    status=200, headers={"Content-Type": "application/json"}
                )
                stalled.content_length = 64
                await stalled.prepare(request)
                await stalled.write(b'{"sid": "')
                await self._release.wait()
                return stalled
            if fault.kind == "drop":
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError
            if fault.kind == "throttle":
                return self.throttle_response(fault.retry_after)
            if fault.kind == "garbage":
                return self.garbage_response()
            return self.error_response(fault.status, fault.code)
        refusal = self.check(request, incoming)
        if refusal is not None:
            return refusal
        if self.opted_out and incoming.to is not None:
            to = incoming.to if incoming.to.startswith("+") else f"+{incoming.to}"
            if to in self.opted_out:
                return self.opt_out_response(incoming)
        response, record = self.accept(request, incoming, self.new_message_id())
        self.messages.append(record)
        plan = self._receipt_plan
        if plan is not None and plan[3] and record.status_callback:
            await self.send_receipt(record, plan[0], plan[1])  # the callback beats the answer
        else:
            self._schedule_receipt(record)
        return response

    @staticmethod
    def now() -> float:
        """The timestamp recorded on accepted messages."""
        return time.monotonic()
