"""Opt-out lists in and out: ``router.optouts`` and ``smsroute optouts import|export|list``.

Numbers opt out by replying STOP (:mod:`smsroute.optout`), by a provider saying so
(Twilio 21610, Telnyx 40300: see :attr:`Reply.opted_out`), or by a list kept
elsewhere: a provider's export, the business's own suppression list.  This module
brings such lists in and writes ours out, as CSV:

- UTF-8 (a byte order mark is allowed), comma-separated, rows quoted as
  spreadsheets write them;
- the first row is a header whose first column is ``number``; further columns
  (``opted_out_at``, ``source``, ...) are allowed and ignored;
- every other row holds one number in its first column, in any format
  phonenumbers reads (``+14155550100``, ``+1 (415) 555-0100``; without
  ``+country``, ``defaults.default_region`` applies); blank rows are skipped.

An opt-out is of the number: it gets no message of the categories of
``defaults.opt_out_categories`` (marketing and transactional unless the config
says otherwise), whatever the source.  An import is all or nothing: the first bad
row raises :class:`OptOutFileError` naming its row (numbers masked) and nothing
is imported.  With ``state: {backend: redis}`` the list is the one every replica
shares: an import in one process is obeyed by all within ``sync_interval``
(:meth:`OptOuts.flush` writes it at once).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from typing import Protocol

from smsroute.config import Config
from smsroute.errors import InvalidNumber, SmsrouteError, StateBackendUnavailable
from smsroute.numbers import normalize
from smsroute.optout import OptOutStore

__all__ = ["HEADER", "MAX_ROWS", "OptOutFileError", "OptOuts", "read_csv", "write_csv"]

#: The first column's name in the header row.
HEADER = "number"
#: Rows an import takes at most (a bigger list: split it).
MAX_ROWS = 1_000_000
#: Characters a cell may hold (csv's own limit is 128 KiB).
_MAX_FIELD = 1024


class OptOutFileError(SmsrouteError, ValueError):
    """An opt-out CSV that cannot be imported: the message names the row and says why
    (numbers masked), and nothing was imported."""


class _Flushable(Protocol):
    async def flush(self) -> bool: ...


def read_csv(
    data: bytes | str, default_region: str | None = None, *, source: str = "the CSV"
) -> list[str]:
    """The E.164 numbers of an opt-out CSV (see the module docstring for the format),
    in file order without repeats; :class:`OptOutFileError` for anything else."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise OptOutFileError(
                f"{source}: not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV"
            ) from None
    else:
        text = data.removeprefix("\ufeff")
    if "\x00" in text:
        raise OptOutFileError(f"{source}: holds NUL characters: it is not a CSV text file")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    numbers: dict[str, None] = {}
    header = False
    try:
        for cells in reader:
            row = reader.line_num
            if any(len(cell) > _MAX_FIELD for cell in cells):
                raise OptOutFileError(
                    f"{source}: row {row}: a cell longer than {_MAX_FIELD} characters"
                )
            if not any(cell.strip() for cell in cells):
                continue  # a blank row
            if not header:
                first = cells[0].strip().lower()
                if first != HEADER:
                    raise OptOutFileError(
                        f"{source}: row {row}: the first row must be a header whose first "
                        f"column is '{HEADER}' (e.g. 'number' or 'number,source')"
                    )
                header = True
                continue
            raw = cells[0].strip()
            if not raw:
                raise OptOutFileError(
                    f"{source}: row {row}: the number column is empty (write one number "
                    "per row, or delete the row)"
                )
            try:
                e164 = normalize(raw, default_region).e164
            except InvalidNumber as exc:
                raise OptOutFileError(f"{source}: row {row}: {exc}") from None
            numbers[e164] = None
            if len(numbers) > MAX_ROWS:
                raise OptOutFileError(
                    f"{source}: more than {MAX_ROWS:,} numbers: split the list into files"
                )
    except csv.Error as exc:
        raise OptOutFileError(
            f"{source}: row {reader.line_num or 1}: not valid CSV ({exc})"
        ) from None
    if not header:
        raise OptOutFileError(f"{source}: empty: the first row must be the header '{HEADER}'")
    return list(numbers)


def write_csv(numbers: Iterable[str]) -> str:
    """An opt-out CSV of ``numbers`` (header ``number``, one E.164 number a row)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([HEADER])
    writer.writerows([n] for n in numbers)
    return out.getvalue()


class OptOuts:
    """A router's opt-out list (``router.optouts``): who gets no message of the
    categories of ``defaults.opt_out_categories``.

    >>> added = router.optouts.import_csv(Path("suppressed.csv").read_bytes())
    >>> "+14155550100" in router.optouts
    True
    >>> Path("optouts.csv").write_text(router.optouts.export_csv())

    Numbers may be written in any format (``defaults.default_region`` applies to
    those without ``+country``); a number that is not one raises
    :class:`InvalidNumber`.  The store is the state backend's: with Redis, shared
    by every replica.
    """

    def __init__(self, store: OptOutStore, config: Callable[[], Config]) -> None:
        self._store = store
        self._config = config

    def _e164(self, number: str) -> str:
        return normalize(number, self._config().defaults.default_region).e164

    def __contains__(self, number: object) -> bool:
        """Whether ``number`` opted out (by STOP, a provider's answer or an import)."""
        if not isinstance(number, str):
            return False
        return self._e164(number) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def add(self, number: str) -> None:
        """Opt ``number`` out (as if it had replied STOP)."""
        self._store.opt_out(self._e164(number))

    def remove(self, number: str) -> None:
        """Opt ``number`` back in (as if it had replied START)."""
        self._store.opt_in(self._e164(number))

    def list(self) -> list[str]:
        """Every opted-out number (E.164), sorted."""
        return sorted(self._store.numbers())

    def import_csv(self, data: bytes | str, *, source: str = "the CSV") -> int:
        """Opt out every number of the CSV ``data`` (see :mod:`smsroute.optout_io` for
        the format); returns how many were not opted out before.  All or nothing: a bad
        row raises :class:`OptOutFileError` (``source`` names the file in it) and no
        number is imported."""
        numbers = read_csv(data, self._config().defaults.default_region, source=source)
        store = self._store
        new = [n for n in numbers if n not in store]
        for number in new:
            store.opt_out(number)
        return len(new)

    def export_csv(self) -> str:
        """The list as CSV, in the format :meth:`import_csv` reads."""
        return write_csv(self.list())

    async def flush(self) -> None:
        """Write changes made here to the shared store now (Redis; nothing to do in
        memory).  Raises :class:`StateBackendUnavailable` when they could not be
        written (they stay pending and go with the next sync)."""
        flush: Callable[[], object] | None = getattr(self._store, "flush", None)
        if flush is None:
            return
        store: _Flushable = self._store  # type: ignore[assignment]
        if not await store.flush():
            raise StateBackendUnavailable(
                "the opt-outs could not be written to Redis: check that it is reachable "
                "(they are written when it is back, if this process is still running)"
            )
