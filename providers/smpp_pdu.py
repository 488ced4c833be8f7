"""SMPP PDU bytes written and read by hand, where aiosmpplib's classes cost or fail.

Outbound, :func:`submit_sm` writes the body of a ``submit_sm`` carrying
``short_message`` (one part, or a part with its UDH or SAR TLVs) octet for octet
as aiosmpplib 0.7.4's ``SubmitSm.pdu()`` does (``tests/test_smpp_pdu.py``
compares them), without building its dataclasses and checking each field per
message, which was the largest part of what the adapter spent per message.  The
sender's part of the body is built once per sender (:class:`SubmitTemplate`);
the bind adds the header with the sequence number.  :func:`submit_sm_resp_id`
reads the SMSC's id out of its answer.

Inbound, :func:`readable_deliver_sm` hands aiosmpplib only the TLVs it reads
correctly.  Its ``DeliverSm.from_pdu`` decodes every TLV it does not know as
ASCII text, so a binary vendor-specific TLV (tags 0x1400-0x3FFF, which SMSCs
add to receipts: network codes, prices, operator ids) made the whole
``deliver_sm`` unreadable and the receipt was lost.  Vendor TLVs, values it
would misread (a standard text TLV that is not ASCII, an integer TLV not 1, 2
or 4 octets wide, a flag TLV with a value) and a truncated TLV at the end are
left out; the rest of the PDU is unchanged.
"""

from __future__ import annotations

import struct

from aiosmpplib.state import tag_data_type

from smsroute.providers.base import CannotCarry

__all__ = [
    "MAX_ADDRESS",
    "MAX_SENDER_ID",
    "SAR_TLVS",
    "SubmitTemplate",
    "readable_deliver_sm",
    "sar_tlvs",
    "submit_sm",
    "submit_sm_resp_id",
]

_TLV = struct.Struct("!HH")
_SAR = struct.Struct("!HHHHHBHHB")
#: The longest source or destination address (aiosmpplib's PhoneNumber: 20 characters).
MAX_ADDRESS = 20
#: The longest alphanumeric sender (GSM 03.40 TP-OA: 11 characters).
MAX_SENDER_ID = 11
#: sar_msg_ref_num, sar_total_segments, sar_segment_seqnum.
SAR_TLVS = (0x020C, 0x020E, 0x020F)
_MESSAGE_PAYLOAD = 0x0424
_VENDOR = range(0x1400, 0x4000)


class SubmitTemplate:
    """What a sender's submit_sm bodies start with: service_type, the source address
    (``ton``, ``npi``, ``address``) and the destination's TON/NPI.

    :class:`CannotCarry` (a ValueError) when SMPP cannot carry the address: source_addr
    is a C-Octet String of at most 21 octets (SMPP 3.4, 5.2.8), so printable ASCII (a
    NUL would end it and shift every field after it) of at most :data:`MAX_ADDRESS`
    characters, and a sender ID (an address not all digits) reaches the handset as
    GSM 03.40's alphanumeric TP-OA, at most :data:`MAX_SENDER_ID` characters.  The
    adapter then answers UNROUTABLE without a submit_sm: another provider may carry it.
    """

    __slots__ = ("address", "head", "npi", "ton")

    def __init__(self, ton: int, npi: int, address: str, dest_ton: int, dest_npi: int) -> None:
        if not (address.isascii() and address.isprintable()):
            raise CannotCarry("sender", "an SMPP source_addr is printable ASCII")
        if len(address) > MAX_ADDRESS:
            raise CannotCarry("sender", f"an SMPP source_addr is at most {MAX_ADDRESS} characters")
        if len(address) > MAX_SENDER_ID and not address.isdigit():
            raise CannotCarry(
                "sender", f"an alphanumeric source_addr is at most {MAX_SENDER_ID} characters"
            )
        self.ton, self.npi, self.address = ton, npi, address
        self.head = b"\x00" + bytes((ton, npi)) + address.encode("ascii") + b"\x00"
        self.head += bytes((dest_ton, dest_npi))


def sar_tlvs(ref: int, total: int, seq: int) -> bytes:
    """The three SAR TLVs of part ``seq`` of ``total`` (reference ``ref``, 16 bits)."""
    return _SAR.pack(SAR_TLVS[0], 2, ref, SAR_TLVS[1], 1, total, SAR_TLVS[2], 1, seq)


def submit_sm(
    template: SubmitTemplate,
    destination: str,
    esm_class: int,
    registered_delivery: int,
    data_coding: int,
    short_message: bytes,
    tlvs: bytes = b"",
) -> bytes:
    """A submit_sm body (what follows the header): protocol_id, priority, schedule, validity, replace and
    sm_default_msg_id are 0 or empty, as aiosmpplib writes them by default.

    ValueError for a destination over :data:`MAX_ADDRESS` characters or a
    ``short_message`` over 254 octets, UnicodeEncodeError for one not ASCII.
    """
    if len(destination) > MAX_ADDRESS:
        raise ValueError(f"destination address longer than {MAX_ADDRESS} characters")
    if len(short_message) > 254:
        raise ValueError(f"short_message of {len(short_message)} octets (at most 254)")
    return b"".join(
        (
            template.head,
            destination.encode("ascii"),
            b"\x00",
            bytes((esm_class, 0, 0, 0, 0, registered_delivery, 0, data_coding, 0)),
            bytes((len(short_message),)),
            short_message,
            tlvs,
        )
    )


def submit_sm_resp_id(pdu: bytes) -> str | None:
    """The message_id of a submit_sm_resp PDU, up to its NUL (to the PDU's end when the
    SMSC leaves the NUL out); None when it is empty, blank or not printable ASCII: no
    receipt could name it, and a loose decoding would give two ids one form."""
    end = pdu.find(0, 16)
    try:
        message_id = (pdu[16:] if end < 0 else pdu[16:end]).decode("ascii")
    except UnicodeDecodeError:
        return None
    return message_id if message_id.strip() and message_id.isprintable() else None


def _tlv_start(pdu: bytes) -> int:
    """Where a deliver_sm's (or submit_sm's) TLVs start; ValueError when the body is cut."""
    i = pdu.index(0, 16) + 3  # service_type, source TON/NPI
    i = pdu.index(0, i) + 3  # source_addr, dest TON/NPI
    i = pdu.index(0, i) + 4  # destination_addr, esm_class, protocol_id, priority_flag
    i = pdu.index(0, i) + 1  # schedule_delivery_time
    i = pdu.index(0, i) + 5  # validity_period, registered_delivery .. sm_default_msg_id
    if i >= len(pdu):
        raise ValueError("deliver_sm cut before sm_length")
    return i + 1 + pdu[i]  # sm_length, short_message


def _readable(tag: int, value: bytes) -> bool:
    if tag == _MESSAGE_PAYLOAD:
        return True
    if tag in _VENDOR:
        return False
    kind = tag_data_type(tag)
    if kind is int:
        return len(value) in (1, 2, 4)
    if kind is bool:
        return not value
    return value.isascii()


def readable_deliver_sm(pdu: bytes) -> bytes:
    """``pdu`` with only the TLVs aiosmpplib reads correctly (see the module's docstring),
    its command_length fixed; ``pdu`` itself when nothing is left out or when the
    body is cut before its TLVs (aiosmpplib then says it cannot read it)."""
    try:
        start = _tlv_start(pdu)
    except ValueError:
        return pdu
    end, kept, dropped = len(pdu), [], False
    i = start
    while i < end:
        if i + 4 > end:
            dropped = True
            break
        tag, length = _TLV.unpack_from(pdu, i)
        stop = i + 4 + length
        if stop > end:
            dropped = True
            break
        if _readable(tag, pdu[i + 4 : stop]):
            kept.append(pdu[i:stop])
        else:
            dropped = True
        i = stop
    if not dropped:
        return pdu
    body = pdu[16:start] + b"".join(kept)
    return struct.pack("!I", 16 + len(body)) + pdu[4:16] + body
