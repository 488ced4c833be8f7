"""The Redis outbox's keys spoiled: one message, or one clear error; never a traceback.

Another program, a manual write or another smsroute version under the same key_prefix
can leave, where the outbox keeps its keys (``<prefix>outbox:``), a key of another type,
a record with a field missing or garbled, a history or attempts entry that is not JSON.
Hypothesis picks which keys of a real outbox (messages pending, leased, sent, dead) are
spoiled, and how.  The contract:

- every call (enqueue, lease, status, dead_letters, counts, next_due) works, or raises
  :class:`OutboxUnavailable` naming the Redis, the prefix and what to do (one line);
  never another exception type;
- a record that cannot be read is a dead letter whose reason names the field (or leaves
  the queue when it is not a record at all), with one ERROR line naming its id; the worker
  neither crashes nor spins, and the messages whose keys are intact are sent;
- no traceback, no number and no message text in any log line.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import redis
from conftest import make_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from log_support import every_log_record
from redis_support import redis_url  # noqa: F401  (fixture)
from test_outbox_corrupt_file import NUMBER, SECRET, START, config_for, item
from test_redis_bad_data import TYPES, spoil

from smsroute import ManualClock, Message, OutboxUnavailable, Router
from smsroute.outbox.redis import RedisOutbox
from smsroute.testing import FakeTwilio

FIELDS = ["priority", "due", "expires", "tries", "enq", "to", "body", "cat", "tags", "meta", "pm"]


def clear(exc: BaseException, prefix: str) -> None:
    assert type(exc) is OutboxUnavailable, repr(exc)
    text = str(exc)
    assert prefix in text, text
    assert "\n" not in text, text
    assert "15123456" not in text, text
    assert SECRET not in text, text


async def run(
    url: str, picks: list[str], kinds: list[str], junk: str, fields: list[str]
) -> tuple[list[str], int, list[str]]:
    key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(url)
    store = RedisOutbox(url, key_prefix=key_prefix)
    try:
        ids = await store.enqueue_many([item(i) for i in range(8)])
        leased = await store.lease("w", 2, START, START + 5)
        await store.dead(leased[0].message_id, "w", "rejected", None, START)

        def place(key: bytes) -> str:  # the same order whatever the ids and prefix
            name = key.decode().removeprefix(key_prefix)
            for n, mid in enumerate(ids):
                name = name.replace(mid, f"{n:02d}")
            return name

        keys = sorted(client.keys(f"{key_prefix}*"), key=place)
        spoiled = []
        for n, key in enumerate(keys):
            how = picks[n % len(picks)]
            if how == "field" and client.type(key) == b"hash" and b":m:" in key:
                field = fields[n % len(fields)]
                if junk == "":
                    client.hdel(key, field)
                else:
                    client.hset(key, field, junk)
                spoiled.append(key.decode())
            elif how in ("type", "value"):
                spoil(client, key, how, kinds[n % len(kinds)], junk or "x")
                spoiled.append(key.decode())
        intact = [i for i in ids if not any(i in k for k in spoiled)]
        global_spoiled = any(":m:" not in k and ":h:" not in k and ":a:" not in k for k in spoiled)

        def open_store(*_: Any) -> RedisOutbox:
            return RedisOutbox(url, key_prefix=key_prefix)

        clock = ManualClock(START + 10)
        async with FakeTwilio() as fake:
            router = Router(
                make_config(config_for(Path("/nonexistent/outbox.db"), fake)),
                clock=clock,
                sleep=clock.sleep,
                metrics=False,
            )
            router.outbox_service.adopt(open_store())
            async with router:
                try:
                    await router.enqueue(Message(to=NUMBER.format(500), text=SECRET))
                except Exception as exc:
                    clear(exc, key_prefix)
                for call in (router.outbox.counts, router.outbox.next_due, router.dead_letters):
                    try:
                        await call()
                    except Exception as exc:
                        clear(exc, key_prefix)
                for mid in ids:
                    try:
                        await router.status(mid)
                    except Exception as exc:
                        clear(exc, key_prefix)
                worker = router.worker(concurrency=16)
                for _ in range(3):
                    await worker.run_once()
        if global_spoiled:  # every call met it: the clear error said so
            return [], spoiled
        unsent = [
            i
            for i in intact
            if i != leased[0].message_id
            and client.hget(f"{key_prefix}outbox:m:{i}", "state") != b"sent"
        ]
        return unsent, spoiled
    finally:
        await store.close()
        leftover: Any = client.keys(f"{key_prefix}*")
        if leftover:
            client.delete(*leftover)
        client.close()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    picks=st.lists(
        st.sampled_from(["keep", "keep", "type", "value", "field"]), min_size=9, max_size=9
    ),
    kinds=st.lists(st.sampled_from(TYPES), min_size=9, max_size=9),
    fields=st.lists(st.sampled_from(FIELDS), min_size=9, max_size=9),
    junk=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
    )
    | st.sampled_from(["", "nan", "inf", "-1", "1e400", "{oops", "[1]", "9"]),
)
@example(picks=["field"] * 9, kinds=["list"] * 9, fields=["tags"] * 9, junk="{oops")
@example(picks=["type"] * 9, kinds=["string"] * 9, fields=["due"] * 9, junk="x")
@example(picks=["field"] * 9, kinds=["list"] * 9, fields=["pm"] * 9, junk="")
def test_spoiled_outbox_keys_are_named_and_the_rest_is_sent(
    redis_url: str,  # noqa: F811
    picks: list[str],
    kinds: list[str],
    fields: list[str],
    junk: str,
) -> None:
    with every_log_record() as logs:
        unsent, spoiled = asyncio.run(run(redis_url, picks, kinds, junk, fields))
    for _, text in logs.records:
        assert "Traceback" not in text, text
        assert "15123456" not in text, text
        assert SECRET not in text, text
    errors = [text for level, text in logs.records if level >= logging.ERROR]
    for text in errors:
        assert "smsroute-test:" in text or "Redis" in text, text
    assert not unsent, (unsent, spoiled)
