"""Reading the compliance keys of a config: a category's ``quiet_hours`` and the
``encoding`` of a category or a rule.

Each function walks the YAML with a :class:`~smsroute.configcheck.Checker`, so every
problem is recorded with its file:line:column and field path, and the loader
(:mod:`smsroute.configload`) raises them together as one
:class:`~smsroute.errors.ConfigError`.  The values are parsed by :mod:`smsroute.quiet`
(times of day, time zones) and :mod:`smsroute.configcheck` (``encoding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smsroute import configcheck as check
from smsroute import quiet, yamlsource
from smsroute.config import QUIET_HOURS_KEYS, QuietHours
from smsroute.configcheck import Checker

__all__ = ["encoding_mode", "quiet_hours", "rule_encoding"]


def quiet_hours(c: Checker, value: Any, path: yamlsource.Path) -> QuietHours | None:
    """A category's ``quiet_hours: {from: "21:00", to: "08:00", timezone: recipient}``."""
    if value is None:
        return None
    q = c.mapping(value, path, QUIET_HOURS_KEYS, what="quiet_hours")
    if not isinstance(value, dict):
        return None
    for key in ("from", "to"):
        if q.get(key) is None:
            c.error(path, f'quiet_hours needs \'{key}\' (e.g. from: "21:00", to: "08:00")')
    start = c.field(q, path, "from", quiet.parse_clock_time, -1)
    end = c.field(q, path, "to", quiet.parse_clock_time, -1)
    timezone = c.field(q, path, "timezone", quiet.parse_timezone, "recipient")
    if start < 0 or end < 0:
        return None
    if start == end:
        c.error((*path, "to"), "quiet_hours 'from' and 'to' are the same time: no window")
        return None
    return QuietHours(start, end, timezone)


def encoding_mode(
    c: Checker, section: Mapping[str, Any], path: yamlsource.Path, otp: bool, default: Any
) -> Any:
    """``encoding`` of ``section`` (``auto`` or ``transliterate``); ``transliterate`` is
    refused where ``otp`` (the category otp, or a rule matching it)."""
    mode = c.field(section, path, "encoding", check.encoding_mode, default)
    if mode == "transliterate" and otp:
        c.error(
            (*path, "encoding"),
            "encoding: transliterate is refused for otp: a code must arrive exactly as "
            "written (use it for marketing or transactional)",
        )
        return default
    return mode


def rule_encoding(c: Checker, r: Mapping[str, Any], rpath: yamlsource.Path) -> Any:
    """A rule's ``encoding`` (None: its category's).  Refused when its match names otp; a
    rule matching every category transliterates none of its otp messages (the runtime
    skips otp)."""
    match = r.get("match")
    named = match.get("category") if isinstance(match, dict) else None
    names = [named] if isinstance(named, str) else named if isinstance(named, list) else []
    return encoding_mode(c, r, rpath, "otp" in names, None)
