"""A damaged SQLite outbox file: it works, or one clear error names it; never a traceback.

A real outbox holds messages in every state (pending, leased, sent with a delivery
receipt, dead with its attempts); it is closed and the file damaged the ways disks and
people damage files (hypothesis picks: bytes flipped or overwritten anywhere, header
and b-tree pages included, the file cut short, a page zeroed, garbage appended, a stale
``-wal`` or ``-shm`` file beside it).  Then it is used the ways users use it: a Router
with the outbox configured (enqueue, status, dead letters) and a worker leasing and
sending.  The contract:

- every call either works, or raises :class:`OutboxUnavailable` naming the file and
  what to do (one line); never another exception type;
- what a lease returns is well formed (the worker can send it as it is), a record that
  cannot be read is a dead letter with an ERROR line naming it; status() and
  dead_letters() answer or raise the clear error;
- the worker never raises and the router keeps running;
- nothing is sent that was not enqueued: a byte changed inside a text that is still valid
  UTF-8 (a digit of a number) is caught by the record's seal, a CRC-32 of its id and
  message (unless the damage made the seal itself NULL, which a row written by an earlier
  version has too: such a row is not checked);
- no traceback, no phone number and no message text in any log line or error.

The ``python -m smsroute.outbox`` command on a damaged file is run in
:func:`test_the_worker_command_on_a_damaged_file_exits_with_one_line`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_config, twilio_block
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from log_support import every_log_record

from smsroute import (
    DeliveryReport,
    ManualClock,
    Message,
    OutboxUnavailable,
    Outcome,
    Router,
    SendResult,
)
from smsroute.message import Attempt
from smsroute.outbox import SQLiteOutbox, make_id, new_message
from smsroute.outbox.sqlite import SCHEMA
from smsroute.outbox.store import NewMessage, QueuedMessage
from smsroute.testing import FakeTwilio

START = 1_800_000_000.0
NUMBER = "+4915123456{:03d}"
SECRET = "Code 7f3a secret"
PAGE = 4096


def item(i: int, now: float = START) -> NewMessage:
    return new_message(
        Message(to=NUMBER.format(i), text=f"{SECRET} {i} " + "x" * 60, tags=("t",)),
        make_id(now),
        now=now,
        send_at=None,
        ttl=datetime.timedelta(days=1),
        default_ttl=None,
        idempotency_key=f"key-{i}",
    )


def failed(provider: str) -> SendResult:
    return SendResult(
        message_id="x",
        status="failed",
        provider=None,
        provider_message_id=None,
        attempts=(Attempt(provider, Outcome.REJECTED, 0.1, 400, "21211", "invalid number"),),
        segments=1,
        encoding="GSM-7",
        outcome=Outcome.REJECTED,
        reason="rejected",
    )


def accepted(provider: str) -> SendResult:
    return SendResult(
        message_id="x",
        status="accepted",
        provider=provider,
        provider_message_id="SM1",
        attempts=(Attempt(provider, Outcome.ACCEPTED, 0.1, 201, None, None, "SM1"),),
        segments=1,
        encoding="GSM-7",
        outcome=Outcome.ACCEPTED,
    )


async def build(path: Path, n: int = 24) -> list[str]:
    """An outbox at ``path`` with ``n`` messages in every state, closed; their ids."""
    store = SQLiteOutbox(path)
    try:
        ids = await store.enqueue_many([item(i) for i in range(n)])
        leased = await store.lease("w", 6, START, START + 5)  # expire before the worker runs
        await store.ack(leased[0].message_id, "w", accepted("twilio"), START)
        await store.record_receipt(
            DeliveryReport(
                provider="twilio",
                provider_message_id="SM1",
                status="delivered",
                error_code=None,
                at=datetime.datetime.fromtimestamp(START + 1, datetime.UTC),
                message_id=leased[0].message_id,
            ),
            START + 1,
        )
        await store.dead(leased[1].message_id, "w", "rejected", failed("twilio"), START)
        await store.retry(leased[2].message_id, "w", START + 2, "timeout", None, START)
    finally:
        await store.close()
    return ids


async def pending(path: Path, n: int, now: float = START) -> list[str]:
    """An outbox at ``path`` with ``n`` pending messages due at ``now``, closed; their ids."""
    store = SQLiteOutbox(path)
    try:
        return await store.enqueue_many([item(i, now) for i in range(n)])
    finally:
        await store.close()


def damage(data: bytearray, how: str, where: float, value: bytes) -> bytearray:
    """``data`` damaged: ``where`` in [0, 1) is the place in the file."""
    at = int(where * len(data))
    if not data and how in ("flip", "header"):  # truncated to nothing already: nothing to flip
        return data
    if how == "flip":
        data[at] ^= value[0] or 0x55
    elif how == "overwrite":
        data[at : at + len(value)] = value
    elif how == "truncate":
        del data[at:]
    elif how == "zero_page":
        page = at // PAGE
        data[page * PAGE : (page + 1) * PAGE] = bytes(min(PAGE, len(data) - page * PAGE))
    elif how == "header":
        data[at % min(100, len(data))] ^= value[0] or 0x55
    elif how == "append":
        data += value * 64
    return data


DAMAGE = st.tuples(
    st.sampled_from(["flip", "overwrite", "truncate", "zero_page", "header", "append"]),
    st.floats(0.0, 1.0, exclude_max=True),
    st.binary(min_size=1, max_size=40),
)


def clear(exc: BaseException, path: Path) -> None:
    assert type(exc) is OutboxUnavailable, repr(exc)
    text = str(exc)
    assert str(path) in text, text
    assert "\n" not in text
    assert ": " in text  # what, then what to do
    assert "15123456" not in text, text
    assert SECRET not in text, text


def well_formed(q: QueuedMessage) -> None:
    m = q.message
    for value in (q.message_id, m.to, m.text, m.category):
        assert isinstance(value, str)
        assert value
        value.encode("utf-8")
    assert m.sender is None or isinstance(m.sender, str)
    assert all(isinstance(t, str) for t in m.tags)
    assert isinstance(m.metadata, dict)
    assert q.priority in (0, 1, 2, 3)
    assert isinstance(q.tries, int)
    assert q.tries >= 0
    for t in (q.due, q.enqueued_at, *([] if q.expires is None else [q.expires])):
        assert isinstance(t, float)


def config_for(path: Path, fake: FakeTwilio) -> str:
    return "\n".join(
        [
            "defaults:",
            "  breaker: {consecutive_failures: null, min_calls: 1000}",
            "providers:",
            twilio_block("twilio", fake),
            "rules:",
            "  - name: default",
            "    providers: [twilio]",
            "outbox:",
            f"  path: {path}",
            "  backoff: {base: 1s, max: 5s}",
        ]
    )


#: What build() and use() enqueue: (number, text) of every message that may be sent.
ENQUEUED = {(NUMBER.format(i), f"{SECRET} {i} " + "x" * 60) for i in range(24)} | {
    (NUMBER.format(i), SECRET) for i in (500, 501)
}


def unsealed_rows(path: Path) -> int:
    """Rows of the (damaged) file without a seal, as far as it can be read (-1: it cannot)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(
                conn.execute("SELECT count(*) FROM messages WHERE seal IS NULL").fetchone()[0]
            )
    except sqlite3.Error:
        return -1


async def use(path: Path, ids: list[str]) -> list[tuple[str, str]]:
    """Every way a user meets the outbox; each works or raises the clear error.  What the
    provider received: (number, text) of each message."""
    store = SQLiteOutbox(path)
    try:
        for call in (
            store.counts,
            store.next_due,
            store.dead_letters,
            lambda: store.lease("probe", 100, START + 10, START + 40),
        ):
            try:
                got = await call()
            except Exception as exc:
                clear(exc, path)
            else:
                if isinstance(got, list):
                    for q in got:
                        if isinstance(q, QueuedMessage):
                            well_formed(q)
                            if (q.message.to, q.message.text) not in ENQUEUED:
                                assert unsealed_rows(path) != 0, "a damaged record was leased"
        await store.release("probe", None, START + 10)
    except Exception as exc:
        clear(exc, path)
    finally:
        await store.close()

    clock = ManualClock(START + 10)
    async with (
        FakeTwilio() as fake,
        Router(
            make_config(config_for(path, fake)), clock=clock, sleep=clock.sleep, metrics=False
        ) as router,
    ):
        try:
            mid = await router.enqueue(Message(to=NUMBER.format(500), text=SECRET))
        except Exception as exc:
            clear(exc, path)
        else:
            assert isinstance(mid, str)
        for message_id in ids[:8]:
            try:
                await router.status(message_id)
            except Exception as exc:
                clear(exc, path)
        try:
            await router.dead_letters()
        except Exception as exc:
            clear(exc, path)
        worker = router.worker(concurrency=8)
        for _ in range(3):
            await worker.run_once()  # never raises: a store that fails is logged
        assert (await router.send(Message(to=NUMBER.format(501), text=SECRET))).ok
        return [(m.to, m.text) for m in fake.messages]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    damages=st.lists(DAMAGE, min_size=1, max_size=4),
    stale=st.sampled_from([None, "-wal", "-shm"]),
    junk=st.binary(min_size=0, max_size=PAGE * 2),
)
@example(damages=[("truncate", 0.5, b"x")], stale=None, junk=b"")
@example(damages=[("zero_page", 0.0, b"x")], stale=None, junk=b"")
@example(damages=[("flip", 0.95, b"\x80")], stale="-wal", junk=b"\x37\x7f\x06\x82" + bytes(60))
@example(damages=[("overwrite", 0.05, b"\x01\x80")], stale=None, junk=b"")  # schema: not UTF-8
@example(damages=[("flip", 0.04296875, b"\x00")], stale=None, junk=b"")  # a column renamed
@example(damages=[("flip", 0.0625, b"\x00")], stale=None, junk=b"")
@example(damages=[("flip", 0.8722623141728708, b"\x80")], stale=None, junk=b"")  # a leased id
def test_a_damaged_file_works_or_is_named_and_nothing_leaks(
    tmp_path_factory: pytest.TempPathFactory,
    damages: list[tuple[str, float, bytes]],
    stale: str | None,
    junk: bytes,
) -> None:
    folder = tmp_path_factory.mktemp("outbox")
    path = folder / "outbox.db"
    ids = asyncio.run(build(path))
    data = bytearray(path.read_bytes())
    for how, where, value in damages:
        data = damage(data, how, where, value)
    path.write_bytes(bytes(data))
    if stale is not None:
        Path(f"{path}{stale}").write_bytes(junk)
    with every_log_record() as logs:
        sent = asyncio.run(use(path, ids))
    for message in sent:  # nothing that was not enqueued (a changed digit: someone else)
        if message not in ENQUEUED:
            assert unsealed_rows(path) != 0, "a damaged record was sent"
    for _, text in logs.records:
        assert "Traceback" not in text, text
        assert "15123456" not in text, text
        assert SECRET not in text, text


# -- what the fuzzing found, one case each --------------------------------------------------


async def test_text_that_is_not_utf8_dead_letters_its_record_not_the_queue(
    tmp_path: Path,
) -> None:
    """A byte flipped inside a text made it invalid UTF-8.  Before: every lease raised
    sqlite3.OperationalError quoting the text ("Could not decode to UTF-8 column 'body'
    with text 'Code 7f3a...'"), so nothing was sent any more and the text was logged."""
    path = tmp_path / "outbox.db"
    ids = await pending(path, 3)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE messages SET body = CAST(x'436f6465ff' AS TEXT) WHERE id = ?", (ids[0],)
        )
        conn.execute(
            "UPDATE messages SET to_number = CAST(x'2b3439ff' AS TEXT) WHERE id = ?", (ids[1],)
        )
    store = SQLiteOutbox(path)
    try:
        with every_log_record() as logs:
            leased = await store.lease("w", 10, START + 10, START + 40)
        assert [q.message_id for q in leased] == [ids[2]]
        errors = [text for level, text in logs.records if level >= logging.ERROR]
        assert len(errors) == 2, errors
        assert ids[0] in errors[0], errors
        assert "body is not text (UTF-8)" in errors[0], errors
        assert ids[1] in errors[1], errors
        assert "to is not text (UTF-8)" in errors[1], errors
        assert all("requeue" in e and "Code" not in e for e in errors)
        dead = {d.message_id: d for d in await store.dead_letters()}
        assert "field body" in dead[ids[0]].reason
        state = await store.status(ids[0])
        assert state is not None
        assert state.status == "dead"
    finally:
        await store.close()


def change_in_file(path: Path, old: bytes, new: bytes) -> None:
    """Change the one place ``old`` is in the file's bytes: a damaged sector, not SQL."""
    data = path.read_bytes()
    assert data.count(old) == 1, data.count(old)
    path.write_bytes(data.replace(old, new))


async def test_a_changed_digit_is_a_dead_letter_not_a_message_to_someone_else(
    tmp_path: Path,
) -> None:
    """A byte of a number changed in the file, still valid UTF-8 (a digit for a digit).
    Before the seal: leased and sent to the other number, with nothing said."""
    path = tmp_path / "outbox.db"
    ids = await pending(path, 3)
    change_in_file(path, NUMBER.format(1).encode(), NUMBER.format(9).encode())
    store = SQLiteOutbox(path)
    try:
        with every_log_record() as logs:
            leased = await store.lease("w", 10, START + 10, START + 40)
            assert await store.recipient(ids[1]) is None  # no opt-out for someone else
            assert await store.recipient(ids[0]) == NUMBER.format(0)
        assert [q.message_id for q in leased] == [ids[0], ids[2]]
        errors = [text for level, text in logs.records if level >= logging.ERROR]
        assert len(errors) == 2, errors
        assert all(ids[1] in e and "seal does not match" in e for e in errors), errors
        assert "enqueue the message anew" in errors[0], errors
        assert "opt-out" in errors[1], errors
        for _, text in logs.records:
            assert "15123456" not in text, text
            assert SECRET not in text, text
        dead = {d.message_id: d for d in await store.dead_letters()}
        assert "which one is not known" in dead[ids[1]].reason
        state = await store.status(ids[1])
        assert state is not None
        assert state.status == "dead"
        assert await store.requeue(ids[1], START + 50)  # requeued as it is: dead again
        again = await store.lease("w", 10, START + 60, START + 90)
        assert [q.message_id for q in again] == [ids[0], ids[2]]  # their leases expired
    finally:
        await store.close()


async def test_a_file_of_the_earlier_schema_gets_seals_for_new_rows(tmp_path: Path) -> None:
    """A file made before seals (schema 1, no seal column) is opened: the column is
    added, its rows are sent as they are (they have no seal to check), new rows are sealed."""
    path = tmp_path / "outbox.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            SCHEMA.replace(",\n    seal INTEGER", "").replace(
                "user_version = 2", "user_version = 1"
            )
        )
        assert "seal" not in {c[1] for c in conn.execute("PRAGMA table_info(messages)")}
        conn.execute(
            "INSERT INTO messages (id, state, priority, due, enqueued_at, updated_at, status,"
            " to_number, body, category) VALUES ('old-1', 'pending', 1, ?, ?, ?, 'pending', ?,"
            " ?, 'transactional')",
            (START, START, START, NUMBER.format(7), SECRET),
        )
        conn.commit()
    ids = await pending(path, 2)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        seals = dict(conn.execute("SELECT id, seal FROM messages").fetchall())
    assert seals["old-1"] is None
    assert all(isinstance(seals[i], int) for i in ids)
    store = SQLiteOutbox(path)
    try:
        leased = await store.lease("w", 10, START + 10, START + 40)
        assert {q.message_id for q in leased} == {"old-1", *ids}
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("ALTER TABLE messages RENAME TO messagez", "lacks its table messages"),
        ("ALTER TABLE messages RENAME COLUMN expires TO expirez", "lacks the column expires"),
        ("ALTER TABLE attempts RENAME COLUMN detail TO detaix", "lacks the column detail"),
        ("ALTER TABLE messages RENAME COLUMN seal TO seaz", "lacks the column seal"),
    ],
)
async def test_a_renamed_table_or_column_is_named_and_nothing_is_made_anew(
    tmp_path: Path, change: str, named: str
) -> None:
    """A damaged byte of the schema's text renames a table or a column.  Before: the
    table was made anew, empty, and the messages of the renamed one never sent; or every
    query failed with sqlite3.OperationalError ("no such column: expires")."""
    path = tmp_path / "outbox.db"
    await pending(path, 2)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(change)
        conn.commit()
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    store = SQLiteOutbox(path)
    try:
        for call in (store.counts, lambda: store.lease("w", 10, START + 10, START + 40)):
            with pytest.raises(OutboxUnavailable) as caught:
                await call()
            clear(caught.value, path)
            assert named in str(caught.value)
            assert "move it aside" in str(caught.value)
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # nothing made beside them
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == (
            tables
        )


@pytest.mark.parametrize("where", ["detail TEXT", "history_message ON"])
async def test_schema_text_that_is_not_utf8_is_named_in_one_line(
    tmp_path: Path, where: str
) -> None:
    """A byte of the schema's text (a column's type, an index's name) turned into one
    that is not UTF-8: the outbox works, or one line says the file is damaged.  Before:
    reading the columns' types failed with sqlite3 quoting the damaged text, newlines and
    all (the type), or with UnicodeDecodeError making its own error message."""
    path = tmp_path / "outbox.db"
    await pending(path, 2)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        name, sql = next(
            (n, q)
            for n, q in conn.execute("SELECT name, sql FROM sqlite_master")
            if q and where in q
        )
        damaged = sql.encode().replace(where.encode(), where.encode()[:-1] + b"\xff")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = CAST(? AS TEXT) WHERE name = ?", (damaged, name)
        )
        conn.commit()
    store = SQLiteOutbox(path)
    try:
        problem: OutboxUnavailable | None = None
        try:
            counts = await store.counts()
        except OutboxUnavailable as exc:  # SQLite cannot read the schema: named in a line
            problem = exc
        if problem is not None:
            clear(problem, path)
            assert "is damaged" in str(problem)
        else:  # a name SQLite still takes (a byte not UTF-8 is a letter to it): it works
            assert counts["pending"] == 2
            assert len(await store.lease("w", 10, START + 10, START + 40)) == 2
    finally:
        await store.close()


async def test_a_damaged_id_does_not_break_dead_letters(tmp_path: Path) -> None:
    """Before: the record was leased (or listed), and its id, not UTF-8, was sent back
    to SQLite as a parameter: UnicodeEncodeError from lease() and dead_letters()."""
    path = tmp_path / "outbox.db"
    ids = await pending(path, 3)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE messages SET id = CAST(x'3031ff' AS TEXT) WHERE id = ?", (ids[0],))
    store = SQLiteOutbox(path)
    try:
        leased = await store.lease("w", 10, START + 10, START + 40)
        assert {q.message_id for q in leased} == {ids[1], ids[2]}
        letters = await store.dead_letters()
        assert any("field id" in d.reason for d in letters)
    finally:
        await store.close()


async def test_a_leased_record_whose_id_is_damaged_goes_back_when_its_lease_expires(
    tmp_path: Path,
) -> None:
    """Before: the expired lease's id, read back as Python text with surrogates, was sent
    to SQLite for its history line: UnicodeEncodeError from every lease() after it.  And
    the line said "the lease of None expired" (RETURNING gave the holder after it was
    cleared)."""
    path = tmp_path / "outbox.db"
    ids = await pending(path, 2)
    store = SQLiteOutbox(path)
    try:
        assert len(await store.lease("w-1", 10, START, START + 40)) == 2
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE messages SET id = CAST(x'3031ff' AS TEXT) WHERE id = ?", (ids[0],))
        conn.commit()
    store = SQLiteOutbox(path)
    try:
        again = await store.lease("w-2", 10, START + 50, START + 90)
        assert [q.message_id for q in again] == [ids[1]]
        assert any("field id" in d.reason for d in await store.dead_letters())
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        details = conn.execute(
            "SELECT detail FROM history WHERE status = 'lease_expired'"
        ).fetchall()
    assert details == [("the lease of w-1 expired",)] * 2


@pytest.mark.parametrize("how", ["garbage", "header", "bad_row"])
async def test_the_worker_command_on_a_damaged_file_exits_with_one_line(
    tmp_path: Path, twilio_a: FakeTwilio, how: str
) -> None:
    """``python -m smsroute.outbox``: exit 1 and one line naming the file, or it runs
    (the damage is in a record: dead-lettered, logged in one line) and stops on SIGTERM."""
    path = tmp_path / "outbox.db"
    await pending(path, 4, time.time())
    if how == "garbage":
        path.write_bytes(bytes(range(256)) * 32)
    elif how == "header":
        data = bytearray(path.read_bytes())
        data[16:18] = b"\x00\x03"  # a page size SQLite does not have
        path.write_bytes(bytes(data))
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE messages SET metadata = '{oops' WHERE state = 'pending'")
    config = tmp_path / "routing.yaml"
    config.write_text(config_for(path, twilio_a))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute.outbox",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
        err = ""
        if line:  # it works: stop it once it has said the damaged records are dead letters
            while "cannot be sent" not in err and (more := await proc.stderr.readline()):
                err += more.decode()
            proc.terminate()
        err += (await proc.stderr.read()).decode()
        code = await proc.wait()
    assert "Traceback" not in err, err
    assert "15123456" not in err, err
    assert SECRET not in err, err
    if how == "bad_row":
        assert code == 0, err
        assert "field metadata is not valid JSON" in err, err
    else:
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert str(path) in lines[0], err
        assert "move it aside" in lines[0], err
