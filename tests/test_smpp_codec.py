"""The smpp adapter's pure parts: splitting against smsroute.encoding, the deliver_sm
reader under arbitrary bytes, the outcome table, and id forms."""

from __future__ import annotations

import struct

from aiosmpplib import DeliverSm, OptionalParam, PhoneNumber
from aiosmpplib.state import MESSAGE_STATE, RECEIPTED_MESSAGE_ID
from hypothesis import given
from hypothesis import strategies as st

from smsroute.encoding import GSM7_BASIC, GSM7_EXTENSION, GSM7_MULTI, UCS2_MULTI, analyze
from smsroute.message import Outcome
from smsroute.providers.base import Receipt
from smsroute.providers.smpp import outcome_of
from smsroute.providers.smpp_codec import Reassembly, split, udh_parts
from smsroute.providers.smpp_receipts import IdForms, InboundPart, read_deliver_sm

gsm_text = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), min_size=1, max_size=800)
any_text = st.text(min_size=1, max_size=500)


@given(gsm_text)
def test_gsm_parts_match_the_segment_count_and_fit(text: str) -> None:
    parts = split(text, "GSM-7")
    assert len(parts) == analyze(text).segments
    if len(parts) > 1:
        assert all(len(p.data) <= GSM7_MULTI for p in parts)
    assert b"".join(p.data for p in parts) == split(text, "GSM-7", whole=True)[0].data
    assert not any(p.data.endswith(b"\x1b") for p in parts)  # no escape cut in two


@given(any_text)
def test_any_text_parts_match_the_segment_count(text: str) -> None:
    info = analyze(text)
    parts = split(text, info.encoding)
    assert len(parts) == info.segments
    if info.encoding == "UCS-2" and len(parts) > 1:
        assert all(len(p.data) <= 2 * UCS2_MULTI for p in parts)
        assert "".join(p.data.decode("utf-16-be") for p in parts) == text  # no pair cut


def test_udh_reference_repair() -> None:
    assert udh_parts(7, 1, 2) == (7, 1, 2)
    assert udh_parts((300 << 16) | (3 << 8) | 2, 2, 3) == (300, 2, 3)


def _deliver(**kwargs: object) -> bytes:
    message = DeliverSm(
        source=PhoneNumber("4915123456789"), destination=PhoneNumber("12345"), **kwargs
    )
    message.sequence_num = 5
    pdu: bytes = message.pdu()
    return pdu


def test_receipt_from_tlvs_wins_over_text() -> None:
    pdu = _deliver(
        short_message="id:xyz sub:001 dlvrd:000 stat:UNDELIV err:000",
        esm_class=0x04,
        optional_params=[
            OptionalParam(RECEIPTED_MESSAGE_ID, "ABC123"),
            OptionalParam(MESSAGE_STATE, 2),
        ],
    )
    receipt = read_deliver_sm(pdu)
    assert isinstance(receipt, Receipt)
    assert (receipt.provider_message_id, receipt.status) == ("ABC123", "delivered")


def test_receipt_text_only() -> None:
    text = "id:0042 sub:001 dlvrd:000 submit date:2501011200 done date:2501011201 stat:EXPIRED err:123 text:"
    receipt = read_deliver_sm(_deliver(short_message=text, esm_class=0x04))
    assert isinstance(receipt, Receipt)
    assert (receipt.provider_message_id, receipt.status, receipt.error_code) == (
        "0042",
        "undelivered",
        "123",
    )
    assert receipt.at is not None
    assert (receipt.at.hour, receipt.at.minute) == (12, 1)


def test_sme_acknowledgement_is_neither() -> None:
    assert read_deliver_sm(_deliver(short_message="ack", esm_class=0x08)) is None


def _frame(body: bytes) -> bytes:
    return struct.pack("!IIII", 16 + len(body), 5, 0, 1) + body


@given(st.binary(max_size=400))
def test_arbitrary_deliver_sm_bodies_never_raise(body: bytes) -> None:
    result = read_deliver_sm(_frame(body))
    assert result is None or isinstance(result, Receipt | InboundPart)


@given(
    st.binary(max_size=160),
    st.integers(0, 255),
    st.integers(0, 255),
    st.sampled_from([0, 0x04, 0x40, 0x44, 0x20]),
)
def test_arbitrary_short_messages_never_raise(data: bytes, coding: int, ton: int, esm: int) -> None:
    body = (
        b"\x00"
        + bytes((ton, 1))
        + b"4915123456789\x00"
        + b"\x01\x01"
        + b"12345\x00"
        + bytes((esm, 0, 0))
        + b"\x00\x00"
        + bytes((0, 0, coding, 0, len(data)))
        + data
    )
    result = read_deliver_sm(_frame(body))
    assert result is None or isinstance(result, Receipt | InboundPart)
    if isinstance(result, Receipt):
        assert result.provider_message_id
        assert result.provider_message_id.isprintable()


def test_outcome_table() -> None:
    assert outcome_of(0) is Outcome.ACCEPTED
    assert outcome_of(0x58) is outcome_of(0x14) is Outcome.THROTTLED
    assert outcome_of(0x0B) is Outcome.REJECTED
    assert outcome_of(0x0E) is Outcome.AUTH
    assert outcome_of(0x12345) is Outcome.TRANSIENT


def test_ids_resolve_across_hex_decimal_case_and_zeros() -> None:
    ids = IdForms()
    canonical = ids.register("5A00FF")
    assert canonical == "5a00ff"
    for form in ("5a00ff", "5A00FF", str(int("5a00ff", 16)), "005A00FF"):
        assert ids.resolve(form) == canonical
    decimal = ids.register("123456789")
    assert ids.resolve(format(123456789, "X")) == decimal
    assert ids.resolve("unknown-id") == "unknown-id"


def test_reassembly_times_out_with_what_arrived() -> None:
    now = [0.0]
    buffer = Reassembly(10.0, lambda: now[0])
    assert buffer.add("a", "b", 1, 2, 3, "two") is None
    assert buffer.add("a", "b", 1, 1, 3, "one") is None
    now[0] = 11.0
    assert buffer.expired() == [("a", "b", "onetwo")]
    assert len(buffer) == 0
    assert buffer.add("a", "b", 2, 2, 2, "B") is None
    assert buffer.add("a", "b", 2, 1, 2, "A") == "AB"
