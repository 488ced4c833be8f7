"""The log levels the commands accept (``smsroute worker`` and ``python -m smsroute.outbox``)."""

from __future__ import annotations

import logging


def log_level_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a ``--log-level`` (None: a level logging knows, in
    any case)."""
    if text.upper() in logging.getLevelNamesMapping():
        return None
    return f"{text!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
