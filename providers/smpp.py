"""SMPP 3.4: bind straight to an SMSC (``type: smpp``).

Which library
-------------
The PDUs are aiosmpplib's (0.7.4, pure Python, asyncio; ``pip install
'smsroute[smpp]'``): every class encodes and decodes itself, with its
GSM 03.38 and UCS-2 codecs, its TLV table and its command_status names.  The
binds, window, keepalive and reconnection are ours (:mod:`.smpp_session`).
The other candidate, smpp34 1.5.0 (a Rust/tokio core behind an asyncio
bridge), was measured and read first:

==================  ==========================================  ==========================================
                    smpp34 1.5.0                                aiosmpplib 0.7.4
==================  ==========================================  ==========================================
PDU coverage        all of 3.4, typed submit_sm/deliver_sm,     bind*, submit_sm, deliver_sm, enquire_link,
                    TLVs as raw bytes, other PDUs as RawPdu     unbind, generic_nack (+ resps), TLVs typed;
                    (no Python encoder for the responses)       no data_sm/query_sm (not needed here)
bind failures       a refused bind (ESME_RINVPASWD) surfaces    the bind_resp's command_status is read:
                    as "bind timed out" after connect_timeout:  AUTH can be told from a network fault
                    the status is lost
session control     enquire_link, response timers and CA not    none forced on us: the session is ours
                    reachable from Python; window in the core   (enquire_link, window, TLS with a CA file)
stability           segfaulted at interpreter exit in 2 of 6    pure Python: no crash possible in the codec
                    runs after a dropped connection
speed (this box)    336k submit_sm encode+decode/s; 2.4k        22k submit_sm encode+decode/s (far above
                    round trips/s with its own server           any per-bind carrier limit)
maintenance         released 2026-10, one vendor                released 2026-05, one maintainer, typed
==================  ==========================================  ==========================================

smpp34 is faster, but it hides what decides an outcome (a bind's status), does
not let us set the keepalive or a CA, and crashed the interpreter; speed is
not what limits an SMPP bind (carriers cap each bind far below 20k/s).
aiosmpplib's ESME class is not used either: it sends from a queue and reports
through hooks, with no answer to await per message and no window.  Three
library defects are worked around here: a 16-bit UDH reference is misread
(:func:`.smpp_codec.udh_parts`), its splitter counts extension characters
as one septet (:func:`.smpp_codec.split` follows :mod:`smsroute.encoding`), and
a binary vendor-specific TLV makes a whole deliver_sm unreadable
(:func:`.smpp_pdu.readable_deliver_sm` leaves such TLVs out).  On the send
path, the submit_sm bodies carrying ``short_message`` are written directly
(:func:`.smpp_pdu.submit_sm`, the same octets as aiosmpplib's ``SubmitSm``, at a
fraction of its cost: ``bench/RESULTS.md``, SMPP section); ``message_payload``
is left to the library.

Outcomes
--------
============================================================  ===========
command_status (or event)                                     outcome
============================================================  ===========
ESME_ROK (0x00)                                               ACCEPTED
ESME_RTHROTTLED (0x58), ESME_RMSGQFUL (0x14)                  THROTTLED: the provider is paused
ESME_RINVDSTADR (0x0B), ESME_RINVDSTTON (0x50),               REJECTED
ESME_RINVDSTNPI (0x51), ESME_RINVMSGLEN (0x01),
ESME_RINVNUMDESTS (0x33), ESME_RINVDESTFLAG (0x40),
ESME_RX_P_APPN (0x65), ESME_RX_R_APPN (0x66)
ESME_RINVSRCADR (0x0A), ESME_RINVSRCTON (0x48),               UNROUTABLE (the sender or options this
ESME_RINVSRCNPI (0x49), ESME_RINVSERTYP (0x15),               account may not use: another provider may)
ESME_RINVESMCLASS (0x43), ESME_RINVREGDLVFLG (0x07),
ESME_RINVDFTMSGID (0x63), ESME_RINVOPTPARAMVAL (0xC4)
ESME_RINVPASWD (0x0E), ESME_RBINDFAIL (0x0D),                 AUTH (no bind is up because the SMSC
ESME_RINVSYSID (0x0F), ESME_RINVSYSTYP (0x53)                 refused ours)
ESME_RINVBNDSTS (0x04), ESME_RSYSERR (0x08),                  TRANSIENT
ESME_RSUBMITFAIL (0x45), ESME_RX_T_APPN (0x64),
generic_nack, any other status, a malformed reply (another
command's response, a message_id blank or not printable ASCII)
no submit_sm_resp within ``timeout``                          TIMEOUT
the connection dropped while awaiting the submit_sm_resp      TIMEOUT (it may have been sent)
no bind up (connection refused, lost, not yet bound)          TRANSIENT
============================================================  ===========

Receipts and inbound messages arrive as ``deliver_sm`` on the binds and go
through the router's receipt pipeline (:meth:`Provider.start`'s sink).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs
from aiosmpplib import PhoneNumber, SmppDataCoding, SubmitSm
from aiosmpplib.state import NPI, TON

from smsroute.config import ProviderConfig
from smsroute.errors import SmsrouteError
from smsroute.message import Outcome
from smsroute.providers.base import (
    CannotCarry,
    Inbound,
    LinkState,
    OutboundSMS,
    Provider,
    ProviderSink,
    Receipt,
    Reply,
    new_reply,
)
from smsroute.providers.smpp_codec import LONG_MODES, Part, Reassembly, split, udh_header
from smsroute.providers.smpp_pdu import SubmitTemplate, sar_tlvs, submit_sm, submit_sm_resp_id
from smsroute.providers.smpp_receipts import IdForms, InboundPart, read_deliver_sm
from smsroute.providers.smpp_session import (
    BIND_UP,
    Bind,
    BindPool,
    BindSettings,
    LinkLost,
    NoBind,
)
from smsroute.units import parse_duration

__all__ = [
    "BIND_AUTH_STATUSES",
    "STATUS_OUTCOMES",
    "IdForms",
    "InboundPart",
    "SmppProvider",
    "outcome_of",
    "read_deliver_sm",
]

log = logging.getLogger("smsroute.providers.smpp")

#: command_status -> outcome (the table in the module's docstring); anything else TRANSIENT.
STATUS_OUTCOMES: Mapping[int, Outcome] = {
    0x00: Outcome.ACCEPTED,
    0x58: Outcome.THROTTLED,
    0x14: Outcome.THROTTLED,
    0x0B: Outcome.REJECTED,
    0x50: Outcome.REJECTED,
    0x51: Outcome.REJECTED,
    0x01: Outcome.REJECTED,
    0x33: Outcome.REJECTED,
    0x40: Outcome.REJECTED,
    0x65: Outcome.REJECTED,
    0x66: Outcome.REJECTED,
    0x0A: Outcome.UNROUTABLE,
    0x48: Outcome.UNROUTABLE,
    0x49: Outcome.UNROUTABLE,
    0x15: Outcome.UNROUTABLE,
    0x43: Outcome.UNROUTABLE,
    0x07: Outcome.UNROUTABLE,
    0x63: Outcome.UNROUTABLE,
    0xC4: Outcome.UNROUTABLE,
    0x0E: Outcome.AUTH,
    0x0D: Outcome.AUTH,
    0x0F: Outcome.AUTH,
    0x53: Outcome.AUTH,
}
#: A bind refused with one of these: the account is unusable as configured.
BIND_AUTH_STATUSES = frozenset({0x0E, 0x0D, 0x0F, 0x53})


def outcome_of(status: int) -> Outcome:
    """The outcome a submit_sm_resp's command_status means (TRANSIENT when unlisted)."""
    return STATUS_OUTCOMES.get(status, Outcome.TRANSIENT)


_ESM_UDHI = 0x40
_SUBMIT_SM = 0x04
_SUBMIT_SM_RESP = 0x80000004
_TEMPLATES = 256  # senders whose submit_sm start is kept
_NOT_READ = 0x65  # ESME_RX_P_APPN: the answer to a deliver_sm we cannot read


def _tls(value: Any) -> ssl.SSLContext | None:
    if value is None or value is False:
        return None
    cafile = value.get("ca") if isinstance(value, Mapping) else None
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


_INTS = {
    "port": (1, 65535),
    "binds": (1, 64),
    "window": (1, 1000),
    "registered_delivery": (0, 31),
    "source_ton": (0, 6),
    "dest_ton": (0, 6),
}
_NPIS = frozenset(int(n) for n in NPI)
_DURATIONS = ("enquire_link", "inbound_timeout", "reconnect_delay", "reconnect_max")


class SmppProvider(Provider):
    """An SMSC reached over SMPP 3.4 transceiver binds.

    Config (besides the common keys: ``from``, ``timeout``, ``rate_limit``,
    ``prices``, ``breaker``...)::

        smsc:
          type: smpp
          host: smsc.example.net
          port: 2775                # default 2775
          system_id: acme
          password: ${SMPP_PASSWORD}
          system_type: ""           # optional
          tls: false                # true, or {ca: ca.pem} (relative: to the config file)
          binds: 2                  # transceiver sessions (default 1)
          window: 10                # submit_sm awaiting an answer, per bind (default 10)
          enquire_link: 30s         # keepalive interval (default 30s)
          long_messages: udh        # udh (default), sar or payload
          registered_delivery: 1    # 1: a receipt for the final state (default); 0: none
          data_coding: {gsm7: 0, ucs2: 8}   # the defaults: SMSC alphabet, UCS-2
          source_ton: 5             # default: derived from the sender (see below)
          inbound_timeout: 60s      # concatenated inbound parts wait this long for the rest

    The sender's TON/NPI are derived unless given: an alphanumeric sender is
    TON 5/NPI 0, ``+`` and digits TON 1/NPI 1, other digits TON 0/NPI 1; the
    destination is always international (TON 1/NPI 1) unless ``dest_ton``/
    ``dest_npi`` say otherwise.  ``timeout`` bounds each submit_sm's answer and
    each bind and enquire_link answer.
    """

    type_name = "smpp"
    required_options = frozenset({"host", "system_id", "password"})
    optional_options = frozenset(
        {
            "port",
            "system_type",
            "tls",
            "binds",
            "window",
            "enquire_link",
            "source_ton",
            "source_npi",
            "dest_ton",
            "dest_npi",
            "data_coding",
            "long_messages",
            "registered_delivery",
            "inbound_timeout",
            "reconnect_delay",
            "reconnect_max",
        }
    )
    secret_options = frozenset({"password"})
    file_options = (("tls", "ca"),)  # a relative CA file: from the config file's directory
    echoes_message_id = True  # receipts come over the bind: no callback URL to tag

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.settings = BindSettings(
            host=str(opts["host"]),
            port=int(opts.get("port", 2775)),
            system_id=str(opts["system_id"]),
            password=str(opts["password"]),
            system_type=str(opts.get("system_type") or ""),
            tls=_tls(opts.get("tls")),
            enquire_link=parse_duration(opts.get("enquire_link", "30s")),
            timeout=config.timeout,
            reconnect_delay=parse_duration(opts.get("reconnect_delay", "1s")),
            reconnect_max=parse_duration(opts.get("reconnect_max", "60s")),
        )
        self.window = int(opts.get("window", 10))
        self.long_messages = str(opts.get("long_messages", "udh"))
        self.registered_delivery = int(opts.get("registered_delivery", 1))
        coding = opts.get("data_coding") or {}
        self.gsm7_coding = int(coding.get("gsm7", 0))
        self.ucs2_coding = int(coding.get("ucs2", 8))
        self.source_ton = opts.get("source_ton")
        self.source_npi = opts.get("source_npi")
        self.dest_ton = TON(int(opts.get("dest_ton", 1)))
        self.dest_npi = NPI(int(opts.get("dest_npi", 1)))
        self.inbound_timeout = parse_duration(opts.get("inbound_timeout", "60s"))
        self._rng = random.Random()
        self._ids = IdForms()
        self._templates: dict[str | None, SubmitTemplate] = {}
        self._ref = self._rng.randrange(0x10000)
        self._sink: ProviderSink | None = None
        self._queue: asyncio.Queue[Receipt | Inbound] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self._reassembly = Reassembly(self.inbound_timeout, self._now)
        self._pool = BindPool([], self.window)
        self._pool.binds = [
            Bind(
                self.settings,
                f"{self.name}#{n}",
                self._on_deliver,
                self._sweep,
                self._pool.changed,
                self._rng,
            )
            for n in range(int(opts.get("binds", 1)))
        ]
        self._started = False
        self._closed = False

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for key, (low, high) in _INTS.items():
            value = options.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
            ):
                problems.append((key, f"{key} is a whole number from {low} to {high}"))
        for key in ("source_npi", "dest_npi"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or value not in _NPIS):
                problems.append((key, f"{key} is one of {', '.join(map(str, sorted(_NPIS)))}"))
        for key in _DURATIONS:
            if key in options:
                try:
                    if parse_duration(options[key]) <= 0:
                        raise ValueError("a duration above zero")
                except ValueError:
                    problems.append((key, f"{key} is a duration above zero, such as 30s or 500ms"))
        for key, most in (("system_id", 15), ("password", 8), ("system_type", 12)):
            value = options.get(key)
            if value is not None and (
                not isinstance(value, str) or not value.isascii() or len(value) > most
            ):
                problems.append((key, f"{key} is ASCII text of at most {most} characters"))
        host = options.get("host")
        if host is not None and (not isinstance(host, str) or not host.strip()):
            problems.append(("host", "host is the SMSC's host name or address"))
        mode = options.get("long_messages")
        if mode is not None and mode not in LONG_MODES:
            problems.append(("long_messages", f"long_messages is one of {', '.join(LONG_MODES)}"))
        tls = options.get("tls")
        if (
            tls is not None
            and not isinstance(tls, bool)
            and (
                not isinstance(tls, Mapping)
                or set(tls) - {"ca"}
                or not isinstance(tls.get("ca", ""), str)
            )
        ):
            problems.append(("tls", "tls is true, false, or {ca: path to a CA bundle}"))
        elif isinstance(tls, Mapping) and tls.get("ca"):
            try:
                _tls(tls)
            except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError, with a reason
                why = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                problems.append(
                    ("tls", f"tls.ca {tls['ca']!r} is not a readable PEM CA bundle ({why})")
                )
        coding = options.get("data_coding")
        if coding is not None:
            valid = {int(d) for d in SmppDataCoding}
            if (
                not isinstance(coding, Mapping)
                or set(coding) - {"gsm7", "ucs2"}
                or any(isinstance(v, bool) or v not in valid for v in coding.values())
            ):
                problems.append(
                    (
                        "data_coding",
                        "data_coding is {gsm7: N, ucs2: N} with SMPP data_coding values "
                        "(gsm7 0: the SMSC's default alphabet, ucs2 8)",
                    )
                )
        return problems

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, sink: ProviderSink | None) -> None:
        """Open the binds and wait for each one's first bind attempt (``timeout`` at most).

        A bind that fails is logged and tried again in the background; it never
        raises here.  Receipts and inbound messages go to ``sink``.
        """
        self._sink = sink
        self._closed = False
        self._start_binds()
        waits = [asyncio.create_task(b.tried.wait()) for b in self._pool.binds]
        _, pending = await asyncio.wait(waits, timeout=self.settings.timeout + 0.5)
        for task in pending:
            task.cancel()

    def _start_binds(self) -> None:
        if self._started:
            return
        self._started = True
        for bind in self._pool.binds:
            bind.start()
        self._consumer = asyncio.create_task(self._consume(), name=f"smpp-sink-{self.name}")

    async def aclose(self) -> None:
        """Unbind every session and stop reconnecting (until :meth:`start`)."""
        self._started = False
        self._closed = True
        for bind in self._pool.binds:
            await bind.close()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None

    def links(self) -> LinkState:
        binds = self._pool.binds
        up = sum(1 for b in binds if b.state == BIND_UP)
        details = tuple(sorted({b.detail for b in binds if b.state != BIND_UP}))
        return LinkState(
            up, len(binds) - up, self._pool.occupancy, self.window * len(binds), details
        )

    def _now(self) -> float:
        sink = self._sink
        return sink.clock.now() if sink is not None else asyncio.get_running_loop().time()

    # -- sending ------------------------------------------------------------------------

    def source_address(self, sender: str | None) -> tuple[TON, NPI, str]:
        """(TON, NPI, address) of ``sender``, unless ``source_ton``/``source_npi`` say:
        ``+`` and digits: international (1/1, without the ``+``); digits or none:
        unknown/ISDN (0/1); anything else: alphanumeric (5/0)."""
        address = sender or ""
        if address.startswith("+") and address[1:].isdigit():
            ton, npi, address = TON.INTERNATIONAL, NPI.ISDN, address[1:]
        elif address.isdigit() or not address:
            ton, npi = TON.UNKNOWN, NPI.ISDN
        else:
            ton, npi = TON.ALPHANUMERIC, NPI.UNKNOWN
        if self.source_ton is not None:
            ton = TON(int(self.source_ton))
        if self.source_npi is not None:
            npi = NPI(int(self.source_npi))
        return ton, npi, address

    def _template(self, sender: str | None) -> SubmitTemplate:
        """This sender's submit_sm start, made once (:class:`CannotCarry` if SMPP cannot)."""
        template = self._templates.get(sender)
        if template is not None:
            return template
        ton, npi, address = self.source_address(sender)
        template = SubmitTemplate(ton, npi, address, self.dest_ton, self.dest_npi)
        if len(self._templates) >= _TEMPLATES:  # senders of messages' own: keep it bounded
            self._templates.clear()
        self._templates[sender] = template
        return template

    def _submits(self, sms: OutboundSMS) -> list[bytes]:
        """The submit_sm body of each part (no header: the bind numbers them)."""
        template = self._template(sms.sender)
        destination = sms.to.lstrip("+")
        gsm7 = sms.encoding == "GSM-7"
        coding = self.gsm7_coding if gsm7 else self.ucs2_coding
        if self.long_messages == "payload":
            return [self._payload(template, destination, sms.text, coding)]
        parts: list[Part] = split(sms.text, "GSM-7" if gsm7 else "UCS-2")
        reg = self.registered_delivery
        if len(parts) == 1:
            return [submit_sm(template, destination, 0, reg, coding, parts[0].data)]
        self._ref = ref = (self._ref + 1) & 0xFFFF
        if self.long_messages == "udh":
            return [
                submit_sm(
                    template,
                    destination,
                    _ESM_UDHI,
                    reg,
                    coding,
                    udh_header(ref, part.seq, part.total) + part.data,
                )
                for part in parts
            ]
        return [
            submit_sm(
                template,
                destination,
                0,
                reg,
                coding,
                part.data,
                sar_tlvs(ref, part.total, part.seq),
            )
            for part in parts
        ]

    def _payload(self, template: SubmitTemplate, destination: str, text: str, coding: int) -> bytes:
        """The whole text in one message_payload TLV, encoded by aiosmpplib (its codec
        for ``data_coding``): a rare path, left to the library."""
        pdu: bytes = SubmitSm(
            message_payload=text,
            source=PhoneNumber(template.address, TON(template.ton), NPI(template.npi)),
            destination=PhoneNumber(destination, self.dest_ton, self.dest_npi),
            registered_delivery=self.registered_delivery,
            encoding=SmppDataCoding(coding).name if coding else None,
            auto_message_payload=False,
        ).pdu()
        return pdu[16:]

    async def send(self, sms: OutboundSMS, session: aiohttp.ClientSession) -> Reply:
        """Send every part over one bind with room in its window; the SMSC's ids back."""
        if not self._started:
            if self._closed:
                return new_reply(Outcome.TRANSIENT, detail="the SMPP binds are closed")
            self._start_binds()
        try:
            submits = self._submits(sms)
        except CannotCarry as exc:  # no request: the next provider may carry it
            return new_reply(Outcome.UNROUTABLE, detail=str(exc))
        except (ValueError, UnicodeError) as exc:
            return new_reply(
                Outcome.REJECTED, detail=f"cannot encode the message: {type(exc).__name__}"
            )
        ids: list[str] = []
        pool = self._pool
        try:
            bind = await pool.acquire()
            try:
                for n, submit in enumerate(submits, 1):
                    command, status, pdu = await bind.request(_SUBMIT_SM, submit)
                    if command == 0x80000000:
                        return new_reply(
                            Outcome.TRANSIENT,
                            error_code=f"0x{status:08X}",
                            detail=f"generic_nack 0x{status:08X} to submit_sm",
                        )
                    if command != _SUBMIT_SM_RESP:  # a response to something else: no answer
                        return new_reply(
                            Outcome.TRANSIENT,
                            detail=f"malformed reply: command_id 0x{command:08X} to submit_sm",
                        )
                    if status != 0:
                        part = f" (part {n} of {len(submits)})" if len(submits) > 1 else ""
                        return new_reply(
                            outcome_of(status),
                            error_code=f"0x{status:08X}",
                            detail=f"submit_sm refused with command_status 0x{status:08X}{part}",
                        )
                    message_id = submit_sm_resp_id(pdu)
                    if message_id is None:
                        return new_reply(
                            Outcome.TRANSIENT,
                            detail="malformed reply: submit_sm_resp without a usable message_id",
                        )
                    ids.append(self._ids.register(message_id))
            finally:
                pool.release(bind)
        except NoBind as exc:
            if exc.status in BIND_AUTH_STATUSES:
                return new_reply(
                    Outcome.AUTH,
                    error_code=f"0x{exc.status:08X}",
                    detail=f"no SMPP bind: the SMSC refused ours (0x{exc.status:08X})",
                )
            return new_reply(Outcome.TRANSIENT, detail=f"no SMPP bind is up: {exc.detail}")
        except LinkLost:
            return new_reply(
                Outcome.TIMEOUT,
                detail="connection lost while awaiting submit_sm_resp: it may have been sent",
            )
        return new_reply(Outcome.ACCEPTED, ids[0], part_ids=tuple(ids) if len(ids) > 1 else ())

    # -- receiving ----------------------------------------------------------------------

    def _on_deliver(self, pdu: bytes, seq: int) -> int:
        """A deliver_sm from a bind: queued for the sink; the deliver_sm_resp's status."""
        item = read_deliver_sm(pdu)
        if item is None:
            log.warning(
                "SMPP %s: a deliver_sm could not be read: answered ESME_RX_P_APPN", self.name
            )
            return _NOT_READ
        if isinstance(item, Receipt):
            self._queue.put_nowait(
                attrs.evolve(item, provider_message_id=self._ids.resolve(item.provider_message_id))
            )
            return 0
        text = self._reassembly.add(
            item.sender, item.recipient, item.ref, item.seq, item.total, item.text
        )
        if text is not None:
            self._queue.put_nowait(Inbound(item.sender, item.recipient, text))
        self._sweep()
        return 0

    def _sweep(self) -> None:
        for sender, recipient, text in self._reassembly.expired():
            log.warning(
                "SMPP %s: an inbound message's parts stopped coming: delivered in part", self.name
            )
            self._queue.put_nowait(Inbound(sender, recipient, text))

    async def _consume(self) -> None:
        while True:
            item = await self._queue.get()
            sink = self._sink
            if sink is None:
                continue  # started by a send, without a router: nowhere to go
            try:
                if isinstance(item, Receipt):
                    await sink.accept_receipts(self.name, [item])
                else:
                    await sink.accept_inbound(self.name, [item])
            except SmsrouteError as exc:  # a store it needs cannot be used (worded already)
                log.error("SMPP %s: a receipt or inbound message was lost: %s", self.name, exc)
            except Exception:
                log.exception("SMPP %s: the receipt pipeline raised", self.name)
