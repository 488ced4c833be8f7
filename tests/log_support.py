"""Every log record a test run writes, for the fuzz tests' "nothing leaked, no traceback"."""

from __future__ import annotations

import logging
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
