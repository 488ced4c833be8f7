"""Every log record a test run writes, for the fuzz tests' "nothing leaked, no traceback"."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager


class Records(logging.Handler):
    """Every log record, at every level, as it would be written (traceback included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, self.format(record)))


@contextmanager
def every_log_record() -> Iterator[Records]:
    """Collect every record of every logger while the block runs."""
    handler = Records()
    root, ours = logging.getLogger(), logging.getLogger("smsroute")
    levels = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)  # the CLI's tests may have left it at ERROR
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


#: A whole phone number as smsroute would write one: ``+`` and 10 to 15 digits (a masked
#: one, ``+49151******89``, is not).
WHOLE_NUMBER = re.compile(r"(?<![\w*])\+\d{10,15}(?!\d)")


def whole_numbers(text: str) -> list[str]:
    """The whole phone numbers in ``text``."""
    return WHOLE_NUMBER.findall(text)


class NumberWatch(logging.Handler):
    """Every message smsroute's loggers write, for the check every test ends with
    (tests/conftest.py): no whole number in any of them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        if whole_numbers(text):
            self.leaks.append(f"{record.name} {record.levelname}: {text[:300]}")
