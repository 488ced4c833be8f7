"""Look-alike characters replaced by GSM-7 ones: ``encoding: transliterate``.

One curly quote makes a whole text UCS-2: 70 characters a segment instead of 160,
so a 160-character text goes from one segment to three.  Word processors and
phones put such characters in without anyone noticing: typographic quotes and
apostrophes, dashes, the ellipsis, non-breaking and other spaces.  With
``encoding: transliterate`` on a rule or a category (never on by default, and
refused for ``otp``, whose texts must arrive exactly as written), each is
replaced by its GSM-7 equivalent before the segments and the cost are counted,
as the vendors' "smart encoding" options do (Twilio Smart Encoding, Vonage's
and Plivo's equivalents).  Letters are never changed: only punctuation and
spacing that reads the same, and invisible characters (zero-width space, soft
hyphen, byte order mark), which are removed.  A text with other non-GSM
characters (emoji, another script) stays UCS-2 either way.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LOOK_ALIKES", "transliterate"]

#: Each look-alike and what replaces it (every replacement is GSM-7: basic set or
#: extension table).
LOOK_ALIKES: Mapping[str, str] = {
    # Quotes and apostrophes.
    "\u2018": "'",  # LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # RIGHT SINGLE QUOTATION MARK (the typographic apostrophe)
    "\u201a": "'",  # SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",  # SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2032": "'",  # PRIME
    "\u00b4": "'",  # ACUTE ACCENT (used as an apostrophe)
    "\u0060": "'",  # GRAVE ACCENT (not in GSM-7)
    "\u02bc": "'",  # MODIFIER LETTER APOSTROPHE
    "\u201c": '"',  # LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',  # RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',  # DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',  # DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2033": '"',  # DOUBLE PRIME
    "\u00ab": '"',  # LEFT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u00bb": '"',  # RIGHT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u2039": "<",  # SINGLE LEFT-POINTING ANGLE QUOTATION MARK
    "\u203a": ">",  # SINGLE RIGHT-POINTING ANGLE QUOTATION MARK
    # Dashes and hyphens.
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    # Dots and other punctuation.
    "\u2026": "...",  # HORIZONTAL ELLIPSIS
    "\u2022": "-",  # BULLET
    "\u2044": "/",  # FRACTION SLASH
    "\u02c6": "^",  # MODIFIER LETTER CIRCUMFLEX ACCENT
    "\u02dc": "~",  # SMALL TILDE
    # Spaces.
    "\t": " ",  # CHARACTER TABULATION (not in GSM-7)
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2000": " ",  # EN QUAD
    "\u2001": " ",  # EM QUAD
    "\u2002": " ",  # EN SPACE
    "\u2003": " ",  # EM SPACE
    "\u2004": " ",  # THREE-PER-EM SPACE
    "\u2005": " ",  # FOUR-PER-EM SPACE
    "\u2006": " ",  # SIX-PER-EM SPACE
    "\u2007": " ",  # FIGURE SPACE
    "\u2008": " ",  # PUNCTUATION SPACE
    "\u2009": " ",  # THIN SPACE
    "\u200a": " ",  # HAIR SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u205f": " ",  # MEDIUM MATHEMATICAL SPACE
    "\u3000": " ",  # IDEOGRAPHIC SPACE
    # Invisible: removed.
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u2060": "",  # WORD JOINER
    "\u00ad": "",  # SOFT HYPHEN
    "\ufeff": "",  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
}

_TABLE = str.maketrans(dict(LOOK_ALIKES))


def transliterate(text: str) -> str:
    """``text`` with every look-alike of :data:`LOOK_ALIKES` replaced (the same object
    when there is none, so ``result is text`` says nothing changed).

    >>> transliterate("It\\u2019s \\u201cdone\\u201d \\u2013 see you\\u2026")
    'It\\'s "done" - see you...'
    """
    out = text.translate(_TABLE)
    return text if out == text else out
