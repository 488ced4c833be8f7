"""Parsing of the human units a config is written in: durations, rates, percentages.

Each parser takes a YAML value and returns a number, or raises ``ValueError``
with a sentence the config loader puts next to file:line.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|sec|min)\s*$")
_RATE_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``5s``, ``2m``, ``1h`` or a bare number of seconds.

    >>> parse_duration("250ms")
    0.25
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms or 5s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 5s or 2m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_rate(value: object) -> float:
    """Events per second from ``100/s``, ``6000/m``, ``1/2s`` or a bare number per second.

    >>> parse_rate("6000/m")
    100.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a rate like 100/s, got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str) and (m := _RATE.match(value)):
        per = float(m.group(2) or 1) * _RATE_UNITS[m.group(3)]
        if per <= 0:
            raise ValueError(f"a rate's period must be positive, got {value!r}")
        rate = float(m.group(1)) / per
    else:
        raise ValueError(f"expected a rate like 100/s or 6000/m, got {value!r}")
    if rate <= 0:
        raise ValueError(f"a rate must be positive, got {value!r}")
    return rate


def parse_fraction(value: object) -> float:
    """A fraction in [0, 1] from ``50%`` or a number between 0 and 1.

    >>> parse_fraction("50%")
    0.5
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage like 50%, got {value!r}")
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str) and (m := _PERCENT.match(value)):
        fraction = float(m.group(1)) / 100
    else:
        raise ValueError(f"expected a percentage like 50% or a number from 0 to 1, got {value!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"expected a value from 0% to 100%, got {value!r}")
    return fraction
