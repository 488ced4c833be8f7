"""The default outbox store: one SQLite file in WAL mode, nothing to run.

The standard library's ``sqlite3`` runs on one thread of its own, so the event
loop never waits for the disk.  Why not aiosqlite: it too runs each connection
on its own thread, one call per hop; owning the thread lets operations that
arrive together commit together (group commit: a worker's acks, a burst of
concurrent enqueues), each under a savepoint so one failing operation does
not undo the others, and it adds no dependency.

Several processes may open the same file: an application enqueuing and a
worker process sending.  Every change is one ``BEGIN IMMEDIATE`` transaction,
so they serialise on SQLite's lock (waiting up to ``busy_timeout``).  With
``synchronous: normal`` (the default) a committed transaction survives the
process being killed; ``synchronous: full`` also survives a power cut, at
the price of an fsync per commit.

Schema (version 2: version 1 without ``seal``, added when such a file is opened)::

    messages   one row per message: its state machine (state, due, expires,
               tries, lease_owner, lease_until), what status() shows (status,
               provider, provider_message_id, error_code, reason, outcome) and
               the message itself (to_number, body, sender, category, tags,
               metadata) and its seal (:func:`records.seal`: a CRC-32 of the id and
               the message, checked at each lease; NULL in rows of schema 1).
               Partial indexes: pending by (priority, due), leased by lease_until,
               dead and sent by updated_at; idempotency_key unique.
    history    (message_id, at, status, provider, detail): every change after
               enqueue, receipts included, in the order recorded
    attempts   (message_id, try, provider, outcome, ...): provider attempts of every
               try that did not end at the first provider's acceptance
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from smsroute.errors import OutboxUnavailable
from smsroute.message import Attempt, DeliveryReport, MessageState, SendResult
from smsroute.outbox import records
from smsroute.outbox.records import RecordDamaged
from smsroute.outbox.store import (
    PRIORITY_LEVELS,
    DeadLetter,
    NewMessage,
    QueuedMessage,
    State,
    attempt_fields,
    encode_json,
)
from smsroute.status import RANK

log = logging.getLogger("smsroute.outbox")

T = TypeVar("T")
Synchronous = Literal["normal", "full"]

#: Operations committed in one transaction at most.
MAX_BATCH = 512
#: Seconds between two looks for unsent rows no lease would take (damaged ones).
SWEEP_EVERY = 600.0
#: Host parameters per statement at most (SQLite allows 32766; stay well below).
CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    due REAL NOT NULL,
    expires REAL,
    ttl REAL,
    tries INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    enqueued_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    error_code TEXT,
    reason TEXT,
    outcome TEXT,
    to_number TEXT NOT NULL,
    body TEXT NOT NULL,
    sender TEXT,
    category TEXT NOT NULL,
    tags TEXT,
    metadata TEXT,
    seal INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_pending ON messages (priority, due) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_until) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS messages_dead ON messages (updated_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS messages_sent ON messages (updated_at) WHERE state = 'sent';
CREATE TABLE IF NOT EXISTS history (
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    status TEXT NOT NULL,
    provider TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS history_message ON history (message_id);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    try INTEGER NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,
    latency REAL NOT NULL,
    status_code INTEGER,
    error_code TEXT,
    detail TEXT,
    provider_message_id TEXT,
    retry_after REAL
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id);
PRAGMA user_version = 2;
"""

_INSERT = (
    "INSERT OR IGNORE INTO messages (id, idempotency_key, state, priority, due, expires, ttl,"
    " enqueued_at, updated_at, status, to_number, body, sender, category, tags, metadata,"
    " seal) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)
_QUEUED = (
    "SELECT seq, id, priority, due, expires, tries, enqueued_at,"
    " to_number, body, sender, category, tags, metadata, seal FROM messages"
)
_HISTORY = "INSERT INTO history (message_id, at, status, provider, detail) VALUES (?, ?, ?, ?, ?)"
_ATTEMPT = (
    "INSERT INTO attempts (message_id, try, provider, outcome, latency, status_code,"
    " error_code, detail, provider_message_id, retry_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(item: NewMessage) -> tuple[Any, ...]:
    m = item.message
    tags = encode_json(list(m.tags)) if m.tags else None
    meta = encode_json(dict(m.metadata)) if m.metadata else None
    return (
        item.message_id,
        item.idempotency_key,
        item.priority,
        item.due,
        item.expires,
        item.ttl,
        item.enqueued_at,
        item.enqueued_at,
        m.to,
        m.text,
        m.sender,
        m.category,
        tags,
        meta,
        records.seal(item.message_id, m.to, m.text, m.sender, m.category, tags, meta),
    )


def _queued(row: Sequence[Any]) -> QueuedMessage:
    """A leased row (``_QUEUED``'s columns), checked (every field, then the seal): raises
    :class:`RecordDamaged`."""
    queued = records.queued(row[1], *row[2:7], *row[7:13])
    records.sealed(row[13], row[1], *row[7:13])
    return queued


#: SQLite's primary result codes met here (``sqlite3.Error.sqlite_errorcode & 0xFF``).
_PERM = 3
_BUSY = 5
_LOCKED = 6
_READONLY = 8
_IOERR = 10
_CORRUPT = 11
_FULL = 13
_CANTOPEN = 14
_NOTADB = 26


def damaged_file(path: str, what: str) -> OutboxUnavailable:
    """The clear error for a file SQLite cannot read as a database: ``what`` is wrong."""
    return OutboxUnavailable(
        f"the outbox database {path} {what}: move it aside (mv {path} {path}.broken, and "
        "its -wal and -shm files if any): a new one is created at the next start (sqlite3 "
        f"{path}.broken .recover may save the messages it held)"
    )


def _schema_damaged(exc: BaseException) -> bool:
    """Whether ``exc`` is sqlite3 failing to decode its own error about a damaged schema
    (the damaged bytes are not UTF-8: a UnicodeDecodeError instead of DatabaseError)."""
    return isinstance(exc, UnicodeDecodeError) and exc.object.startswith(
        b"malformed database schema"
    )


def unavailable(path: str, exc: sqlite3.Error, busy_timeout: float) -> OutboxUnavailable | None:
    """The clear error for ``exc`` when the file itself is the problem, else None (a bug).

    Says which file and what to do; never the rows involved.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_CORRUPT, _NOTADB):
        return damaged_file(
            path,
            "is not an SQLite database"
            if primary == _NOTADB
            else "is damaged (the database disk image is malformed)",
        )
    if primary in (_BUSY, _LOCKED):
        what = f"is locked by another process (waited busy_timeout={busy_timeout:g} s)"
        todo = (
            "find the process holding a write transaction on it (a sqlite3 shell, a backup) "
            "and end it; the next call tries again"
        )
    elif primary in (_PERM, _READONLY, _CANTOPEN):
        folder = os.path.dirname(os.path.abspath(path))
        what = f"cannot be opened for writing ({exc})"
        todo = f"check that the folder {folder} exists and that this user may write in it"
    elif primary in (_FULL, _IOERR):
        what = f"cannot be written ({exc})"
        todo = "free space on its disk (or fix the disk); the next call tries again"
    else:
        return None
    return OutboxUnavailable(f"the outbox database {path} {what}: {todo}")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- the thread that owns the connection -----------------------------------------------


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _fatal(exc: Exception) -> bool:
    """An error of the file (locked, damaged, full), which fails every job, not one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error)
        and isinstance(code, int)
        and (code & 0xFF in (_BUSY, _LOCKED, _CORRUPT, _NOTADB, _FULL, _IOERR, _READONLY))
    ) or _schema_damaged(exc)


def _undecodable(error: BaseException | None) -> bool:
    """Whether ``error`` is sqlite3's on reading text that is not UTF-8."""
    return isinstance(error, sqlite3.OperationalError) and str(error).startswith(
        "Could not decode to UTF-8"
    )


def _settle(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in done:
        if future.done():  # the caller was cancelled; the operation ran all the same
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _run_batch(
    conn: sqlite3.Connection, batch: list[_Job], path: str, busy_timeout: float
) -> list[tuple[_Job, Any, BaseException | None]]:
    """Run ``batch`` in one transaction, each job in a savepoint of its own when there
    are several (a job that fails is undone alone); a failure of the file fails them all."""
    done: list[tuple[_Job, Any, BaseException | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        if len(batch) == 1:
            done.append((batch[0], batch[0].fn(conn), None))
        else:
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    if _fatal(exc):  # the file, not this job: the whole batch fails
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    done.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    done.append((job, value, None))
        conn.execute("COMMIT")
    except Exception as exc:  # nothing of the batch was written
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as again:
                log.error("rollback failed in the outbox store %s: %s", path, again)
        clear = (
            unavailable(path, exc, busy_timeout)
            if isinstance(exc, sqlite3.Error)
            else damaged_file(path, "is damaged (its schema cannot be read)")
            if _schema_damaged(exc)
            else None
        )
        error: BaseException = exc if clear is None else clear
        return [(job, None, error) for job in batch]
    return done


#: Each table's columns, as SCHEMA makes them.
COLUMNS = {
    table: tuple(line.split()[0] for line in body.strip().splitlines())
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", SCHEMA, re.S)
}


def _names(conn: sqlite3.Connection, sql: str) -> list[str]:
    """The first column of ``sql``'s rows, read as bytes: a name damaged into text that
    is not UTF-8 does not match (instead of failing the read with the text in its error)."""
    conn.text_factory = bytes
    try:
        return [
            row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else str(row[0])
            for row in conn.execute(sql)
        ]
    finally:
        conn.text_factory = str


def _missing_table(conn: sqlite3.Connection) -> str | None:
    """What is wrong with the tables of a file that has some (before SCHEMA makes them):
    a table renamed by a damaged byte of the schema's text would be made anew, empty,
    beside the messages it held."""
    found = set(_names(conn, "SELECT name FROM sqlite_master WHERE type = 'table'"))
    missing = sorted(set(COLUMNS) - found)
    return f"lacks its table {missing[0]}" if found and missing else None


def _missing_column(conn: sqlite3.Connection) -> str | None:
    """A column SCHEMA makes that a table lacks (a damaged byte of the schema's text,
    another program): every query naming it would fail."""
    for table, columns in COLUMNS.items():
        found = set(_names(conn, f"SELECT name FROM pragma_table_info('{table}')"))
        for column in columns:
            # seal: a file of schema 1 lacks it (_add_seal adds it), but only such a file:
            # beside a column smsroute does not make, it is the seal renamed by damage
            if column not in found and (column != "seal" or found - set(columns)):
                return f"lacks the column {column} of its table {table}"
    return None


def _add_seal(conn: sqlite3.Connection) -> None:
    """Give a file made by an earlier version (schema 1) its ``seal`` column: its rows
    keep none (NULL: not checked), new rows have one.  Two processes opening it at once
    both try; the second finds the column there."""
    if "seal" in _names(conn, "SELECT name FROM pragma_table_info('messages')"):
        return
    try:
        conn.execute("ALTER TABLE messages ADD COLUMN seal INTEGER")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


class _Connection:
    """One sqlite3 connection on its own thread; jobs that queue up commit together.

    Jobs submitted during one turn of the event loop cross to the thread in
    one hand-over: waking the thread once per job costs more than the job
    (each wake-up trades the GIL back and forth).
    """

    def __init__(self, path: str, synchronous: Synchronous, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped = threading.Event()

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError(f"the outbox store {self.path} is closed")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"smsroute-outbox:{os.path.basename(self.path)}", daemon=True
            )
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._hand_over)
        self._pending.append(_Job(fn, future, loop))
        return await future

    def _hand_over(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._jobs.put(jobs)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._hand_over()
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._stopped.wait)

    def _connect(self) -> sqlite3.Connection:
        """Open the file and make the schema; raises :class:`OutboxUnavailable` saying why not."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            problem = _missing_table(conn)
            if problem is None:
                conn.executescript(SCHEMA)
                problem = _missing_column(conn)
            if problem is not None:
                conn.close()
                raise damaged_file(
                    self.path,
                    f"{problem} (its schema was damaged, or another program wrote the file)",
                )
            _add_seal(conn)
        except UnicodeDecodeError:  # sqlite3's own error about a damaged schema, undecodable
            if conn is not None:
                conn.close()
            raise damaged_file(self.path, "is damaged (its schema cannot be read)") from None
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            clear = unavailable(self.path, exc, self.busy_timeout)
            if clear is None and _undecodable(exc):  # the schema's text (its error quotes it)
                clear = damaged_file(self.path, "is damaged (its schema is not UTF-8 text)")
            if clear is None:
                folder = os.path.dirname(os.path.abspath(self.path))
                said = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                clear = OutboxUnavailable(
                    f"the outbox database {self.path} cannot be opened ({said}): check that the "
                    f"folder {folder} exists and is writable"
                )
            raise clear from None
        return conn

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                jobs = self._jobs.get()
                if jobs is None:
                    break
                batch = list(jobs)
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch += more
                if conn is None:  # not yet, or the last try failed: every batch tries again
                    try:
                        conn = self._connect()
                    except Exception as exc:
                        self._deliver([(j, None, exc) for j in batch])
                if conn is not None:
                    self._deliver(self._execute(conn, batch, self.path, self.busy_timeout))
                if stop:
                    break
        finally:
            if conn is not None:
                conn.close()
            self._stopped.set()

    @staticmethod
    def _execute(
        conn: sqlite3.Connection, batch: list[_Job], path: str, busy_timeout: float
    ) -> list[tuple[_Job, Any, BaseException | None]]:
        """Run ``batch`` in one transaction.  A job that met text that is not UTF-8
        (another program's, or a damaged page) runs again, alone, reading text with
        :func:`records.decode`, so that :mod:`~smsroute.outbox.records` names the field
        instead of the read failing (and sqlite's error quoting the text); the C
        decoder stays for every other read."""
        done = _run_batch(conn, batch, path, busy_timeout)
        again = [job for job, _, error in done if _undecodable(error)]
        if not again:
            return done
        conn.text_factory = records.decode
        try:
            redone = {id(job): (job, value, error) for job, value, error in
                      _run_batch(conn, again, path, busy_timeout)}  # fmt: skip
        finally:
            conn.text_factory = str
        return [redone.get(id(job), (job, value, error)) for job, value, error in done]

    @staticmethod
    def _deliver(done: list[tuple[_Job, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, value, error in done:
            by_loop.setdefault(job.loop, []).append((job.future, value, error))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, items)


# -- the store ---------------------------------------------------------------------------


class SQLiteOutbox:
    """The outbox in one SQLite file (see the module docstring).

    >>> store = SQLiteOutbox("smsroute-outbox.db")
    >>> counts = await store.counts()      # {'pending': 12, 'sent': 3400, ...}
    >>> await store.close()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = os.fspath(path)
        self._db = _Connection(self.path, synchronous, busy_timeout)
        #: When ``lease`` next looks for rows no lease would take (store time).
        self._next_sweep = -math.inf

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.path!r})"

    async def close(self) -> None:
        await self._db.close()

    # -- writing messages in ---------------------------------------------------------

    async def enqueue(self, item: NewMessage) -> str:
        row = _row(item)

        def run(conn: sqlite3.Connection) -> str:
            cur = conn.execute(_INSERT, row)
            if cur.rowcount == 1 or item.idempotency_key is None:
                return item.message_id
            found = conn.execute(
                "SELECT id FROM messages WHERE idempotency_key = ?", (item.idempotency_key,)
            ).fetchone()
            return str(found[0])

        return await self._db.call(run)

    async def enqueue_many(self, items: Sequence[NewMessage]) -> list[str]:
        rows = [_row(item) for item in items]
        keys = list(dict.fromkeys(i.idempotency_key for i in items if i.idempotency_key))

        def run(conn: sqlite3.Connection) -> list[str]:
            conn.executemany(_INSERT, rows)
            if not keys:
                return [item.message_id for item in items]
            found: dict[str, str] = {}
            for chunk in _chunks(keys):
                found.update(
                    conn.execute(
                        "SELECT idempotency_key, id FROM messages"
                        f" WHERE idempotency_key IN ({_marks(len(chunk))})",
                        chunk,
                    ).fetchall()
                )
            return [
                found[item.idempotency_key] if item.idempotency_key else item.message_id
                for item in items
            ]

        return await self._db.call(run)

    # -- leases ------------------------------------------------------------------------

    async def lease(self, owner: str, limit: int, now: float, until: float) -> list[QueuedMessage]:
        sweep = now >= self._next_sweep

        def run(conn: sqlite3.Connection) -> tuple[list[QueuedMessage], list[tuple[str, str, str]]]:
            # in SQL, before the leases go: the id as stored (it may not be UTF-8, which
            # Python could not send back) and the holder (RETURNING would give it NULL)
            conn.execute(
                "INSERT INTO history (message_id, at, status, provider, detail)"
                " SELECT id, ?, 'lease_expired', NULL, 'the lease of ' || lease_owner || ' expired'"
                " FROM messages WHERE state = 'leased' AND lease_until <= ?",
                (now, now),
            )
            conn.execute(
                "UPDATE messages SET state = 'pending', lease_owner = NULL, lease_until = NULL"
                " WHERE state = 'leased' AND lease_until <= ?",
                (now,),
            )
            damaged = self._sweep(conn) if sweep else []
            leased: list[QueuedMessage] = []
            seqs: list[int] = []
            for level in PRIORITY_LEVELS:
                for row in conn.execute(
                    f"{_QUEUED} WHERE state = 'pending' AND priority = ? AND due <= ?"
                    " ORDER BY due, seq LIMIT ?",
                    (level, now, limit - len(leased)),
                ).fetchall():
                    try:
                        leased.append(_queued(row))
                    except RecordDamaged as exc:
                        damaged.append((row[0], row[1], exc.reason(), exc.remedy))
                    else:
                        seqs.append(row[0])
                if len(leased) >= limit:
                    break
            for chunk in _chunks(seqs):
                conn.execute(
                    "UPDATE messages SET state = 'leased', lease_owner = ?, lease_until = ?"
                    f" WHERE seq IN ({_marks(len(chunk))})",
                    (owner, until, *chunk),
                )
            for seq, _, reason, _ in damaged:  # out of the queue, for a person to look at
                conn.execute(
                    "UPDATE messages SET state = 'dead', status = 'dead', reason = ?,"
                    " lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE seq = ?",
                    (reason, now, seq),
                )
                conn.execute(  # the id as stored: it may not be UTF-8
                    "INSERT INTO history (message_id, at, status, provider, detail)"
                    " SELECT id, ?, 'dead', NULL, ? FROM messages WHERE seq = ?",
                    (now, reason, seq),
                )
            return leased, [
                (records.text(mid) or "?", reason, remedy) for _, mid, reason, remedy in damaged
            ]

        leased, damaged = await self._db.call(run)
        if sweep:
            self._next_sweep = now + SWEEP_EVERY
        for mid, reason, remedy in damaged:
            log.error(
                "outbox: message %s in %s cannot be sent: %s. It is a dead letter now: "
                "%s (router.requeue(%r)).",
                mid,
                self.path,
                reason.removeprefix("the outbox record is damaged: "),
                remedy,
                mid,
            )
        return leased

    @staticmethod
    def _sweep(conn: sqlite3.Connection) -> list[tuple[int, Any, str, str]]:
        """Unsent rows no lease would ever take (a state, priority or time smsroute does
        not write): (seq, id, the dead letter's reason, its remedy) of each."""
        found: list[tuple[int, Any, str, str]] = []
        for seq, mid, state, prio_ok, due_ok in conn.execute(
            "SELECT seq, id, state, priority IN (0, 1, 2, 3), typeof(due) IN ('integer', 'real')"
            " FROM messages WHERE state NOT IN ('sent', 'dead') AND NOT ("
            " state IN ('pending', 'leased') AND priority IN (0, 1, 2, 3)"
            " AND typeof(due) IN ('integer', 'real')"
            " AND (state = 'pending' OR typeof(lease_until) IN ('integer', 'real')))"
        ):
            if state not in ("pending", "leased"):
                damage = RecordDamaged("state", "is not one the outbox knows")
            elif not prio_ok:
                damage = RecordDamaged("priority", "is out of range")
            elif not due_ok:
                damage = RecordDamaged("due", "is not a number")
            else:
                damage = RecordDamaged("lease_until", "is not a number")
            found.append((seq, mid, damage.reason(), damage.remedy))
        return found

    async def renew(self, owner: str, message_ids: Collection[str], until: float) -> int:
        ids = list(message_ids)

        def run(conn: sqlite3.Connection) -> int:
            held = 0
            for chunk in _chunks(ids):
                held += conn.execute(
                    "UPDATE messages SET lease_until = ? WHERE state = 'leased'"
                    f" AND lease_owner = ? AND id IN ({_marks(len(chunk))})",
                    (until, owner, *chunk),
                ).rowcount
            return held

        return await self._db.call(run) if ids else 0

    async def release(self, owner: str, message_ids: Collection[str] | None, now: float) -> int:
        ids = None if message_ids is None else list(message_ids)
        sql = (
            "UPDATE messages SET state = 'pending', lease_owner = NULL, lease_until = NULL"
            " WHERE state = 'leased' AND lease_owner = ?"
        )

        def run(conn: sqlite3.Connection) -> int:
            if ids is None:
                return conn.execute(sql, (owner,)).rowcount
            released = 0
            for chunk in _chunks(ids):
                released += conn.execute(
                    f"{sql} AND id IN ({_marks(len(chunk))})", (owner, *chunk)
                ).rowcount
            return released

        return await self._db.call(run) if ids is None or ids else 0

    # -- outcomes ----------------------------------------------------------------------

    async def ack(self, message_id: str, owner: str, result: SendResult, now: float) -> bool:
        # A first provider's acceptance says all there is to say; keep attempts that failed.
        attempts = result.attempts if len(result.attempts) > 1 else ()

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE messages SET state = 'sent', tries = tries + 1,"
                " status = CASE WHEN status IN ('pending', 'retrying') THEN 'accepted' ELSE status END,"
                " provider = ?, provider_message_id = ?, outcome = 'accepted', reason = NULL,"
                " lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND state IN ('pending', 'leased') RETURNING tries",
                (result.provider, result.provider_message_id, now, message_id),
            ).fetchone()
            if row is None:  # already sent: this was a duplicate send (a lost lease)
                tries = self._tries(conn, message_id) + 1
                detail = "sent again: the message was already final"
            else:
                tries, detail = row[0], None
            conn.execute(_HISTORY, (message_id, now, "accepted", result.provider, detail))
            if attempts:
                self._attempts(conn, message_id, tries, attempts)
            return row is not None

        return await self._db.call(run)

    async def retry(
        self,
        message_id: str,
        owner: str,
        due: float,
        reason: str,
        result: SendResult | None,
        now: float,
    ) -> bool:
        return await self._db.call(
            lambda conn: self._finish(conn, message_id, owner, "pending", due, reason, result, now)
        )

    async def dead(
        self, message_id: str, owner: str, reason: str, result: SendResult | None, now: float
    ) -> bool:
        return await self._db.call(
            lambda conn: self._finish(conn, message_id, owner, "dead", None, reason, result, now)
        )

    def _finish(
        self,
        conn: sqlite3.Connection,
        message_id: str,
        owner: str,
        state: Literal["pending", "dead"],
        due: float | None,
        reason: str,
        result: SendResult | None,
        now: float,
    ) -> bool:
        tried = 1 if result is not None else 0
        outcome = result.outcome.value if result is not None and result.outcome else None
        provider = result.attempts[-1].provider if result is not None and result.attempts else None
        status = "retrying" if state == "pending" else "dead"
        row = conn.execute(
            "UPDATE messages SET state = ?, status = ?, due = coalesce(?, due), tries = tries + ?,"
            " reason = ?, outcome = coalesce(?, outcome), lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ? AND state = 'leased' AND lease_owner = ? RETURNING tries",
            (state, status, due, tried, reason, outcome, now, message_id, owner),
        ).fetchone()
        if row is None:  # the lease was lost: whoever holds the message now decides
            tries = self._tries(conn, message_id) + tried
            conn.execute(_HISTORY, (message_id, now, "lease_lost", provider, reason))
        else:
            tries = row[0]
            conn.execute(_HISTORY, (message_id, now, status, provider, reason))
        if result is not None:
            self._attempts(conn, message_id, tries, result.attempts)
        return row is not None

    @staticmethod
    def _tries(conn: sqlite3.Connection, message_id: str) -> int:
        row = conn.execute("SELECT tries FROM messages WHERE id = ?", (message_id,)).fetchone()
        return records.whole(row[0]) if row is not None else 0

    @staticmethod
    def _attempts(
        conn: sqlite3.Connection, message_id: str, tries: int, attempts: Sequence[Attempt]
    ) -> None:
        conn.executemany(
            _ATTEMPT,
            [(message_id, tries, *attempt_fields(a)) for a in attempts],
        )

    async def requeue(self, message_id: str, now: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE messages SET state = 'pending', status = 'pending', due = ?,"
                " expires = CASE WHEN ttl IS NULL THEN NULL ELSE ? + ttl END, tries = 0,"
                " reason = NULL, updated_at = ? WHERE id = ? AND state = 'dead'",
                (now, now, now, message_id),
            )
            if cur.rowcount == 0:
                return False
            conn.execute(_HISTORY, (message_id, now, "requeued", None, None))
            return True

        return await self._db.call(run)

    # -- receipts and status -----------------------------------------------------------

    async def record_receipt(self, report: DeliveryReport, now: float) -> bool:
        message_id = report.message_id
        if message_id is None:
            return False
        at = report.at.timestamp()

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT status, provider FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return False
            current = row[1] is None or row[1] == report.provider  # others' are history
            if current and RANK.get(report.status, -1) > RANK.get(row[0], -1):
                conn.execute(
                    "UPDATE messages SET status = ?, provider = ?, provider_message_id = ?,"
                    " error_code = ?, updated_at = ? WHERE id = ?",
                    (
                        report.status,
                        report.provider,
                        report.provider_message_id,
                        report.error_code,
                        now,
                        message_id,
                    ),
                )
            conn.execute(
                _HISTORY, (message_id, at, report.status, report.provider, report.error_code)
            )
            return True

        return await self._db.call(run)

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None, now: float
    ) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE messages SET status = 'accepted', provider = ?, provider_message_id = ?,"
                " error_code = NULL, updated_at = ? WHERE id = ?",
                (provider, provider_message_id, now, message_id),
            )
            if cur.rowcount == 0:
                return False
            conn.execute(_HISTORY, (message_id, now, "accepted", provider, None))
            return True

        return await self._db.call(run)

    async def recipient(self, message_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
            row = conn.execute(
                "SELECT id, to_number, body, sender, category, tags, metadata, seal"
                " FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None, None
            try:  # a damaged number would opt out someone else
                records.sealed(row[7], *row[:7])
            except RecordDamaged as exc:
                return None, exc.reason()
            return records.text(row[1]), None

        number, damage = await self._db.call(run)
        if damage is not None:
            log.error(
                "outbox: the number of message %s in %s cannot be read: %s. The opt-out its "
                "receipt reports is not recorded; record it by hand if it is needed.",
                message_id,
                self.path,
                damage.removeprefix("the outbox record is damaged: "),
            )
        return number

    async def status(self, message_id: str) -> MessageState | None:
        def run(conn: sqlite3.Connection) -> MessageState | None:
            row = conn.execute(
                "SELECT status, provider, provider_message_id, error_code, updated_at, enqueued_at"
                " FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            history = conn.execute(
                "SELECT status, provider, at FROM history WHERE message_id = ? ORDER BY rowid",
                (message_id,),
            ).fetchall()
            return MessageState(
                message_id=message_id,
                status=records.text(row[0]) or "unknown",
                provider=records.text(row[1]),
                provider_message_id=records.text(row[2]),
                error_code=records.text(row[3]),
                updated_at=records.moment(row[4]),
                history=(
                    ("pending", None, records.moment(row[5])),
                    *(
                        (records.text(s) or "unknown", records.text(p), records.moment(at))
                        for s, p, at in history
                    ),
                ),
            )

        return await self._db.call(run)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def run(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, reason, tries, outcome, enqueued_at, updated_at,"
                " to_number, body, sender, category, tags, metadata, seq FROM messages"
                " WHERE state = 'dead' ORDER BY updated_at DESC, seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            attempts: dict[str, list[Attempt]] = {}
            seqs = [r[12] for r in rows]  # not the ids: one another program wrote may not be UTF-8
            for chunk in _chunks(seqs):
                for mid, *a in conn.execute(
                    "SELECT message_id, provider, outcome, latency, status_code, error_code,"
                    " detail, provider_message_id, retry_after FROM attempts WHERE message_id IN"
                    f" (SELECT id FROM messages WHERE seq IN ({_marks(len(chunk))})) ORDER BY rowid",
                    chunk,
                ):
                    read = records.attempt(a)
                    if read is not None:  # one another program garbled is left out
                        attempts.setdefault(mid, []).append(read)
            return [
                DeadLetter(
                    message_id=records.text(r[0]) or "?",
                    message=records.readable_message(*r[6:12]),
                    reason=records.text(r[1]) or "",
                    tries=records.whole(r[2]),
                    attempts=tuple(attempts.get(r[0], ())),
                    outcome=records.outcome(r[3]),
                    enqueued_at=records.moment(r[4]),
                    dead_at=records.moment(r[5]),
                )
                for r in rows
            ]

        return await self._db.call(run)

    async def next_due(self) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            dues = [
                conn.execute(
                    "SELECT min(due) FROM messages WHERE state = 'pending' AND priority = ?"
                    " AND typeof(due) IN ('integer', 'real')",
                    (level,),
                ).fetchone()[0]
                for level in PRIORITY_LEVELS
            ]
            known = [float(d) for d in dues if d is not None]
            return min(known) if known else None

        return await self._db.call(run)

    async def counts(self) -> Mapping[State, int]:
        def run(conn: sqlite3.Connection) -> dict[State, int]:
            out: dict[State, int] = {"pending": 0, "leased": 0, "sent": 0, "dead": 0}
            out.update(conn.execute("SELECT state, count(*) FROM messages GROUP BY state"))
            return out

        return await self._db.call(run)

    async def purge(self, before: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            old = "SELECT id FROM messages WHERE state = 'sent' AND updated_at < ?"
            conn.execute(f"DELETE FROM history WHERE message_id IN ({old})", (before,))
            conn.execute(f"DELETE FROM attempts WHERE message_id IN ({old})", (before,))
            return conn.execute(
                "DELETE FROM messages WHERE state = 'sent' AND updated_at < ?", (before,)
            ).rowcount

        return await self._db.call(run)
