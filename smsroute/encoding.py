"""GSM-7 / UCS-2 detection and segment counting (3GPP TS 23.038, 23.040).

A text that fits the GSM 03.38 default alphabet (plus its extension table,
whose characters take two septets) is sent as GSM-7: 160 septets in one
segment, 153 per segment when concatenated.  Anything else is UCS-2: 70 UTF-16
code units in one segment, 67 per segment when concatenated; characters
outside the Basic Multilingual Plane (most emoji) take two units.  Splitters
do not cut an escape sequence or a surrogate pair across segments, which this
count follows.
"""

from __future__ import annotations

import attrs

from smsroute.message import Culprit, Encoding

# The GSM 03.38 basic character set, in table order.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Reached through the escape character: each costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


#: At most this many distinct culprits are named (a text in another script has many).
MAX_CULPRITS = 10


class _TextInfoSlots:
    __slots__ = ("__weakref__", "culprits", "encoding", "segments", "units")
    encoding: Encoding
    units: int
    segments: int
    culprits: tuple[Culprit, ...]


@attrs.frozen(slots=True)
class TextInfo(_TextInfoSlots):
    """How a text will travel: its encoding, its length in units, its segments.

    ``culprits`` names the characters outside GSM-7 that made a text UCS-2 (at
    most :data:`MAX_CULPRITS` of them, in order of first appearance); empty for
    GSM-7.  Not in the repr: they are characters of the message's text.
    """

    encoding: Encoding
    units: int
    segments: int
    culprits: tuple[Culprit, ...] = attrs.field(default=(), repr=False)


def _info(
    encoding: Encoding, units: int, segments: int, culprits: tuple[Culprit, ...] = ()
) -> TextInfo:
    # TextInfo(...) without attrs' frozen __init__: once per message (see message.new_attempt).
    self = _TextInfoSlots()
    self.encoding = encoding
    self.units = units
    self.segments = segments
    self.culprits = culprits
    self.__class__ = TextInfo
    return self  # type: ignore[return-value]  # it is a TextInfo now


def culprits(text: str) -> tuple[Culprit, ...]:
    """The characters of ``text`` that GSM-7 cannot carry, each with its positions.

    >>> [str(c) for c in culprits("It\u2019s 5\u20ac")]
    ['U+2019 RIGHT SINGLE QUOTATION MARK at 2']
    """
    basic = GSM7_BASIC
    ext = GSM7_EXTENSION
    found: dict[str, list[int]] = {}
    for i, ch in enumerate(text):
        if ch in basic or ch in ext:
            continue
        where = found.get(ch)
        if where is None:
            if len(found) >= MAX_CULPRITS:
                continue
            where = found[ch] = []
        where.append(i)
    return tuple(Culprit(ch, tuple(where)) for ch, where in found.items())


def _split_count(unit_lengths: list[int] | None, total: int, single: int, multi: int) -> int:
    if total == 0:
        return 0
    if total <= single:
        return 1
    if unit_lengths is None:  # every character is one unit: plain arithmetic
        return -(-total // multi)
    segments, used = 1, 0
    for width in unit_lengths:
        if used + width > multi:
            segments += 1
            used = 0
        used += width
    return segments


def analyze(text: str) -> TextInfo:
    """Encoding, length in units (septets or UTF-16 units) and segment count of ``text``,
    and for UCS-2 the characters that forced it (:func:`culprits`).

    >>> analyze("Hello")
    TextInfo(encoding='GSM-7', units=5, segments=1)
    >>> analyze("Grüße 👋").encoding
    'UCS-2'
    """
    if GSM7_BASIC.issuperset(text):  # the common case, checked in C
        units = len(text)
        return _info("GSM-7", units, _split_count(None, units, GSM7_SINGLE, GSM7_MULTI))
    basic = GSM7_BASIC
    ext = GSM7_EXTENSION
    extended = 0
    gsm = True
    for ch in text:
        if ch in basic:
            continue
        if ch in ext:
            extended += 1
            continue
        gsm = False
        break
    if gsm:
        units = len(text) + extended
        widths = (
            [2 if ch in ext else 1 for ch in text] if extended and units > GSM7_SINGLE else None
        )
        return _info("GSM-7", units, _split_count(widths, units, GSM7_SINGLE, GSM7_MULTI))
    wide = sum(1 for ch in text if ord(ch) > 0xFFFF)
    units = len(text) + wide
    widths = [2 if ord(ch) > 0xFFFF else 1 for ch in text] if wide and units > UCS2_SINGLE else None
    segments = _split_count(widths, units, UCS2_SINGLE, UCS2_MULTI)
    return _info("UCS-2", units, segments, culprits(text))
