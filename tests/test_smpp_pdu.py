"""The PDUs written and read by hand (providers/smpp_pdu.py) against aiosmpplib's.

submit_sm: the adapter's bodies are, octet for octet, what aiosmpplib's ``SubmitSm``
writes for the same part (every sender kind, both alphabets, the three long-message
modes, data_coding and TON/NPI options).  deliver_sm: a receipt carrying TLVs
aiosmpplib cannot read (binary vendor-specific ones above all) still reads as the
receipt, and a PDU whose TLVs it reads is handed over unchanged.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiosmpplib import DeliverSm, OptionalParam, PhoneNumber, SmppDataCoding, SubmitSm
from aiosmpplib.state import (
    MESSAGE_STATE,
    NPI,
    RECEIPTED_MESSAGE_ID,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
    TON,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute.config import ProviderConfig
from smsroute.encoding import GSM7_BASIC, GSM7_EXTENSION, analyze
from smsroute.providers.base import CannotCarry, Receipt, new_outbound_sms
from smsroute.providers.smpp import SmppProvider
from smsroute.providers.smpp_codec import encode_text, split, udh_header
from smsroute.providers.smpp_pdu import readable_deliver_sm
from smsroute.providers.smpp_receipts import MESSAGE_STATES, InboundPart, read_deliver_sm

OPTIONS = {"host": "127.0.0.1", "system_id": "smsroute", "password": "secret"}


def provider(**options: Any) -> SmppProvider:
    return SmppProvider(ProviderConfig(name="smsc", type="smpp", options={**OPTIONS, **options}))


def library_bodies(p: SmppProvider, to: str, sender: str | None, text: str) -> list[bytes]:
    """What aiosmpplib's SubmitSm writes for each part (the adapter's former path)."""
    encoding = analyze(text).encoding
    ton, npi, address = p.source_address(sender)  # pinned by test_source_address below
    coding = p.gsm7_coding if encoding == "GSM-7" else p.ucs2_coding
    common: dict[str, Any] = {
        "source": PhoneNumber(address, ton, npi),
        "destination": PhoneNumber(to.lstrip("+"), p.dest_ton, p.dest_npi),
        "registered_delivery": p.registered_delivery,
        "encoding": SmppDataCoding(coding).name if coding else None,
        "auto_message_payload": False,
    }
    if p.long_messages == "payload":
        return [SubmitSm(message_payload=text, **common).pdu()[16:]]
    parts = split(text, encoding)
    out = []
    for part in parts:
        data, esm, params = part.data, 0, []
        if part.total > 1 and p.long_messages == "udh":
            data, esm = udh_header(p._ref, part.seq, part.total) + data, 0x40
        elif part.total > 1:
            params = [
                OptionalParam(SAR_MSG_REF_NUM, p._ref),
                OptionalParam(SAR_TOTAL_SEGMENTS, part.total),
                OptionalParam(SAR_SEGMENT_SEQNUM, part.seq),
            ]
        submit = SubmitSm(short_message=" ", esm_class=esm, optional_params=params, **common)
        submit.set_encoded_message(data)
        out.append(submit.pdu()[16:])
    return out


def sms(to: str, sender: str | None, text: str) -> Any:
    info = analyze(text)
    return new_outbound_sms("m1", to, "DE", text, sender, info.encoding, info.segments, "otp")


_GSM = sorted(GSM7_BASIC | GSM7_EXTENSION)
texts = st.one_of(
    st.text(alphabet=_GSM, min_size=1, max_size=500),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300),
)
senders = st.one_of(
    st.none(),
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.from_regex(r"[0-9]{3,15}", fullmatch=True),
    st.from_regex(r"[A-Za-z][A-Za-z0-9 .-]{0,10}", fullmatch=True),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "long_messages": st.sampled_from(["udh", "sar", "payload"]),
        "registered_delivery": st.integers(0, 31),
        "data_coding": st.fixed_dictionaries(
            {}, optional={"gsm7": st.sampled_from([0, 1, 3]), "ucs2": st.just(8)}
        ),
        "source_ton": st.integers(0, 6),
        "source_npi": st.sampled_from([int(n) for n in NPI]),
        "dest_ton": st.integers(0, 6),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    text=texts,
    sender=senders,
    to=st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    opts=options,
)
def test_submit_sm_bodies_are_aiosmpplibs_octet_for_octet(
    text: str, sender: str | None, to: str, opts: dict[str, Any]
) -> None:
    p = provider(**opts)
    try:
        ours = p._submits(sms(to, sender, text))
    except UnicodeError:  # only where aiosmpplib refuses too (payload in IA5 or Latin-1)
        with pytest.raises(UnicodeError):
            library_bodies(p, to, sender, text)
        return
    assert ours == library_bodies(p, to, sender, text)
    assert len(ours) == (1 if p.long_messages == "payload" else analyze(text).segments)
    again = p._submits(sms(to, sender, text))  # from the sender's template, made once
    if len(again) == 1:
        assert again == ours


def test_the_common_case_is_the_bytes_spelled_out() -> None:
    """One GSM-7 part from an alphanumeric sender: every octet, by hand."""
    (body,) = provider()._submits(sms("+4915123456789", "ACME", "Hi @ {1}"))
    text = encode_text("Hi @ {1}", "GSM-7")
    assert text == b"Hi \x00 \x1b(1\x1b)"
    assert body == (
        b"\x00"  # service_type
        + b"\x05\x00ACME\x00"  # source TON 5 (alphanumeric), NPI 0
        + b"\x01\x014915123456789\x00"  # destination TON 1, NPI 1
        + bytes((0, 0, 0))  # esm_class, protocol_id, priority_flag
        + b"\x00\x00"  # schedule_delivery_time, validity_period
        + bytes((1, 0, 0, 0))  # registered_delivery, replace, data_coding, sm_default_msg_id
        + bytes((len(text),))
        + text
    )


@pytest.mark.parametrize(
    ("sender", "to", "problem"),
    [("A" * 21, "+4915123456789", ValueError), ("Café", "+4915123456789", UnicodeError)],
)
def test_what_aiosmpplib_refuses_we_refuse(sender: str, to: str, problem: type) -> None:
    """We refuse it as a value SMPP cannot carry: the adapter answers UNROUTABLE without
    a submit_sm, and the next provider is tried (tests/test_message_fuzz_adapters.py)."""
    with pytest.raises(CannotCarry):
        provider()._submits(sms(to, sender, "hello"))
    with pytest.raises(problem):
        library_bodies(provider(), to, sender, "hello")


# -- deliver_sm: TLVs aiosmpplib cannot read -------------------------------------------


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!HH", tag, len(value)) + value


def _receipt_pdu(pid: str, state: int, tlvs: list[bytes], text: str | None = None) -> bytes:
    message = DeliverSm(
        short_message=text or f"id:{pid} sub:001 dlvrd:001 stat:{MESSAGE_STATES[state]} err:000",
        source=PhoneNumber("4915123456789", TON.INTERNATIONAL, NPI.ISDN),
        destination=PhoneNumber("ACME", TON.ALPHANUMERIC, NPI.UNKNOWN),
        esm_class=0x04,
    )
    message.sequence_num = 9
    pdu: bytes = message.pdu()
    extra = b"".join(tlvs)
    return struct.pack("!I", len(pdu) + len(extra)) + pdu[4:] + extra


vendor_tlvs = st.builds(_tlv, st.integers(0x1400, 0x3FFF), st.binary(max_size=64))
# Standard TLVs aiosmpplib misreads: an integer one not 1, 2 or 4 octets wide, a text
# one that is not ASCII (network_error_code, callback_num...), a flag one with a value.
misread_tlvs = st.one_of(
    st.builds(
        _tlv,
        st.sampled_from([0x0005, 0x0204, 0x020C, 0x0427]),
        st.sampled_from([3, 5, 6, 7, 8]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    ),
    st.builds(
        _tlv,
        st.sampled_from([0x0423, 0x0381, 0x001D, 0x0202]),
        st.tuples(st.binary(max_size=4), st.integers(0x80, 0xFF)).map(
            lambda t: t[0] + bytes((t[1],))
        ),
    ),
    st.builds(_tlv, st.just(0x130C), st.binary(min_size=1, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(
    pid=st.from_regex(r"[0-9a-f]{1,16}", fullmatch=True),
    state=st.sampled_from(sorted(MESSAGE_STATES)),
    before=st.lists(st.one_of(vendor_tlvs, misread_tlvs), max_size=4),
    after=st.lists(st.one_of(vendor_tlvs, misread_tlvs), max_size=4),
    tail=st.binary(max_size=3),
    with_tlvs=st.booleans(),
)
def test_a_receipt_reads_whatever_tlvs_come_with_it(
    pid: str,
    state: int,
    before: list[bytes],
    after: list[bytes],
    tail: bytes,
    with_tlvs: bool,
) -> None:
    """Vendor TLVs, standard ones aiosmpplib would misread and a cut TLV at the end
    are left out: the receipt reads with its id and state, from the TLVs or the text."""
    own = (
        [_tlv(RECEIPTED_MESSAGE_ID, pid.encode() + b"\x00"), _tlv(MESSAGE_STATE, bytes((state,)))]
        if with_tlvs
        else []
    )
    pdu = _receipt_pdu(pid, state, [*before, *own, *after, tail])
    receipt = read_deliver_sm(pdu)
    assert isinstance(receipt, Receipt)
    assert receipt.provider_message_id == pid
    assert receipt.event_id == MESSAGE_STATES[state]


def test_a_pdu_aiosmpplib_reads_is_handed_over_as_it_is() -> None:
    pdu = _receipt_pdu(
        "abc", 2, [_tlv(RECEIPTED_MESSAGE_ID, b"abc\x00"), _tlv(MESSAGE_STATE, b"\x02")]
    )
    assert readable_deliver_sm(pdu) is pdu


def test_a_binary_vendor_tlv_is_left_out_and_the_length_fixed() -> None:
    kept = [_tlv(RECEIPTED_MESSAGE_ID, b"abc\x00"), _tlv(MESSAGE_STATE, b"\x02")]
    pdu = _receipt_pdu("abc", 2, [kept[0], _tlv(0x1400, b"\x9f\x00\xff"), kept[1]])
    with pytest.raises(UnicodeDecodeError):  # what aiosmpplib does with it
        DeliverSm.from_pdu(pdu, _header(pdu), "gsm0338")
    readable = readable_deliver_sm(pdu)
    assert readable == _receipt_pdu("abc", 2, kept)
    assert struct.unpack_from("!I", readable)[0] == len(readable)


def _header(pdu: bytes) -> Any:
    from aiosmpplib import PduHeader, SmppCommand, SmppCommandStatus

    return PduHeader(len(pdu), SmppCommand.DELIVER_SM, SmppCommandStatus.ESME_ROK, 9)


@given(st.binary(max_size=300), st.lists(st.one_of(vendor_tlvs, misread_tlvs), max_size=3))
def test_any_deliver_sm_with_any_tlvs_never_raises(body: bytes, tlvs: list[bytes]) -> None:
    data = body + b"".join(tlvs)
    pdu = struct.pack("!IIII", 16 + len(data), 5, 0, 1) + data
    readable = readable_deliver_sm(pdu)
    assert readable[4:16] == pdu[4:16]
    assert struct.unpack_from("!I", readable)[0] == len(readable) <= len(pdu)
    result = read_deliver_sm(pdu)
    assert result is None or isinstance(result, Receipt | InboundPart)


@pytest.mark.parametrize(
    ("sender", "options", "expected"),
    [
        ("+15005550006", {}, (TON.INTERNATIONAL, NPI.ISDN, "15005550006")),
        ("12345", {}, (TON.UNKNOWN, NPI.ISDN, "12345")),
        (None, {}, (TON.UNKNOWN, NPI.ISDN, "")),
        ("ACME", {}, (TON.ALPHANUMERIC, NPI.UNKNOWN, "ACME")),
        ("+4930", {"source_ton": 2, "source_npi": 8}, (TON(2), NPI(8), "4930")),
    ],
)
def test_source_address(sender: str | None, options: dict[str, Any], expected: Any) -> None:
    """The issue's rule: an alphanumeric sender is TON 5, an international number TON 1 /
    NPI 1; source_ton/source_npi override."""
    assert provider(**options).source_address(sender) == expected
