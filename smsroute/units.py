"""Parsing of the human units a config is written in: durations, rates, percentages.

Each parser takes a YAML value and returns a finite number in a sane range, or
raises ``ValueError`` with a sentence the config loader puts next to file:line
(never another exception: ``.nan``, ``.inf`` and numbers too large for a float
are refused here).
"""

from __future__ import annotations

import math
import re

from smsroute.yamlsource import shown

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|sec|min)\s*$")
_RATE_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")

#: Longest duration accepted: ten years, in seconds.
MAX_DURATION = 10 * 365 * 24 * 3600.0
#: Highest rate accepted, per second.
MAX_RATE = 1e9


def _number(value: int | float) -> float:
    """``float(value)``; nan or inf when it is one, or too large for a float."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``5s``, ``2m``, ``1h`` or a bare number of seconds.

    >>> parse_duration("250ms")
    0.25
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms or 5s, got {shown(value)}")
    if isinstance(value, int | float):
        seconds = _number(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 5s or 2m, got {shown(value)}")
    if not math.isfinite(seconds):
        raise ValueError(
            f"expected a finite duration of at most 10 years, like 250ms or 5s, got {shown(value)}"
        )
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {shown(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"a duration must be at most 10 years (87600h), got {shown(value)}: write a shorter one"
        )
    return seconds


def parse_rate(value: object) -> float:
    """Events per second from ``100/s``, ``6000/m``, ``1/2s`` or a bare number per second.

    >>> parse_rate("6000/m")
    100.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a rate like 100/s, got {shown(value)}")
    if isinstance(value, int | float):
        rate = _number(value)
    elif isinstance(value, str) and (m := _RATE.match(value)):
        per = float(m.group(2) or 1) * _RATE_UNITS[m.group(3)]
        if not 0 < per < math.inf:
            raise ValueError(f"a rate's period must be positive and finite, got {shown(value)}")
        rate = float(m.group(1)) / per
    else:
        raise ValueError(f"expected a rate like 100/s or 6000/m, got {shown(value)}")
    if not math.isfinite(rate):
        raise ValueError(
            f"expected a finite rate of at most 1000000000/s, like 100/s, got {shown(value)}"
        )
    if rate <= 0:
        raise ValueError(f"a rate must be positive, got {shown(value)}")
    if rate > MAX_RATE:
        raise ValueError(f"a rate must be at most 1000000000/s, got {shown(value)}")
    return rate


def parse_fraction(value: object) -> float:
    """A fraction in [0, 1] from ``50%`` or a number between 0 and 1.

    >>> parse_fraction("50%")
    0.5
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage like 50%, got {shown(value)}")
    if isinstance(value, int | float):
        fraction = _number(value)
    elif isinstance(value, str) and (m := _PERCENT.match(value)):
        fraction = float(m.group(1)) / 100
    else:
        raise ValueError(
            f"expected a percentage like 50% or a number from 0 to 1, got {shown(value)}"
        )
    if not 0.0 <= fraction <= 1.0:  # nan too
        raise ValueError(f"expected a value from 0% to 100%, got {shown(value)}")
    return fraction
