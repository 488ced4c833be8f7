"""SMPP binds: the transceiver sessions of one SMPP provider, and their window.

A :class:`Bind` is one TCP (or TLS) connection bound as a transceiver: it binds,
answers ``enquire_link`` and sends its own every ``enquire_link`` seconds
(closing the connection when the answer does not come within ``timeout``),
hands each ``deliver_sm`` to the provider, and after a drop or a refused bind
connects again after ``uniform(0.5, 1) * min(reconnect_max, reconnect_delay *
2**failures)`` seconds.  Requests in flight when the connection drops fail with
:class:`LinkLost` (the SMSC may have taken them).  :meth:`Bind.close` unbinds.

A :class:`BindPool` holds the binds and their window: at most ``window``
submit_sm awaiting an answer per bind, a request going to the bound session
with the most room, waiting for room when every window is full.  A cancelled
request gives its slot back.  A request is a command and its body (the
provider writes submit_sm bodies, :mod:`.smpp_pdu`): this module writes and
reads the 16-octet headers, and PDUs requested in one turn of the event loop
leave in one write.  The bind and the answers to the SMSC's requests are
aiosmpplib's classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
from collections.abc import Callable

import attrs
from aiosmpplib import (
    BindTransceiver,
    BindTransceiverResp,
    DeliverSmResp,
    EnquireLinkResp,
    GenericNack,
    PduHeader,
    SmppCommand,
    SmppCommandStatus,
    UnbindResp,
)

__all__ = [
    "BIND_UP",
    "BindPool",
    "BindRefused",
    "BindSettings",
    "LinkLost",
    "NoBind",
]

log = logging.getLogger("smsroute.providers.smpp")

BIND_UP, BIND_DOWN, BINDING = "up", "down", "binding"
_HEADER = struct.Struct("!IIII")
#: The largest PDU read: a message_payload of 64 KiB and a little more.
MAX_PDU = 2**16 + 1024
_RESP = 0x80000000
_ENQUIRE_LINK, _UNBIND, _DELIVER_SM = 0x15, 0x06, 0x05
_GENERIC_NACK = 0x80000000


class BindRefused(Exception):
    """The SMSC answered a bind with a command_status other than ESME_ROK."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused with command_status 0x{status:08X}")
        self.status = status


class LinkLost(Exception):
    """The connection dropped while a request awaited its answer: it may have been taken."""


class NoBind(Exception):
    """No bind is up: ``status`` is the last bind's refusal (None: no connection)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@attrs.frozen(slots=True)
class BindSettings:
    """Where and how to bind (``password`` never in a repr)."""

    host: str
    port: int
    system_id: str
    password: str = attrs.field(repr=False)
    system_type: str = ""
    tls: ssl.SSLContext | None = None
    enquire_link: float = 30.0
    timeout: float = 5.0
    reconnect_delay: float = 1.0
    reconnect_max: float = 60.0


#: What a bind hands the provider of each deliver_sm: the whole PDU; the answer is
#: the command_status of the deliver_sm_resp.
OnDeliver = Callable[[bytes, int], int]


class Bind:
    """One transceiver session, kept bound until :meth:`close`."""

    def __init__(
        self,
        settings: BindSettings,
        name: str,
        on_deliver: OnDeliver,
        on_tick: Callable[[], None],
        on_change: Callable[[], None],
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.name = name
        self.state = BIND_DOWN
        #: The command_status of the last refused bind (None: none refused since the last bind).
        self.refused: int | None = None
        self.detail = "not connected yet"
        self.in_flight = 0
        self._on_deliver = on_deliver
        self._on_tick = on_tick
        self._on_change = on_change
        self._rng = rng
        self._writer: asyncio.StreamWriter | None = None
        #: PDUs requested in this turn of the loop, written together by :meth:`_flush`.
        self._out: list[bytes] = []
        self._pending: dict[int, asyncio.Future[tuple[int, int, bytes]]] = {}
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Set once the first bind attempt has ended, bound or not.
        self.tried = asyncio.Event()

    def start(self) -> None:
        """Connect and bind in the background, and again after every drop."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.create_task(self._run(), name=f"smpp-bind-{self.name}")

    def _next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def _set(self, state: str, detail: str) -> None:
        self.state, self.detail = state, detail
        self._on_change()

    async def _run(self) -> None:
        failures = 0
        s = self.settings
        while not self._closing:
            try:
                reader, writer = await self._connect()
            except BindRefused as exc:
                self.refused = exc.status
                self._set(BIND_DOWN, str(exc))
                log.error("SMPP %s: %s", self.name, exc)
            except ssl.SSLError as exc:
                self._set(BIND_DOWN, _tls_problem(exc))
                log.error("SMPP %s: %s:%d: %s", self.name, s.host, s.port, self.detail)
            except TimeoutError:
                tls = " (tls is on: does this port speak TLS?)" if s.tls is not None else ""
                self._set(BIND_DOWN, f"cannot bind: no answer within {s.timeout:g}s{tls}")
                log.warning("SMPP %s: %s:%d: %s", self.name, s.host, s.port, self.detail)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self._set(BIND_DOWN, f"cannot bind: {type(exc).__name__}")
                log.warning("SMPP %s: cannot bind to %s:%d: %s", self.name, s.host, s.port, exc)
            else:
                failures = 0
                self.refused = None
                self._writer = writer
                self._set(BIND_UP, "bound")
                self.tried.set()
                log.info("SMPP %s: bound to %s:%d", self.name, s.host, s.port)
                try:
                    await self._serve(reader, writer)
                except Exception:  # a bug must not end the bind for good (nor leave it "up")
                    log.exception("SMPP %s: reading from the bind failed", self.name)
                if self._closing:
                    return
                self._set(BIND_DOWN, "connection lost")
                log.warning("SMPP %s: connection lost; binding again", self.name)
            self.tried.set()
            delay = min(s.reconnect_max, s.reconnect_delay * 2**failures)
            failures = min(failures + 1, 30)
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        s = self.settings
        self._set(BINDING, "binding")
        async with asyncio.timeout(s.timeout):
            reader, writer = await asyncio.open_connection(s.host, s.port, ssl=s.tls, limit=MAX_PDU)
            try:
                seq = self._next_seq()
                writer.write(
                    BindTransceiver(
                        sequence_num=seq,
                        system_id=s.system_id,
                        password=s.password,
                        system_type=s.system_type,
                    ).pdu()
                )
                while True:
                    command, status, got, pdu = await _read_pdu(reader)
                    if command in (0x80000009, _GENERIC_NACK) and got == seq:
                        break
                if status != 0:
                    raise BindRefused(status)
                if command == 0x80000009:
                    BindTransceiverResp.from_pdu(pdu, _header(pdu))  # the library checks it
                return reader, writer
            except BaseException:
                writer.close()
                raise

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        keepalive = asyncio.create_task(self._keepalive(writer))
        try:
            while True:
                command, status, seq, pdu = await _read_pdu(reader)
                if command & _RESP:
                    waiter = self._pending.get(seq)
                    if waiter is not None and not waiter.done():
                        waiter.set_result((command, status, pdu))
                    continue
                if command == _DELIVER_SM:
                    answer = self._on_deliver(pdu, seq)
                    writer.write(
                        DeliverSmResp(
                            sequence_num=seq, command_status=SmppCommandStatus(answer)
                        ).pdu()
                    )
                elif command == _ENQUIRE_LINK:
                    writer.write(EnquireLinkResp(sequence_num=seq).pdu())
                elif command == _UNBIND:
                    writer.write(UnbindResp(sequence_num=seq).pdu())
                    return
                else:
                    writer.write(
                        GenericNack(
                            sequence_num=seq, command_status=SmppCommandStatus.ESME_RINVCMDID
                        ).pdu()
                    )
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
            return
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            self._writer = None
            self._out.clear()
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(LinkLost("connection lost"))
            self._pending.clear()
            writer.close()

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.enquire_link)
            self._on_tick()
            try:
                await self.request(_ENQUIRE_LINK, within=s.timeout)
            except (TimeoutError, LinkLost, OSError):
                log.warning("SMPP %s: no answer to enquire_link; reconnecting", self.name)
                writer.close()
                return

    async def request(
        self,
        command: int,
        body: bytes = b"",
        within: float | None = None,
        *,
        whole: Callable[[int], bytes] | None = None,
    ) -> tuple[int, int, bytes]:
        """Send a PDU (``command`` with ``body``, or ``whole(sequence_number)``, the
        whole PDU); its answer (command, status, PDU).

        PDUs sent in one turn of the event loop leave in one write.
        :class:`LinkLost` when the connection drops first; cancellation (or
        ``within`` seconds passing) forgets the request, and a late answer is dropped.
        """
        writer = self._writer
        if writer is None:
            raise LinkLost("not bound")
        seq = self._next_seq()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, int, bytes]] = loop.create_future()
        self._pending[seq] = waiter
        try:
            out = self._out
            out.append(whole(seq) if whole is not None else _pdu(command, seq, body))
            if len(out) == 1:
                loop.call_soon(self._flush, writer)
            elif writer.transport.get_write_buffer_size() > 2**16:
                await writer.drain()
            if within is None:
                return await waiter
            async with asyncio.timeout(within):
                return await waiter
        finally:
            self._pending.pop(seq, None)

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        """Write the PDUs requests queued in this turn of the loop, as one write."""
        out = self._out
        if writer is not self._writer:
            return  # the connection dropped: its PDUs went with it (see _serve)
        if out:
            writer.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    async def close(self) -> None:
        """Unbind (waiting ``timeout`` at most for the answer) and stop reconnecting."""
        self._closing = True
        if self._writer is not None and self.state == BIND_UP:
            with contextlib.suppress(TimeoutError, LinkLost, OSError):
                await self.request(_UNBIND, within=self.settings.timeout)
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._set(BIND_DOWN, "closed")


def _tls_problem(exc: ssl.SSLError) -> str:
    """A TLS failure in words, with what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the SMSC's certificate is not trusted ({exc.verify_message}): "
            "give the CA that signed it as tls: {ca: path}"
        )
    return f"TLS handshake failed ({exc.reason or type(exc).__name__}): is the port TLS?"


def _header(pdu: bytes) -> PduHeader:
    length, command, _, seq = _HEADER.unpack_from(pdu)
    return PduHeader(length, SmppCommand(command), SmppCommandStatus.ESME_ROK, seq)


def _pdu(command: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(16 + len(body), command, 0, seq) + body


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """(command_id, command_status, sequence_number, whole PDU); ValueError when framing breaks."""
    head = await reader.readexactly(16)
    length, command, status, seq = _HEADER.unpack(head)
    if not 16 <= length <= MAX_PDU:
        raise ValueError(f"PDU length {length} out of range")
    return command, status, seq, head + await reader.readexactly(length - 16)


class BindPool:
    """The binds of one provider and their shared window (``window`` per bind)."""

    def __init__(self, binds: list[Bind], window: int) -> None:
        self.binds = binds
        self.window = window
        #: Senders waiting for room (or for a bind to come up or go down).
        self._waiters: list[asyncio.Future[None]] = []

    def changed(self) -> None:
        """A bind came up or went down, or a full window has room: wake the waiting senders."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _pick(self) -> Bind | None:
        best: Bind | None = None
        for bind in self.binds:
            if (
                bind.state == BIND_UP
                and bind.in_flight < self.window
                and (best is None or bind.in_flight < best.in_flight)
            ):
                best = bind
        return best

    def _none_up(self) -> NoBind | None:
        up = [b for b in self.binds if b.state == BIND_UP]
        if up:
            return None
        refused = next((b.refused for b in self.binds if b.refused is not None), None)
        return NoBind(refused, "; ".join(sorted({b.detail for b in self.binds})))

    async def acquire(self) -> Bind:
        """A bind with room in its window, one slot of it taken: give it back with
        :meth:`release`.

        :class:`NoBind` at once when no bind is up; otherwise waits for room
        (the router's timeout bounds the wait; a cancelled wait takes nothing).
        """
        bind = self._pick()
        while bind is None:
            missing = self._none_up()
            if missing is not None:
                raise missing
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
            bind = self._pick()
        bind.in_flight += 1
        return bind

    def release(self, bind: Bind) -> None:
        """Give back the slot :meth:`acquire` took on ``bind``."""
        bind.in_flight -= 1
        if self._waiters and bind.in_flight == self.window - 1:
            self.changed()

    @property
    def occupancy(self) -> int:
        """Requests awaiting an answer, over every bind."""
        return sum(b.in_flight for b in self.binds)
