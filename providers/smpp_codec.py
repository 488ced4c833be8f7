"""What goes into an SMPP ``short_message``: a text cut into parts, and back.

Outbound, :func:`split` cuts a text into the parts of one message by the rules
:mod:`smsroute.encoding` counts segments with (GSM-7: 160 septets alone, 153
per part, an escape pair never cut; UCS-2: 70 units alone, 67 per part, a
surrogate pair never cut), so an SMPP provider sends as many parts as
``encoding.analyze(text).segments`` says and prices say.  The bytes come from
aiosmpplib's codecs (``gsm0338``: the GSM 03.38 default alphabet, one septet per
octet as SMPP carries it; ``ucs2``: UTF-16 big-endian).  Long messages travel
three ways: a UDH concatenation header in each part (``udh``, the default),
SAR TLVs (``sar``), or the whole text in one ``message_payload`` TLV
(``payload``).

Inbound, :func:`udh_parts` repairs what aiosmpplib reads of a 16-bit UDH
reference, and :class:`Reassembly` puts concatenated parts back together,
giving up on a message whose parts stop coming after a timeout.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from aiosmpplib import GSM7BitCodec, UCS2Codec
from aiosmpplib.codec import GSM_BASIC_ENCODE_MAP, GSM_EXTENDED_ENCODE_MAP

from smsroute.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    GSM7_MULTI,
    GSM7_SINGLE,
    UCS2_MULTI,
    UCS2_SINGLE,
)
from smsroute.message import Encoding

__all__ = ["LONG_MODES", "Part", "Reassembly", "encode_text", "split", "udh_header"]

#: How a message of several parts travels: ``udh`` header, ``sar`` TLVs, ``payload`` TLV.
LONG_MODES = ("udh", "sar", "payload")

_GSM = GSM7BitCodec.get_codec_info()
_UCS2 = UCS2Codec.get_codec_info()
# The GSM 03.38 codec as one str.translate table (code points < 0x80, then latin-1):
# what aiosmpplib's codec writes, character by character, without its Python loop.
_GSM_TABLE = {ord(ch): "\x1b" + chr(code) for ch, code in GSM_EXTENDED_ENCODE_MAP.items()} | {
    ord(ch): chr(code) for ch, code in GSM_BASIC_ENCODE_MAP.items()
}
_GSM_CHARS = frozenset(map(chr, _GSM_TABLE))


@attrs.frozen(slots=True)
class Part:
    """One submit_sm's text: ``data`` are the bytes after any UDH, ``seq`` counts from 1."""

    data: bytes
    seq: int
    total: int


def encode_text(text: str, encoding: Encoding) -> bytes:
    """``text`` as the octets of its alphabet: GSM-7 unpacked, or UCS-2 big-endian
    (UnicodeEncodeError for a character the alphabet lacks, as aiosmpplib's codecs)."""
    if encoding != "GSM-7":
        return text.encode("utf-16-be")  # aiosmpplib's ucs2 codec is exactly this
    if _GSM_CHARS.issuperset(text):
        return text.translate(_GSM_TABLE).encode("latin-1")
    data: bytes = _GSM.encode(text, "strict")[0]  # raises, naming the character
    return data


def _widths(text: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def split(text: str, encoding: Encoding, *, whole: bool = False) -> list[Part]:
    """The parts ``text`` is sent in (one when it fits, or when ``whole``: message_payload).

    Cut where :func:`smsroute.encoding.analyze` counts: the number of parts is
    its ``segments`` for every text it calls GSM-7 or UCS-2.
    """
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)
    data = encode_text(text, encoding)
    # One octet per septet (an extension character is two), two per UCS-2 unit.
    if whole or len(data) <= (single if encoding == "GSM-7" else 2 * single):
        return [Part(data, 1, 1)]
    widths = _widths(text, encoding)
    chunks: list[str] = []
    start = used = 0
    for i, width in enumerate(widths):
        if used + width > multi:
            chunks.append(text[start:i])
            start, used = i, 0
        used += width
    chunks.append(text[start:])
    total = len(chunks)
    return [Part(encode_text(chunk, encoding), n, total) for n, chunk in enumerate(chunks, 1)]


def udh_header(ref: int, seq: int, total: int) -> bytes:
    """The 6-octet concatenation UDH (IEI 0x00, an 8-bit reference) of part ``seq``."""
    return bytes((5, 0, 3, ref & 0xFF, total, seq))


def is_gsm7(text: str) -> bool:
    """Whether ``text`` is written in the GSM 03.38 alphabet (basic and extension)."""
    return (GSM7_BASIC | GSM7_EXTENSION).issuperset(text)


def udh_parts(ref: int, seq: int, total: int) -> tuple[int, int, int]:
    """(reference, seq, total) of a concatenated part as aiosmpplib 0.7.4 read them.

    It reads a 16-bit reference (IEI 0x08) with a 4-octet read, so the value
    carries ``total`` and ``seq`` in its low 16 bits; an 8-bit reference is at
    most 255.  The high half is the real reference.
    """
    if ref > 0xFFFF and (ref & 0xFFFF) == ((total << 8) | seq):
        ref >>= 16
    return ref, seq, total


@attrs.define(slots=True)
class _Pending:
    started: float
    total: int
    parts: dict[int, str]


class Reassembly:
    """Concatenated inbound parts waiting for the rest, by (sender, recipient, reference).

    :meth:`add` returns the whole text once every part is in; :meth:`expired`
    gives the texts of messages whose parts stopped coming ``timeout`` seconds
    after the first, with what arrived (in order), so a STOP is not lost.
    At most ``limit`` messages wait; the oldest gives way.
    """

    def __init__(self, timeout: float, now: Callable[[], float], limit: int = 10_000) -> None:
        self.timeout = timeout
        self._now = now
        self._limit = limit
        self._waiting: dict[tuple[str, str, int, int], _Pending] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(
        self, sender: str, recipient: str, ref: int, seq: int, total: int, text: str
    ) -> str | None:
        """Keep part ``seq`` of ``total``; the whole text when it was the last missing."""
        if total <= 1:
            return text
        if not 1 <= seq <= total:
            return None
        key = (sender, recipient, ref, total)
        pending = self._waiting.get(key)
        if pending is None:
            pending = self._waiting[key] = _Pending(self._now(), total, {})
            while len(self._waiting) > self._limit:
                del self._waiting[next(iter(self._waiting))]
        pending.parts[seq] = text
        if len(pending.parts) < total:
            return None
        del self._waiting[key]
        return "".join(pending.parts[n] for n in range(1, total + 1))

    def expired(self) -> list[tuple[str, str, str]]:
        """(sender, recipient, text so far) of each message that waited too long."""
        horizon = self._now() - self.timeout
        out = []
        for key, pending in list(self._waiting.items()):
            if pending.started <= horizon:
                del self._waiting[key]
                text = "".join(pending.parts[n] for n in sorted(pending.parts))
                out.append((key[0], key[1], text))
        return out
