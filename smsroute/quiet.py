"""Quiet hours: when a category's messages may not go, in the recipient's time zones.

A category with ``quiet_hours: {from: "21:00", to: "08:00", timezone: recipient}``
sends nothing between 21:00 and 08:00 local time.  ``timezone: recipient`` takes
the zones from the number (phonenumbers' time zone data, by prefix: ``+1 415`` is
America/Los_Angeles); where a number maps to several zones (``+1 907``: Anchorage
and Adak; a Russian or Australian mobile number: every zone of the country) the
window must be over in *all* of them, so a message goes only at an hour that is
polite everywhere the recipient may be.  ``timezone`` may also be an IANA name
(``Europe/Berlin``) to use one zone for every recipient.

:func:`opens_at` answers the one question the send path asks: None when the
message may go now, else the first moment (epoch seconds) it may.  Times are
wall-clock epoch seconds, from the dispatcher's clock (:func:`smsroute.clock.wall_clock`).
"""

from __future__ import annotations

import datetime
import functools
import re
import zoneinfo
from typing import Any

import phonenumbers
from phonenumbers import timezone as phone_timezones

from smsroute.config import Config, QuietHours
from smsroute.yamlsource import shown

__all__ = [
    "at_local",
    "opens_at",
    "parse_clock_time",
    "parse_timezone",
    "quiet_reason",
    "zones_for",
]

#: How far ahead :func:`opens_at` looks for a moment outside every zone's window.
HORIZON_DAYS = 3

_UNKNOWN = phone_timezones.UNKNOWN_TIMEZONE
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock_time(value: Any) -> int:
    """``"21:00"`` -> 1260 (minutes after midnight); ValueError with the sentence to read."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f'write the time in quotes, e.g. "21:00" (unquoted, YAML reads 21:00 as the '
            f"number {value})"
        )
    if not isinstance(value, str):
        raise ValueError(f'expected a time of day like "21:00", got {shown(value)}')
    match = _HHMM.match(value.strip())
    if match is None:
        raise ValueError(f'expected a time of day from "00:00" to "23:59", got {shown(value)}')
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_timezone(value: Any) -> str:
    """``recipient`` or an IANA time zone name that this system knows."""
    if value == "recipient":
        return "recipient"
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"expected 'recipient' or an IANA time zone like Europe/Berlin, got {shown(value)}"
        )
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {shown(value)}: use 'recipient' or an IANA name like "
            "Europe/Berlin (pip install tzdata where the system has no time zone data)"
        ) from None
    return value


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def zones_for(e164: str) -> tuple[zoneinfo.ZoneInfo, ...]:
    """Every time zone ``e164`` may be in, from phonenumbers' prefix data.

    A number phonenumbers places nowhere (a mobile number of a country whose data
    is by geography) gets its country's zones; a number of no known zone, UTC.
    """
    number = phonenumbers.parse(e164)
    names = phone_timezones.time_zones_for_number(number)
    if not names or names[0] == _UNKNOWN:
        names = phone_timezones.time_zones_for_geographical_number(number)
    zones = tuple(z for z in (_zone(n) for n in names if n != _UNKNOWN) if z is not None)
    return zones or (zoneinfo.ZoneInfo("UTC"),)


def _quiet(window: QuietHours, minute: int) -> bool:
    """Whether ``minute`` (after local midnight) is inside the window."""
    start, end = window.start, window.end
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight


def _minute_of(now: float, zone: datetime.tzinfo) -> int:
    local = datetime.datetime.fromtimestamp(now, zone)
    return local.hour * 60 + local.minute


def at_local(now: float, zone: zoneinfo.ZoneInfo, minutes: int, day_offset: int) -> float:
    """Epoch seconds of ``minutes`` after midnight, ``day_offset`` days from ``now``'s
    date in ``zone`` (a time skipped by a DST change is taken as the moment after)."""
    local = datetime.datetime.fromtimestamp(now, zone).date() + datetime.timedelta(day_offset)
    naive = datetime.datetime(local.year, local.month, local.day, minutes // 60, minutes % 60)
    return naive.replace(tzinfo=zone).timestamp()


def opens_at(window: QuietHours, e164: str, now: float) -> float | None:
    """None when a message to ``e164`` may go at ``now`` (epoch seconds); otherwise
    the first moment after it when the window is over in every zone of the number
    (``inf`` when there is none within :data:`HORIZON_DAYS`: the zones' allowed hours
    never meet)."""
    zones = zones_for(e164) if window.timezone == "recipient" else (_zone(window.timezone),)
    clean = [z for z in zones if z is not None]
    if not any(_quiet(window, _minute_of(now, z)) for z in clean):
        return None
    # The answer is the end of some zone's window: try each, earliest first.
    candidates = sorted(
        t
        for z in clean
        for day in range(-1, HORIZON_DAYS + 1)
        if (t := at_local(now, z, window.end, day)) > now
    )
    for t in candidates:
        if not any(_quiet(window, _minute_of(t, z)) for z in clean):
            return t
    return float("inf")


def quiet_reason(
    config: Config, category: str, opens: float
) -> tuple[str, datetime.datetime | None]:
    """The reason a send inside ``category``'s quiet hours is refused, and when it may
    go (None: no hour outside them in every zone of the number, ``opens`` is ``inf``)."""
    window = config.categories[category].quiet_hours
    assert window is not None
    span = (
        f"{window.start // 60:02d}:{window.start % 60:02d}-"
        f"{window.end // 60:02d}:{window.end % 60:02d}"
    )
    where = "the recipient's time" if window.timezone == "recipient" else window.timezone
    until = None if opens == float("inf") else datetime.datetime.fromtimestamp(opens, datetime.UTC)
    when = (
        f"it may go from {until.isoformat()}"
        if until is not None
        else "there is no hour outside them in every time zone of this number"
    )
    return f"quiet hours of category '{category}' ({span} {where}): {when}", until
