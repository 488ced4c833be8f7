"""Reading a stored record back: every field checked, what is wrong named, never shown.

A store keeps what smsroute wrote, unless another program, another version, a
manual edit or a damaged file changed it.  Both stores read their records
through these functions:

    queued        a record a worker is about to send: a field that cannot be
                  what smsroute wrote raises :class:`RecordDamaged` naming the
                  field (the store dead-letters the message; the others go on)
    moment, text  for what a person reads (status, dead letters): the best
                  reading there is, never an exception
    seal, sealed  the checksum a SQLite record keeps of its id and message, and its
                  check (a byte changed that left valid text: a digit of a number)

Nothing here puts a field's value in a message: it may be a number or a text.
"""

from __future__ import annotations

import datetime
import json
import math
import zlib
from typing import Any

from smsroute.message import Attempt, Message, Outcome
from smsroute.outbox.store import PRIORITY_LEVELS, QueuedMessage

#: Shown for a time that cannot be read (out of range, not a number): the epoch.
UNKNOWN_TIME = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

#: What a damaged record's dead letter says and its log line asks for.
REMEDY = "fix the record (or enqueue the message anew) and requeue it"
#: The same for a record whose seal does not match (which field changed is not known).
SEAL_REMEDY = (
    "enqueue the message anew (or fix the record by hand, set its seal to NULL, and requeue it)"
)


class RecordDamaged(ValueError):
    """A stored field is not what smsroute writes there: ``field`` and ``problem`` say
    which and how (never its value); ``remedy``, what a person does about it."""

    def __init__(self, field: str, problem: str, remedy: str = REMEDY) -> None:
        self.field = field
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"its field {field} {problem}")

    def reason(self) -> str:
        """The dead letter's reason."""
        return f"the outbox record is damaged: its field {self.field} {self.problem}"


_SEP = "\x1f"


def seal(
    message_id: object, to: object, body: object, sender: object, category: object,
    tags: object, meta: object,
) -> int:  # fmt: skip
    """The checksum (CRC-32) a SQLite record keeps of what it sends and to whom, as stored
    (tags and metadata as their JSON text): a byte of them changed on disk, even one that
    leaves valid UTF-8 (a digit of the number), no longer matches it.  For damage, not
    for tampering: whoever may write the file may write the seal too."""
    # one join (None as ""): this runs at every enqueue and lease, and an f-string of seven
    # parts costs half as much again; the read fields are checked as text before
    text = _SEP.join(
        (message_id, to, body, sender or "", category, tags or "", meta or "")  # type: ignore[arg-type]
    )
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


def sealed(row_seal: object, message_id: object, *fields: object) -> None:
    """Raise :class:`RecordDamaged` unless ``row_seal`` is :func:`seal` of the record's
    ``message_id`` and ``fields`` (to, body, sender, category, tags, metadata).  A record
    without a seal (NULL: written before seals, or by an earlier version) is not checked."""
    if row_seal is None:
        return
    try:
        matches = not isinstance(row_seal, bool) and row_seal == seal(message_id, *fields)
    except TypeError:  # a field that is not text (another type, bytes): not what was sealed
        matches = False
    if not matches:
        raise RecordDamaged(
            "seal",
            "does not match the message it seals (a byte of its id, number, text, sender, "
            "category, tags or metadata changed in the file; which one is not known)",
            SEAL_REMEDY,
        )


def decode(raw: bytes) -> str:
    """SQLite's ``text_factory``: text that is not UTF-8 is kept (as surrogates), so
    that :func:`queued` names its field instead of the whole read failing."""
    return raw.decode("utf-8", "surrogateescape")


def _is_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: object, field: str, *, empty: bool = False) -> str:
    if value is None:
        raise RecordDamaged(field, "is missing")
    if not _is_text(value):
        raise RecordDamaged(field, "is not text (UTF-8)")
    assert isinstance(value, str)
    if not empty and not value.strip():
        raise RecordDamaged(field, "is empty")
    return value


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecordDamaged(field, "is not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise RecordDamaged(field, "is not a number") from None
    if not math.isfinite(number):
        raise RecordDamaged(field, "is not a finite number")
    try:
        datetime.datetime.fromtimestamp(number, datetime.UTC)
    except (ValueError, OverflowError, OSError):
        raise RecordDamaged(field, "is not a time (out of range)") from None
    return number


def _whole(value: object, field: str, allowed: range | tuple[int, ...]) -> int:
    if isinstance(value, bool):
        raise RecordDamaged(field, "is not a whole number")
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise RecordDamaged(field, "is not a whole number") from None
    if not isinstance(value, int):
        raise RecordDamaged(field, "is not a whole number")
    if value not in allowed:
        raise RecordDamaged(field, "is out of range")
    return value


def _json(value: object, field: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    if value is None or value == "":
        return kind()
    if not _is_text(value):
        raise RecordDamaged(field, "is not text (UTF-8)")
    try:
        parsed = json.loads(str(value))
    except (ValueError, RecursionError):
        raise RecordDamaged(field, "is not valid JSON") from None
    if not isinstance(parsed, kind):
        raise RecordDamaged(field, f"is not a JSON {'list' if kind is list else 'object'}")
    return parsed


def queued(
    message_id: object,
    priority: object,
    due: object,
    expires: object,
    tries: object,
    enqueued_at: object,
    to: object,
    body: object,
    sender: object,
    category: object,
    tags: object,
    meta: object,
) -> QueuedMessage:
    """A leased record as the worker needs it, every field checked.

    Raises :class:`RecordDamaged` for the first field that cannot be what
    smsroute wrote (Redis gives every field as text: numbers are parsed).
    """
    mid = _text(message_id, "id")
    tag_list = _json(tags, "tags", list)
    if not all(_is_text(t) for t in tag_list):
        raise RecordDamaged("tags", "holds something other than text")
    message = Message(
        to=_text(to, "to"),
        text=_text(body, "body"),
        sender=None if sender is None or sender == "" else _text(sender, "sender"),
        category=_text(category, "category"),
        tags=tuple(tag_list),
        metadata=_json(meta, "metadata", dict),
    )
    return QueuedMessage(
        message_id=mid,
        message=message,
        priority=_whole(priority, "priority", PRIORITY_LEVELS),
        due=_number(due, "due"),
        expires=None if expires is None or expires == "" else _number(expires, "expires"),
        tries=_whole(tries, "tries", range(0, 1 << 31)),
        enqueued_at=_number(enqueued_at, "enqueued_at"),
    )


def moment(value: object) -> datetime.datetime:
    """A stored time as an aware UTC datetime; :data:`UNKNOWN_TIME` when it cannot be one."""
    try:
        return datetime.datetime.fromtimestamp(_number(value, "time"), datetime.UTC)
    except RecordDamaged:
        return UNKNOWN_TIME


def text(value: object) -> str | None:
    """A stored text field for a person to read: None stays None, what is not UTF-8
    text is shown with replacement characters."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if _is_text(value) else value.encode("utf-8", "replace").decode("utf-8")
    return str(value)


def whole(value: object) -> int:
    """A stored count for a person to read (0 when it is not one)."""
    try:
        return _whole(value, "count", range(0, 1 << 63))
    except RecordDamaged:
        return 0


def outcome(value: object) -> Outcome | None:
    """A stored outcome, or None when there is none or it is not one smsroute knows."""
    try:
        return Outcome(value) if value else None
    except ValueError:
        return None


def readable_message(
    to: object, body: object, sender: object, category: object, tags: object, meta: object
) -> Message:
    """A dead letter's message as well as it can be read (a damaged one is listed too)."""
    try:
        tag_list = tuple(t for t in _json(tags, "tags", list) if _is_text(t))
    except RecordDamaged:
        tag_list = ()
    try:
        metadata = _json(meta, "metadata", dict)
    except RecordDamaged:
        metadata = {}
    return Message(
        to=text(to) or "",
        text=text(body) or "",
        sender=text(sender) or None,
        category=text(category) or "",
        tags=tag_list,
        metadata=metadata,
    )


def attempt(fields: object) -> Attempt | None:
    """A stored provider attempt (provider, outcome, latency, status code, error code,
    detail, provider message id, retry after); None when it cannot be read."""
    if not isinstance(fields, list | tuple) or len(fields) != 8:
        return None
    provider, result, latency, status_code, error_code, detail, pmid, retry_after = fields
    known = outcome(result)
    if known is None or not _is_text(provider):
        return None
    try:
        seconds = float(latency)
        wait = None if retry_after is None else float(retry_after)
    except (TypeError, ValueError):
        return None
    return Attempt(
        str(provider),
        known,
        seconds,
        status_code if isinstance(status_code, int) and not isinstance(status_code, bool) else None,
        text(error_code),
        text(detail),
        text(pmid),
        wait,
    )
