"""What an SMSC's deliver_sm carries: a delivery receipt or an inbound message (part).

:func:`read_deliver_sm` reads a whole deliver_sm PDU (with aiosmpplib's
``DeliverSm``) into a :class:`~smsroute.providers.base.Receipt` (``esm_class``
0x04 or 0x20: the ``receipted_message_id``/``message_state`` TLVs, else the
``id:... stat:... err:... done date:...`` text) or an :class:`InboundPart`
(``esm_class`` 0, with its UDH or SAR concatenation), or None for anything
else, and never raises; TLVs aiosmpplib would misread (binary vendor-specific
ones) are left out first (:func:`.smpp_pdu.readable_deliver_sm`).
:class:`IdForms` correlates the SMSC's ids whatever form a receipt writes them
in (hex or decimal, case, leading zeros).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

import attrs
from aiosmpplib import DeliverSm, PduHeader, SmppCommand, SmppCommandStatus
from aiosmpplib.state import (
    MESSAGE_STATE,
    RECEIPTED_MESSAGE_ID,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
    TON,
)

from smsroute.message import DeliveryStatus
from smsroute.providers.base import Receipt, with_plus
from smsroute.providers.smpp_codec import udh_parts
from smsroute.providers.smpp_pdu import readable_deliver_sm

__all__ = ["MESSAGE_STATES", "RECEIPT_STATES", "IdForms", "InboundPart", "read_deliver_sm"]

# deliver_sm receipts: the stat word and the message_state TLV -> our statuses.
RECEIPT_STATES: Mapping[str, tuple[DeliveryStatus, bool | None]] = {
    "DELIVRD": ("delivered", None),
    "ACCEPTD": ("sent", None),
    "ENROUTE": ("sent", None),
    "EXPIRED": ("undelivered", True),
    "UNDELIV": ("undelivered", True),
    "DELETED": ("failed", False),
    "REJECTD": ("failed", False),
    "UNKNOWN": ("unknown", None),
}
MESSAGE_STATES: Mapping[int, str] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
_FIELD = re.compile(r"(?i)\b(id|stat|err|done date):(\S*)")
_ESM_RECEIPTS = (0x04, 0x20)  # SMSC delivery receipt, intermediate notification
_ESM_UDHI = 0x40


@attrs.frozen(slots=True)
class InboundPart:
    """An inbound deliver_sm (one part of ``total``, ``ref`` its concatenation reference)."""

    sender: str
    recipient: str
    text: str
    ref: int = 0
    seq: int = 1
    total: int = 1


def _done_date(value: str) -> datetime.datetime | None:
    """``done date``: YYMMDDhhmm, or YYMMDDhhmmss (UTC: the receipt gives no zone)."""
    fmt = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}.get(len(value))
    if fmt is None:
        return None
    try:
        return datetime.datetime.strptime(value, fmt).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def read_deliver_sm(pdu: bytes) -> Receipt | InboundPart | None:
    """What a deliver_sm PDU carries: a receipt, an inbound part, or None when it
    cannot be read or is neither (an SME acknowledgement).  Never raises.

    The receipt's ``provider_message_id`` is the SMSC's id as written (the
    ``receipted_message_id`` TLV, else ``id:`` in the text); its status the
    ``message_state`` TLV, else ``stat:``.
    """
    try:
        pdu = readable_deliver_sm(pdu)  # binary vendor TLVs would make aiosmpplib fail
        msg = DeliverSm.from_pdu(pdu, _deliver_header(pdu), "gsm0338")
        params = {p.tag: p.value for p in msg.optional_params or ()}
        text = str(msg.short_message or msg.message_payload)
        esm = msg.esm_class & 0x3C
        if esm in _ESM_RECEIPTS:
            return _receipt(text, params)
        if esm != 0:
            return None
        ref, seq, total = (
            int(params.get(SAR_MSG_REF_NUM, 0)),
            int(params.get(SAR_SEGMENT_SEQNUM, 1)),
            int(params.get(SAR_TOTAL_SEGMENTS, 1)),
        )
        if msg.esm_class & _ESM_UDHI:
            ref, seq, total = udh_parts(ref, seq, total)
        source = str(msg.source.number)
        if msg.source.ton == TON.INTERNATIONAL:
            source = with_plus(source)
        return InboundPart(source, str(msg.destination.number), text, ref, seq, total)
    except Exception:  # anything the SMSC sends: a PDU we cannot read is answered, not raised
        return None


def _deliver_header(pdu: bytes) -> Any:
    return PduHeader(
        len(pdu), SmppCommand.DELIVER_SM, SmppCommandStatus.ESME_ROK, int.from_bytes(pdu[12:16])
    )


def _receipt(text: str, params: Mapping[int, Any]) -> Receipt | None:
    fields = {k.lower(): v for k, v in _FIELD.findall(text)}
    pid = params.get(RECEIPTED_MESSAGE_ID)
    pid = str(pid).strip("\x00 ") if pid else fields.get("id", "")
    if not pid or not pid.isprintable():
        return None
    state = MESSAGE_STATES.get(params[MESSAGE_STATE]) if MESSAGE_STATE in params else None
    stat = (state or fields.get("stat", "")).upper()
    status, retryable = RECEIPT_STATES.get(stat, ("unknown", None))
    err = fields.get("err", "")
    error_code = err if err.strip("0") and err.isalnum() else None
    done = fields.get("done date", "")
    return Receipt(
        provider_message_id=pid,
        status=status,
        error_code=error_code,
        at=_done_date(done) if done.isdigit() else None,
        retryable=retryable,
        event_id=stat or None,
    )


def _canonical(message_id: str) -> str:
    return message_id.strip().lower()


def _key(canonical: str) -> str:
    return canonical.lstrip("0") or "0"


_HEX = frozenset("0123456789abcdef")


class IdForms:
    """The SMSC's ids as its submit_sm_resp wrote them, by every form a receipt may use.

    SMSCs often answer submit_sm in hex and write receipts in decimal (or the
    other way round), in another case or with leading zeros: each id is kept
    once, lower case without leading zeros (the last ``size`` ids), and a
    receipt's id is looked up as written, then read as decimal written in hex,
    then as hex written in decimal.
    """

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._ids: dict[str, str] = {}

    def register(self, message_id: str) -> str:
        """Remember an id a submit_sm_resp gave; its canonical form (what receipts resolve to)."""
        canonical = _canonical(message_id)
        ids = self._ids
        ids[_key(canonical)] = canonical
        if len(ids) > self._size:
            del ids[next(iter(ids))]
        return canonical

    def resolve(self, message_id: str) -> str:
        """The registered id ``message_id`` (from a receipt) is a form of; else itself, canonical."""
        canonical = _canonical(message_id)
        key = _key(canonical)
        found = self._ids.get(key)
        if found is not None:
            return found
        if 0 < len(key) <= 32 and key.isascii():
            if key.isdigit():
                found = self._ids.get(format(int(key), "x"))
            if found is None and _HEX.issuperset(key):
                found = self._ids.get(str(int(key, 16)))
        return found if found is not None else canonical
