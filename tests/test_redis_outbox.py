"""The outbox with its store in Redis: the same guarantees as with SQLite.

1. The whole SQLite outbox suite (tests/test_outbox.py) runs again here with
   every router's store a :class:`RedisOutbox` under this test's key prefix.
2. What is particular to Redis: purge, expired leases, the keys left behind.
3. The crash test: two worker processes drain one queue while one of them is
   SIGKILLed again and again; nothing is lost, and only messages in flight at
   a kill are sent twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import test_outbox
from conftest import ROOT, make_config, twilio_block
from redis_support import prefix, redis_url, state_block, until  # noqa: F401

import smsroute.outbox
import smsroute.router
from smsroute import Message, Outcome, Router, SendResult
from smsroute.config import OutboxSettings, StateSettings
from smsroute.message import Attempt
from smsroute.outbox import make_id, new_message
from smsroute.outbox.redis import RedisOutbox
from smsroute.outbox.store import NewMessage, OutboxStore
from smsroute.testing import FakeTwilio

# -- 1. the SQLite suite, on Redis ---------------------------------------------------------

for _name in dir(test_outbox):
    if _name.startswith("test_") or _name in ("router", "clock"):
        globals()[_name] = getattr(test_outbox, _name)


@pytest.fixture(autouse=True)
def outbox_in_redis(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    """Every router of a test opens its outbox in Redis, under the test's prefix."""

    def open_store(settings: OutboxSettings, state: StateSettings | None = None) -> OutboxStore:
        return RedisOutbox(redis_url, key_prefix=prefix)

    monkeypatch.setattr(smsroute.router, "open_store", open_store)


# -- 2. the store itself -------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.fixture
async def store(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> AsyncIterator[RedisOutbox]:
    s = RedisOutbox(redis_url, key_prefix=prefix)
    yield s
    await s.close()


def item(
    text: str, *, key: str | None = None, category: str = "otp", now: float = NOW
) -> NewMessage:
    return new_message(
        Message(to="+4915123456789", text=text, category=category),
        make_id(now),
        now=now,
        send_at=None,
        ttl=None,
        default_ttl=3600.0,
        idempotency_key=key,
    )


def accepted(provider: str = "a") -> SendResult:
    return SendResult(
        message_id="x",
        status="accepted",
        provider=provider,
        provider_message_id="SM1",
        attempts=(Attempt(provider, Outcome.ACCEPTED, 0.01),),
        segments=1,
        encoding="GSM-7",
        outcome=Outcome.ACCEPTED,
    )


async def test_an_expired_lease_goes_back_with_a_line_in_the_history(store: RedisOutbox) -> None:
    (mid,) = await store.enqueue_many([item("one")])
    (leased,) = await store.lease("dead-worker", 10, NOW, NOW + 30)
    assert leased.message_id == mid
    assert await store.lease("other", 10, NOW + 29, NOW + 60) == []  # still held
    (again,) = await store.lease("other", 10, NOW + 30, NOW + 60)  # lease_until reached
    assert again.message_id == mid
    state = await store.status(mid)
    assert state is not None
    assert [h[0] for h in state.history] == ["pending", "lease_expired"]
    assert await store.renew("dead-worker", [mid], NOW + 90) == 0  # it lost the lease
    assert await store.renew("other", [mid], NOW + 90) == 1


async def test_a_second_ack_says_the_message_was_already_final(store: RedisOutbox) -> None:
    mid = await store.enqueue(item("one"))
    await store.lease("w", 10, NOW, NOW + 30)
    assert await store.ack(mid, "w", accepted(), NOW + 1)
    assert not await store.ack(mid, "w2", accepted(), NOW + 2)  # a duplicate send
    assert (await store.counts())["sent"] == 1


async def test_purge_forgets_old_sent_messages_and_their_idempotency_keys(
    store: RedisOutbox,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    mid = await store.enqueue(item("one", key="k1"))
    assert await store.enqueue(item("again", key="k1")) == mid
    await store.lease("w", 10, NOW, NOW + 30)
    await store.ack(mid, "w", accepted(), NOW + 1)
    assert await store.purge(NOW + 1) == 0  # not before NOW + 1
    assert await store.purge(NOW + 2) == 1
    assert await store.status(mid) is None
    fresh = await store.enqueue(item("new", key="k1", now=NOW + 3))
    assert fresh != mid
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        left = {k async for k in client.scan_iter(match=f"{prefix}outbox:*{mid}*")}
    finally:
        await client.aclose()
    assert left == set()


async def test_a_closed_store_refuses_calls(store: RedisOutbox) -> None:
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.counts()


# -- 3. crash safety with two workers -------------------------------------------------------

MESSAGES = 3000
KILLS = 4
CONCURRENCY = 16
WORKER = ROOT / "tests" / "redis_outbox_worker.py"


async def start_worker(
    config: Path, url: str, key_prefix: str
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        str(config),
        url,
        key_prefix,
        "--concurrency",
        str(CONCURRENCY),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    hello = json.loads(await process.stdout.readline())
    return process, hello["worker"]


async def leased_by(client: aioredis.Redis, key_prefix: str, owner: str) -> set[str]:
    p = f"{key_prefix}outbox:"
    ids = await client.zrange(f"{p}leased", 0, -1)
    held = set()
    for message_id in ids:
        if await client.hget(f"{p}m:{message_id}", "owner") == owner:
            held.add(message_id)
    return held


@pytest.mark.slow
async def test_two_workers_one_sigkilled_again_and_again_lose_nothing(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with FakeTwilio() as a, FakeTwilio() as b, asyncio.timeout(120):
            config = tmp_path / "routing.yaml"
            config.write_text(
                f"""
providers:
{twilio_block("a", a, rate_limit="100/s")}
{twilio_block("b", b, rate_limit="100/s")}
rules:
  - name: default
    strategy: weighted
    weights: {{a: 50, b: 50}}
    providers: [a, b]
outbox:
  lease: 2s
  poll: 100ms
  backoff: {{base: 100ms, max: 1s}}
"""
            )
            async with Router.from_yaml(config, metrics=False) as router:
                ids = await router.enqueue_many(
                    [Message(to="+4915123456789", text=f"crash {i:04d}") for i in range(MESSAGES)]
                )
            steady, _ = await start_worker(config, redis_url, prefix)  # never killed
            processes.append(steady)

            def at_fakes() -> int:
                return len(a.messages) + len(b.messages)

            in_flight: list[set[str]] = []
            for _ in range(KILLS):
                victim, owner = await start_worker(config, redis_url, prefix)
                processes.append(victim)
                held = set[str]()

                async def busy(owner: str = owner) -> bool:
                    nonlocal held
                    held = await leased_by(client, prefix, owner)
                    return len(held) > 0

                await until(busy, within=20, what="the victim holds leases")
                target = at_fakes() + MESSAGES // 20
                await until(lambda target=target: at_fakes() >= target, within=20)  # type: ignore[misc]
                victim.kill()
                await victim.wait()
                in_flight.append(await leased_by(client, prefix, owner))

            async def all_sent() -> bool:
                return await client.zcard(f"{prefix}outbox:sent") == MESSAGES

            await until(all_sent, within=60, what="every message sent")
            steady.terminate()
            assert await steady.wait() == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await client.aclose()

    texts = Counter(m.text for m in (*a.messages, *b.messages))
    assert len(texts) == MESSAGES, "a message was lost"
    by_text = {f"crash {i:04d}": message_id for i, message_id in enumerate(ids)}
    duplicated = {by_text[text] for text, n in texts.items() if n > 1}
    everything_in_flight = set().union(*in_flight)
    assert duplicated <= everything_in_flight
    assert sum(texts.values()) - MESSAGES <= sum(len(s) for s in in_flight)
    assert all(0 < len(s) <= CONCURRENCY for s in in_flight), in_flight
    print(
        f"in flight at the kills: {[len(s) for s in in_flight]}, "
        f"sent twice: {sum(texts.values()) - MESSAGES}"
    )


# -- 4. chosen by the config ------------------------------------------------------------------


async def test_config_outbox_backend_redis_shares_one_queue_between_replicas(
    twilio_a: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Undo this module's autouse patch: here the config alone must choose Redis.
    monkeypatch.setattr(smsroute.router, "open_store", smsroute.outbox.open_store)
    text = f"""
providers:
{twilio_block("tw", twilio_a)}
rules:
  - name: default
    providers: [tw]
{state_block(redis_url, prefix)}
outbox:
  backend: redis
"""
    async with (
        Router(make_config(text), metrics=False) as one,
        Router(make_config(text), metrics=False) as two,
    ):
        assert isinstance(one.outbox_service.store(), RedisOutbox)
        ids = [
            await one.enqueue(Message(to="+4915123456789", text=f"queued {i}")) for i in range(5)
        ]
        # The other replica's worker sees the queue the first one filled.
        async with two.worker():
            await until(lambda: len(twilio_a.messages) == 5, within=10, what="5 sends")
        states = [await one.status(i) for i in ids]
    assert [s.status for s in states if s is not None] == ["accepted"] * 5
    assert sorted(m.text for m in twilio_a.messages) == [f"queued {i}" for i in range(5)]
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.keys(f"{prefix}outbox:*")  # the queue lives under the prefix
    finally:
        await client.aclose()
