"""The SQLite outbox's file going wrong: one clear error naming it, and no failure kept.

A file that is not a database, or a real outbox cut short, raises
:class:`OutboxUnavailable` naming the file and what to do, from the store, from
``router.enqueue`` and from a worker's start.  A database another process
keeps locked gives a clear error once the busy timeout has passed, and the
next call, after the lock is gone, just works: at first open as well as later.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_config, twilio_block

from smsroute import Message, OutboxUnavailable, Router, SmsrouteError
from smsroute.outbox import SQLiteOutbox, make_id, new_message
from smsroute.outbox.store import NewMessage
from smsroute.testing import FakeTwilio

NOW = 1_800_000_000.0
TO = "+4915123456789"


def item(text: str) -> NewMessage:
    return new_message(
        Message(to=TO, text=text),
        make_id(NOW),
        now=NOW,
        send_at=None,
        ttl=None,
        default_ttl=None,
        idempotency_key=None,
    )


async def filled(path: Path, n: int) -> None:
    """A real outbox at ``path`` holding ``n`` messages, closed."""
    store = SQLiteOutbox(path)
    await store.enqueue_many([item(f"message {i} " + "x" * 120) for i in range(n)])
    await store.close()


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def assert_clear(exc: BaseException, path: Path, *words: str) -> None:
    text = str(exc)
    assert isinstance(exc, OutboxUnavailable)
    assert isinstance(exc, SmsrouteError)
    assert str(path) in text
    assert "\n" not in text
    for word in words:
        assert word in text, text


async def test_a_file_that_is_not_a_database_names_the_file_and_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    garbage(path)
    store = SQLiteOutbox(path)
    try:
        for _ in range(2):  # the next call says the same: tried again, still not a database
            with pytest.raises(OutboxUnavailable) as caught:
                await store.counts()
            assert_clear(caught.value, path, "not an SQLite database", "move it aside", "mv ")
    finally:
        await store.close()


async def test_a_truncated_outbox_is_reported_damaged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await filled(path, 2000)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    store = SQLiteOutbox(path)
    try:
        with pytest.raises(OutboxUnavailable) as caught:
            await store.counts()
        assert_clear(caught.value, path, "damaged", "move it aside", "a new one is created")
    finally:
        await store.close()


async def test_router_and_worker_refuse_a_corrupt_outbox_clearly(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    path = tmp_path / "outbox.db"
    garbage(path)
    config = make_config(
        "\n".join(
            [
                "providers:",
                twilio_block("twilio", twilio_a),
                "rules:",
                "  - name: default",
                "    providers: [twilio]",
                "outbox:",
                f"  path: {path}",
            ]
        )
    )
    async with Router(config, metrics=False) as router:
        with pytest.raises(OutboxUnavailable) as caught:
            await router.enqueue(Message(to=TO, text="hello"))
        assert_clear(caught.value, path, "move it aside")
        worker = router.worker()
        with pytest.raises(OutboxUnavailable) as caught:
            await worker.start()  # before it says it works: nothing runs
        assert_clear(caught.value, path, "move it aside")
        assert worker._main is None
        assert not router.outbox_service.workers


class Locker:
    """Another process holding ``BEGIN EXCLUSIVE`` on a database until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None

    async def lock(self) -> None:
        code = (
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(self.path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "c.execute('ROLLBACK')\n"
        )
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            assert await self.proc.stdout.readline() == b"locked\n"

    async def release(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"\n")
            await self.proc.stdin.drain()
            async with asyncio.timeout(20):
                await self.proc.wait()


@pytest.fixture
async def locker(tmp_path: Path) -> AsyncIterator[Locker]:
    lock = Locker(tmp_path / "outbox.db")
    yield lock
    await lock.release()


async def test_locked_at_first_open_errors_after_the_busy_timeout_then_recovers(
    tmp_path: Path, locker: Locker
) -> None:
    path = tmp_path / "outbox.db"
    await filled(path, 3)
    await locker.lock()
    store = SQLiteOutbox(path, busy_timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(OutboxUnavailable) as caught:
            await store.counts()
        assert 0.25 <= loop.time() - t0 < 5.0  # it waited for the lock, then gave up
        assert_clear(caught.value, path, "locked by another process", "tries again")
        await locker.release()
        assert (await store.counts())["pending"] == 3  # no failure kept from the first call
        await store.enqueue(item("after the lock"))
        assert (await store.counts())["pending"] == 4
    finally:
        await store.close()


async def test_locked_while_open_errors_clearly_and_the_next_call_works(
    tmp_path: Path, locker: Locker
) -> None:
    path = tmp_path / "outbox.db"
    await filled(path, 1)
    store = SQLiteOutbox(path, busy_timeout=0.3)
    try:
        assert (await store.counts())["pending"] == 1
        await locker.lock()
        with pytest.raises(OutboxUnavailable) as caught:
            await store.enqueue(item("while locked"))
        assert_clear(caught.value, path, "locked by another process")
        await locker.release()
        await store.enqueue(item("after the lock"))
        assert (await store.counts())["pending"] == 2
    finally:
        await store.close()


async def test_error_text_holds_no_message_content(tmp_path: Path) -> None:
    """The clear errors say where and what to do, never what was being written."""
    path = tmp_path / "outbox.db"
    garbage(path)
    store = SQLiteOutbox(path)
    try:
        with pytest.raises(OutboxUnavailable) as caught:
            await store.enqueue(item("secret code 123456"))
    finally:
        await store.close()
    text = str(caught.value)
    assert "123456" not in text
    assert TO[1:] not in text
    assert os.fspath(path) in text
