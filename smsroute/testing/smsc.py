"""``FakeSMSC``: a real SMPP 3.4 server on 127.0.0.1 with the fakes' fault script.

    async with FakeSMSC() as smsc:
        config = {"type": "smpp", "host": smsc.host, "port": smsc.port,
                  "system_id": smsc.system_id, "password": smsc.password}
        smsc.fail(0x0B, times=1)        # the next submit_sm: ESME_RINVDSTADR
        smsc.throttle()                 # then ESME_RTHROTTLED until healed
        smsc.heal()
        smsc.receipts("DELIVRD", delay=0.1)   # a deliver_sm receipt after each message
        await smsc.send_inbound("+4915123456789", "STOP")
        smsc.messages[0].text           # parts put back together

Faults, in the order scripted, each used up per submit_sm (``times=None``: until
:meth:`heal`): ``fail(command_status)``, ``throttle()``, ``hang()`` (no answer),
``drop()`` (the connection is closed instead of an answer); ``refuse_bind()``
answers binds with an error; ``latency()`` delays every answer.  ``tls=`` (a
server-side :class:`ssl.SSLContext`) serves SMPP over TLS.  PDUs are
aiosmpplib's classes; install ``smsroute[smpp]``.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import ssl
import struct
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import attrs
from aiosmpplib import (
    BindTransceiverResp,
    DeliverSm,
    EnquireLinkResp,
    GenericNack,
    OptionalParam,
    PhoneNumber,
    SmppCommand,
    SmppCommandStatus,
    SubmitSm,
    SubmitSmResp,
    UnbindResp,
)
from aiosmpplib.protocol import PduHeader
from aiosmpplib.state import (
    MESSAGE_STATE,
    NPI,
    RECEIPTED_MESSAGE_ID,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
    TON,
)
from aiosmpplib.utils import split_sms_udh

from smsroute.encoding import analyze

__all__ = ["FakeSMSC", "SmscFault", "SmscMessage"]

_HEADER = struct.Struct("!IIII")
_STATES = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6, "REJECTD": 8}
THROTTLED, BIND_FAIL = 0x58, 0x0D


@attrs.frozen(slots=True)
class SmscMessage:
    """A message the fake accepted, its parts put back together."""

    to: str
    sender: str
    text: str
    message_ids: tuple[str, ...]
    data_coding: int
    esm_class: int
    registered_delivery: int
    source_ton: int
    source_npi: int
    dest_ton: int
    dest_npi: int


@attrs.define(slots=True)
class SmscFault:
    """One scripted fault: ``kind`` is fail, hang, drop or refuse_bind."""

    kind: str
    status: int = 0
    times: int | None = None


@attrs.define(slots=True)
class _Session:
    writer: asyncio.StreamWriter
    bound: bool = False


class FakeSMSC:
    """An SMSC on 127.0.0.1 (a free port unless given) that binds ``system_id``/``password``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        system_id: str = "smsroute",
        password: str = "secret",
        id_format: str = "hex",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        #: A server-side TLS context: the fake then speaks SMPP over TLS only.
        self.tls = tls
        self.system_id, self.password = system_id, password
        #: How message ids are written: ``hex`` (submit_sm_resp) and receipts in ``receipt_format``.
        self.id_format = id_format
        #: Every message accepted, parts put back together.
        self.messages: list[SmscMessage] = []
        #: Every submit_sm that arrived (aiosmpplib SubmitSm), faults included.
        self.submits: list[Any] = []
        self.binds = 0
        self.unbinds = 0
        self.enquire_links = 0
        #: The command_status of each deliver_sm_resp, in order.
        self.deliver_answers: list[int] = []
        self.peak_in_flight = 0
        self._in_flight = 0
        self._faults: list[SmscFault] = []
        self._latency = 0.0
        self._receipt: tuple[str, float, str, bool, str, bytes] | None = None
        self._sessions: list[_Session] = []
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(0x5A000001)
        self._parts: dict[tuple[str, str, int, int], dict[int, SubmitSm]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()
        self._delivered = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (a free port when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every session and stop listening."""
        self._release.set()
        for task in list(self._tasks):
            task.cancel()
        await self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def bound_sessions(self) -> int:
        """Sessions bound right now."""
        return sum(1 for s in self._sessions if s.bound)

    async def drop_all(self) -> None:
        """Close every connection at once (the binds see a drop)."""
        for session in list(self._sessions):
            session.writer.close()
        self._sessions.clear()

    # -- the fault script ---------------------------------------------------------------

    def fail(self, command_status: int, times: int | None = 1) -> None:
        """Answer submit_sm with ``command_status``."""
        self._faults.append(SmscFault("fail", command_status, times))

    def throttle(self, times: int | None = None) -> None:
        """Answer submit_sm with ESME_RTHROTTLED."""
        self.fail(THROTTLED, times)

    def hang(self, times: int | None = None) -> None:
        """Never answer submit_sm (until :meth:`heal`)."""
        self._release.clear()
        self._faults.append(SmscFault("hang", times=times))

    def drop(self, times: int | None = 1) -> None:
        """Close the connection when a submit_sm arrives, without an answer."""
        self._faults.append(SmscFault("drop", times=times))

    def refuse_bind(self, command_status: int = BIND_FAIL, times: int | None = None) -> None:
        """Answer bind_transceiver with ``command_status`` (ESME_RBINDFAIL by default)."""
        self._faults.append(SmscFault("refuse_bind", command_status, times))

    def latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (not used up)."""
        self._latency = seconds

    def heal(self) -> None:
        """Forget every fault and the latency; hung submit_sm stay unanswered."""
        self._faults.clear()
        self._latency = 0.0
        self._release.set()

    def receipts(
        self,
        stat: str = "DELIVRD",
        *,
        delay: float = 0.0,
        err: str = "000",
        tlvs: bool = True,
        id_format: str = "same",
        vendor_tlvs: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Send a delivery receipt (deliver_sm) ``delay`` seconds after each accepted part.

        ``stat`` is the final state (DELIVRD, UNDELIV, EXPIRED, REJECTD...);
        ``tlvs`` adds receipted_message_id and message_state; ``id_format``
        writes the id as answered (``same``), in ``decimal`` or ``upper`` case;
        ``vendor_tlvs`` are (tag, value) TLVs added after those, as written, such
        as the binary vendor-specific ones (tags 0x1400-0x3FFF) SMSCs add.
        """
        extra = b"".join(struct.pack("!HH", tag, len(value)) + value for tag, value in vendor_tlvs)
        self._receipt = (stat, delay, err, tlvs, id_format, extra)

    def no_receipts(self) -> None:
        """Stop sending receipts."""
        self._receipt = None

    def _take(self, kinds: tuple[str, ...]) -> SmscFault | None:
        for fault in self._faults:
            if fault.kind in kinds:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- serving ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        self._sessions.append(session)
        try:
            while True:
                head = await reader.readexactly(16)
                length, command, _, seq = _HEADER.unpack(head)
                pdu = head + await reader.readexactly(length - 16)
                if command == SmppCommand.BIND_TRANSCEIVER:
                    fault = self._take(("refuse_bind",))
                    status = fault.status if fault is not None else 0
                    if status == 0 and pdu[16:].split(b"\x00")[:2] != [
                        self.system_id.encode(),
                        self.password.encode(),
                    ]:
                        status = 0x0E  # ESME_RINVPASWD
                    writer.write(
                        BindTransceiverResp(
                            sequence_num=seq,
                            command_status=SmppCommandStatus(status),
                            system_id="FakeSMSC",
                        ).pdu()
                    )
                    if status == 0:
                        session.bound = True
                        self.binds += 1
                elif command == SmppCommand.SUBMIT_SM:
                    self._spawn(self._submit(session, pdu, seq))
                elif command == SmppCommand.ENQUIRE_LINK:
                    self.enquire_links += 1
                    writer.write(EnquireLinkResp(sequence_num=seq).pdu())
                elif command == SmppCommand.UNBIND:
                    self.unbinds += 1
                    writer.write(UnbindResp(sequence_num=seq).pdu())
                    await writer.drain()
                    break
                elif command == SmppCommand.DELIVER_SM_RESP:
                    self.deliver_answers.append(_HEADER.unpack_from(pdu)[2])
                    self._delivered.set()
                elif not command & 0x80000000:
                    writer.write(
                        GenericNack(
                            sequence_num=seq, command_status=SmppCommandStatus.ESME_RINVCMDID
                        ).pdu()
                    )
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            session.bound = False
            if session in self._sessions:
                self._sessions.remove(session)
            writer.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, session: _Session, pdu: bytes, seq: int) -> None:
        submit = SubmitSm.from_pdu(pdu, _header(pdu), "gsm0338")
        self.submits.append(submit)
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            fault = self._take(("fail", "hang", "drop"))
            if self._latency:
                await asyncio.sleep(self._latency)
            if fault is not None and fault.kind == "hang":
                await self._release.wait()
                return
            if fault is not None and fault.kind == "drop":
                session.writer.close()
                return
            if fault is not None:
                status = SmppCommandStatus(fault.status)
                session.writer.write(SubmitSmResp(sequence_num=seq, command_status=status).pdu())
                return
            message_id = format(next(self._ids), "x")
            session.writer.write(SubmitSmResp(sequence_num=seq, message_id=message_id).pdu())
            self._record(submit, message_id)
            if self._receipt is not None:
                self._spawn(self._send_receipt(session, submit, message_id))
        finally:
            self._in_flight -= 1

    def _record(self, submit: Any, message_id: str) -> None:
        params = {p.tag: p.value for p in submit.optional_params or ()}
        total = int(params.get(SAR_TOTAL_SEGMENTS, 1))
        if total > 1:
            key = (
                submit.source.number,
                submit.destination.number,
                int(params.get(SAR_MSG_REF_NUM, 0)),
                total,
            )
            parts = self._parts.setdefault(key, {})
            parts[int(params.get(SAR_SEGMENT_SEQNUM, 1))] = submit
            submit.log_id = message_id
            if len(parts) < total:
                return
            del self._parts[key]
            ordered = [parts[n] for n in sorted(parts)]
        else:
            submit.log_id = message_id
            ordered = [submit]
        first = ordered[0]
        self.messages.append(
            SmscMessage(
                to=first.destination.number,
                sender=first.source.number,
                text="".join(p.short_message or p.message_payload for p in ordered),
                message_ids=tuple(p.log_id for p in ordered),
                data_coding=_coding(pdu_encoding=first.encoding),
                esm_class=first.esm_class,
                registered_delivery=first.registered_delivery,
                source_ton=int(first.source.ton),
                source_npi=int(first.source.npi),
                dest_ton=int(first.destination.ton),
                dest_npi=int(first.destination.npi),
            )
        )

    async def _send_receipt(self, session: _Session, submit: Any, message_id: str) -> None:
        assert self._receipt is not None
        stat, delay, err, tlvs, id_format, extra = self._receipt
        if delay:
            await asyncio.sleep(delay)
        written = {
            "decimal": str(int(message_id, 16)),
            "upper": message_id.upper(),
        }.get(id_format, message_id)
        now = datetime.datetime.now(datetime.UTC).strftime("%y%m%d%H%M")
        text = (
            f"id:{written} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{now} done date:{now} stat:{stat} err:{err} text:"
        )
        params = (
            [
                OptionalParam(RECEIPTED_MESSAGE_ID, written),
                OptionalParam(MESSAGE_STATE, _STATES.get(stat, 7)),
            ]
            if tlvs
            else []
        )
        receipt = DeliverSm(
            short_message=text,
            source=submit.destination,
            destination=submit.source,
            esm_class=0x04,
            registered_delivery=0,
            optional_params=params,
        )
        await self.deliver(receipt, session, tlvs=extra)

    async def deliver(
        self, message: Any, session: _Session | None = None, *, tlvs: bytes = b""
    ) -> None:
        """Send one deliver_sm (an aiosmpplib DeliverSm) on ``session`` or the first bound
        one, with the TLV octets ``tlvs`` added at its end."""
        target = session if session is not None and session.bound else None
        if target is None:
            target = next((s for s in self._sessions if s.bound), None)
        if target is None:
            raise RuntimeError("no bound session to deliver to")
        message.sequence_num = next(self._ids) & 0x7FFFFFFF
        pdu = message.pdu()
        if tlvs:
            pdu = struct.pack("!I", len(pdu) + len(tlvs)) + pdu[4:] + tlvs
        target.writer.write(pdu)
        await target.writer.drain()

    async def send_inbound(
        self, sender: str, text: str, *, recipient: str = "12345", ref: int | None = None
    ) -> int:
        """Deliver an inbound message from ``sender`` (E.164), split with aiosmpplib's UDH
        splitter when long (``ref`` over 255: a 16-bit reference); returns the parts sent."""
        ucs2 = analyze(text).encoding == "UCS-2"
        source = PhoneNumber(sender.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN)
        destination = PhoneNumber(recipient, TON.UNKNOWN, NPI.ISDN)
        encoding = "ucs2" if ucs2 else None
        parts = split_sms_udh(text, "ucs2" if ucs2 else "gsm0338", ref)
        if len(parts) == 1:
            await self.deliver(
                DeliverSm(
                    short_message=text, source=source, destination=destination, encoding=encoding
                )
            )
            return 1
        for data in parts:
            message = DeliverSm(
                short_message=" ",
                source=source,
                destination=destination,
                esm_class=0x40,
                encoding=encoding,
            )
            message.set_encoded_message(data)
            await self.deliver(message)
        return len(parts)

    async def answered(self, count: int) -> None:
        """Wait until ``count`` deliver_sm have been answered."""
        while len(self.deliver_answers) < count:
            self._delivered.clear()
            await self._delivered.wait()


def _coding(pdu_encoding: str | None) -> int:
    return {"ucs2": 8, "latin_1": 3, "ascii": 1}.get(pdu_encoding or "", 0)


def _header(pdu: bytes) -> PduHeader:
    length, command, _, seq = _HEADER.unpack_from(pdu)
    return PduHeader(length, SmppCommand(command), SmppCommandStatus.ESME_ROK, seq)
