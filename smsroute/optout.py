"""Opt-outs: STOP and friends in inbound messages, and who may not be sent to.

The keywords are the CTIA / TCPA set (shared/reference/providers-wire.md §14):
the whole message, case-insensitive, surrounding spaces and punctuation ignored.
"""

from __future__ import annotations

import re
from typing import Literal

Keyword = Literal["STOP", "START", "HELP"]

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT"}
)
START_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP"})

_NOISE = re.compile(r"[\s.!,;:'\"]+")


def keyword(text: str) -> Keyword | None:
    """``STOP``, ``START`` or ``HELP`` when the whole message is such a keyword.

    >>> keyword(" Stop! "), keyword("opt out"), keyword("please stop texting me")
    ('STOP', 'STOP', None)
    """
    word = _NOISE.sub(" ", text).strip().upper()
    if word in STOP_WORDS:
        return "STOP"
    if word in START_WORDS:
        return "START"
    if word in HELP_WORDS:
        return "HELP"
    return None


class OptOutStore:
    """Numbers (E.164) that opted out, in memory."""

    def __init__(self) -> None:
        self._numbers: set[str] = set()

    def __len__(self) -> int:
        return len(self._numbers)

    def __contains__(self, number: object) -> bool:
        return number in self._numbers

    def numbers(self) -> frozenset[str]:
        """Every number that opted out (E.164), as of now."""
        return frozenset(self._numbers)

    def opt_out(self, number: str) -> None:
        """Stop sending (the opted-out categories) to ``number``."""
        self._numbers.add(number)

    def opt_in(self, number: str) -> None:
        """Allow ``number`` again."""
        self._numbers.discard(number)
