"""Which senders each destination country takes: the capability table and the check.

The table ships as package data (``smsroute/data/sender_capabilities.yaml``, with the
vendor pages each entry comes from) and is read once, on first use.  Per country it says
whether alphanumeric sender IDs are ``allowed``, need ``registration`` or are
``refused``, and whether a long code must be a ``local`` number of that country (the US
and Canada) or may be ``any``.

:func:`problem` is the check both the config loader and the send path ask: why
``sender`` cannot be used to reach ``country``, or None when it can.  A sender is
*alphanumeric* when it holds a letter, a *long code* when it is a number of 9 to 15
digits (with or without ``+``), otherwise a *short code*; short codes are national by
nature and never refused here, nor is anything sent to a country the table does not list.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Mapping
from typing import Literal

import attrs
import phonenumbers
import yaml

from smsroute.numbers import mask

Alphanumeric = Literal["allowed", "registration", "refused"]
Numeric = Literal["local", "any"]
SenderKind = Literal["alphanumeric", "long_code", "short_code"]

#: The package data file the table is read from.
TABLE = "sender_capabilities.yaml"
_ALPHANUMERIC = ("allowed", "registration", "refused")
_NUMERIC = ("local", "any")


@attrs.frozen(slots=True)
class SenderCapability:
    """What senders one country takes (an entry of the table)."""

    country: str
    alphanumeric: Alphanumeric
    numeric: Numeric
    note: str | None = None
    sources: tuple[str, ...] = ()


@functools.cache
def sender_capabilities() -> Mapping[str, SenderCapability]:
    """The table, by ISO country code (read from the package on first call)."""
    text = importlib.resources.files("smsroute").joinpath(f"data/{TABLE}").read_text("utf-8")
    return parse_table(yaml.safe_load(text))


def parse_table(data: object) -> dict[str, SenderCapability]:
    """The table from its YAML form; ``ValueError`` naming the entry if it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("countries"), dict):
        raise ValueError(f"{TABLE} must be a mapping with a 'countries' mapping")
    out: dict[str, SenderCapability] = {}
    for country, entry in data["countries"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"{TABLE}: {country} must be a mapping")
        alpha, numeric = entry.get("alphanumeric"), entry.get("numeric")
        if (
            country not in phonenumbers.SUPPORTED_REGIONS
            or alpha not in _ALPHANUMERIC
            or numeric not in _NUMERIC
        ):
            raise ValueError(
                f"{TABLE}: {country} needs a known ISO code, alphanumeric: "
                f"{'|'.join(_ALPHANUMERIC)} and numeric: {'|'.join(_NUMERIC)}"
            )
        note = entry.get("note")
        sources = entry.get("sources") or ()
        out[country] = SenderCapability(
            country, alpha, numeric, str(note) if note else None, tuple(map(str, sources))
        )
    return out


def kind(sender: str) -> SenderKind:
    """``alphanumeric`` (it holds a letter), ``long_code`` (9 to 15 digits) or ``short_code``."""
    text = sender.replace(" ", "")
    digits = text.removeprefix("+")
    if not (digits.isascii() and digits.isdigit()):
        return "alphanumeric"
    return "long_code" if 9 <= len(digits) <= 15 else "short_code"


def regions_of(number: str) -> tuple[str, ...]:
    """The countries a long code may belong to: its own when phonenumbers knows it, else
    every country of its calling code (``()`` when it cannot be parsed)."""
    digits = number.replace(" ", "").removeprefix("+")
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return ()
    region = phonenumbers.region_code_for_number(parsed)
    if region is not None:
        return (region,)
    code = parsed.country_code
    return tuple(phonenumbers.region_codes_for_country_code(code)) if code else ()


def shown(sender: str) -> str:
    """How a sender is named in a message: an ID as written, a number masked."""
    return repr(sender) if kind(sender) == "alphanumeric" else mask(sender)


@functools.lru_cache(maxsize=4096)  # a few senders x the countries they reach
def problem(sender: str, country: str) -> str | None:
    """Why ``sender`` cannot reach ``country`` (a sentence), or None when it can."""
    cap = sender_capabilities().get(country)
    if cap is None:
        return None
    what = kind(sender)
    if what == "alphanumeric":
        if cap.alphanumeric == "refused":
            return f"{country} refuses alphanumeric sender IDs ({shown(sender)})"
        return None
    if what == "long_code" and cap.numeric == "local":
        regions = regions_of(sender)
        if regions and country not in regions:
            return (
                f"{country} takes only its own numbers as senders, and {shown(sender)} "
                f"is a number of {'/'.join(regions[:3])}"
            )
    return None


def note(sender: str, country: str) -> str | None:
    """A caution that does not stop the send: the ID must be registered there."""
    cap = sender_capabilities().get(country)
    if cap is not None and cap.alphanumeric == "registration" and kind(sender) == "alphanumeric":
        return f"{country} delivers alphanumeric IDs only once registered"
    return None


__all__ = [
    "SenderCapability",
    "kind",
    "note",
    "parse_table",
    "problem",
    "regions_of",
    "sender_capabilities",
]
