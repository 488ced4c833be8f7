"""An enqueue cancelled at any await stores the message whole, or not at all.

A caller may cancel ``Router.enqueue`` (or ``enqueue_many``) anywhere: an
``asyncio.timeout()`` around it, a web client that disconnects.  The store may
still finish the write after the caller gave up (SQLite's calls run on a thread
of their own; a Redis script sent is run), so the contract is not "nothing
stored" but:

- the message is either stored whole (a record the worker can lease, with its
  queue entry and its idempotency key) or not at all: never a row or hash
  without the rest, never an idempotency key pointing at nothing;
- enqueueing again with the same idempotency key gives exactly one message (the
  one the cancelled call stored, when it did);
- a worker then sends every message exactly once.

As in ``test_send_cancellation.py``, each call is cancelled after 0, 1, 2, ...
event-loop steps until it finishes by itself several times: together the runs
stop it at every await it reaches (the store's thread hand-over, the Redis
connection, the script call, the reply) without naming them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import make_config
from redis_support import redis_url  # noqa: F401  (fixture)
from test_outbox_corrupt_file import config_for

from smsroute import Message, Router
from smsroute.outbox import SQLiteOutbox
from smsroute.outbox.redis import RedisOutbox
from smsroute.testing import FakeTwilio

TO = "+4915123456789"
#: How many times the call must have finished by itself before the sweep ends.
FINISHED = 4

#: Every inconsistency of the Redis outbox under KEYS[1] (its prefix + "outbox:"), found
#: in one atomic look: a record without its queue entry, a queue entry or an idempotency
#: key without its record.  Returns {problems..., "count:<records>"}.
REDIS_CHECK = """
local P = KEYS[1]
local out = {}
local records = 0
for _, key in ipairs(redis.call('KEYS', P .. 'm:*')) do
  records = records + 1
  local id = string.sub(key, #P + 3)
  if redis.call('TYPE', key).ok ~= 'hash' then
    out[#out + 1] = 'not a hash: ' .. id
  else
    local state, prio, pm, idem = unpack(redis.call('HMGET', key, 'state', 'priority', 'pm', 'idem'))
    if state ~= 'pending' then out[#out + 1] = 'state ' .. tostring(state) .. ': ' .. id end
    if not pm or not redis.call('ZSCORE', P .. 'pending:' .. tostring(prio), pm) then
      out[#out + 1] = 'record without its queue entry: ' .. id
    end
    if idem and redis.call('HGET', P .. 'idem', idem) ~= id then
      out[#out + 1] = 'record whose key names another: ' .. id
    end
  end
end
for level = 0, 3 do
  for _, pm in ipairs(redis.call('ZRANGE', P .. 'pending:' .. level, 0, -1)) do
    if redis.call('EXISTS', P .. 'm:' .. string.sub(pm, 13)) == 0 then
      out[#out + 1] = 'queue entry without its record: ' .. pm
    end
  end
end
local idem = redis.call('HGETALL', P .. 'idem')
for i = 1, #idem, 2 do
  if redis.call('EXISTS', P .. 'm:' .. idem[i + 1]) == 0 then
    out[#out + 1] = 'idempotency key without its record: ' .. idem[i]
  end
end
out[#out + 1] = 'count:' .. records
return out
"""


@dataclass
class Backend:
    """One store as the test sees it from outside: what is stored, and whether it is whole."""

    name: str
    config: str
    #: A new store of this backend, not yet used: its first call connects (thread, socket).
    new_store: Callable[[], Any]
    #: The ids stored for idempotency keys, and every inconsistency found (none: empty).
    stored: Callable[[list[str]], Awaitable[dict[str, str]]]
    problems: Callable[[], Awaitable[list[str]]]


async def sqlite_backend(tmp_path: Path, fake: FakeTwilio) -> AsyncIterator[Backend]:
    path = tmp_path / "outbox.db"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None)

    async def stored(keys: list[str]) -> dict[str, str]:
        with connect() as conn:
            rows = conn.execute(
                "SELECT idempotency_key, id FROM messages WHERE idempotency_key IN"
                f" ({','.join('?' * len(keys))})",
                keys,
            ).fetchall()
        conn.close()
        return dict(rows)

    async def problems() -> list[str]:
        conn = connect()
        try:
            conn.execute("BEGIN")  # one snapshot
            found = [
                f"history without its record: {mid}"
                for (mid,) in conn.execute(
                    "SELECT message_id FROM history WHERE message_id NOT IN (SELECT id FROM messages)"
                )
            ]
            found += [
                f"state {state}: {mid}"
                for mid, state in conn.execute(
                    "SELECT id, state FROM messages WHERE state != 'pending' OR status != 'pending'"
                )
            ]
            conn.execute("COMMIT")
        finally:
            conn.close()
        return found

    yield Backend("sqlite", config_for(path, fake), lambda: SQLiteOutbox(path), stored, problems)


async def redis_backend(url: str, key_prefix: str, fake: FakeTwilio) -> AsyncIterator[Backend]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    p = f"{key_prefix}outbox:"
    check = client.register_script(REDIS_CHECK)

    async def stored(keys: list[str]) -> dict[str, str]:
        values = await client.hmget(f"{p}idem", keys)
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    async def problems() -> list[str]:
        out = [str(x) for x in await check(keys=[p])]
        return [x for x in out if not x.startswith("count:")]

    try:
        yield Backend(
            "redis",
            config_for(Path("/nonexistent/outbox.db"), fake),
            lambda: RedisOutbox(url, key_prefix=key_prefix),
            stored,
            problems,
        )
    finally:
        leftover = [key async for key in client.scan_iter(match=f"{key_prefix}*", count=1000)]
        if leftover:
            await client.delete(*leftover)
        await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, twilio_a: FakeTwilio
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        async for b in sqlite_backend(tmp_path, twilio_a):
            yield b
    else:
        url = request.getfixturevalue("redis_url")  # the prefix fixture is async: not here
        key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
        async for b in redis_backend(url, key_prefix, twilio_a):
            yield b


def router_for(backend: Backend) -> Router:
    router = Router(make_config(backend.config), metrics=False)
    router.outbox_service.adopt(backend.new_store())
    return router


async def fresh_store(backend: Backend, router: Router) -> None:
    """A store not yet connected, so that the cancelled call meets the connecting too."""
    old = router.outbox
    router.outbox_service.adopt(backend.new_store())
    await old.close()


async def sweep(
    backend: Backend,
    router: Router,
    call: Callable[[list[str]], Awaitable[Any]],
    size: int,
) -> list[str]:
    """Cancel ``call(keys)`` after every number of loop steps; check the store after each.

    Returns every idempotency key enqueued (each must be sent exactly once).
    """
    every: list[str] = []
    finished = 0
    steps = -1
    outcomes = {"finished": 0, "cancelled, stored": 0, "cancelled, not stored": 0}
    while finished < FINISHED:
        # One step at a time through the first 150 (every await is reached by then), then
        # faster: the rest is waiting for the store's answer, as long as the machine takes.
        steps = steps + 1 if steps < 150 else int(steps * 1.25)
        assert steps < 1_000_000, "the enqueue never finished by itself"
        keys = [f"k{steps}-{i}" for i in range(size)]
        every += keys
        if steps % 2 == 0:
            await fresh_store(backend, router)
        task = asyncio.ensure_future(call(keys))
        for _ in range(steps):
            await asyncio.sleep(0)
        if task.done():
            finished += 1
            outcomes["finished"] += 1
            await task
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Whatever the cancelled call left is whole: no half record, no key pointing at nothing.
        assert await router.outbox.counts() is not None  # after the store's earlier work
        before = await backend.stored(keys)
        assert len(before) in (0, size), (steps, before)  # a batch is one transaction
        assert await backend.problems() == [], steps
        if not task.cancelled():
            continue
        outcomes["cancelled, stored" if before else "cancelled, not stored"] += 1
        # The same keys again: exactly one message each, the one stored if there was one.
        again = await call(keys)
        after = await backend.stored(keys)
        assert [after.get(k) for k in keys] == again, steps
        if before:
            assert after == before, steps
        for message_id in again:
            state = await router.status(message_id)
            assert state is not None, (steps, state)
            assert state.status == "pending", (steps, state)
        assert await backend.problems() == [], steps
    # Both sides were reached: cancelled before the store took the call, and after.
    assert outcomes["cancelled, not stored"] > 0, outcomes
    assert outcomes["cancelled, stored"] > 0, outcomes
    return every


async def drained_once_each(router: Router, fake: FakeTwilio, keys: list[str]) -> None:
    """A worker sends every message enqueued, each exactly once."""
    counts = await router.outbox.counts()
    assert counts["pending"] == len(keys), counts
    worker = router.worker(concurrency=64)
    while await worker.run_once():
        pass
    texts = sorted(m.text for m in fake.messages)
    assert texts == sorted(f"queued {k}" for k in keys)
    counts = await router.outbox.counts()
    assert counts["sent"] == len(keys), counts
    assert counts["pending"] == 0, counts


async def test_enqueue_cancelled_at_every_step_stores_whole_or_nothing(
    backend: Backend, twilio_a: FakeTwilio
) -> None:
    async with router_for(backend) as router:

        async def call(keys: list[str]) -> list[str]:
            (key,) = keys
            return [await router.enqueue(Message(to=TO, text=f"queued {key}"), idempotency_key=key)]

        keys = await sweep(backend, router, call, 1)
        await drained_once_each(router, twilio_a, keys)


async def test_enqueue_many_cancelled_at_every_step_stores_the_whole_batch_or_nothing(
    backend: Backend, twilio_a: FakeTwilio
) -> None:
    async with router_for(backend) as router:

        async def call(keys: list[str]) -> list[str]:
            messages = [Message(to=TO, text=f"queued {k}") for k in keys]
            return await router.enqueue_many(messages, idempotency_keys=keys)

        keys = await sweep(backend, router, call, 3)
        await drained_once_each(router, twilio_a, keys)
