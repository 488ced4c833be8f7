"""Redis going away mid-traffic costs no message; the router says so and rejoins.

The test runs its own throwaway ``redis-server`` (nothing persisted), kills it
with SIGKILL while eight senders keep a rate-limited provider busy, then
starts it again, empty, on the same port.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from conftest import make_config, twilio_block
from prometheus_client import CollectorRegistry
from redis_support import RedisServer, state_block, throwaway_redis, until  # noqa: F401

from smsroute import BreakerState, Message, Router, SendResult
from smsroute.state.redis import RedisState
from smsroute.testing import FakeTwilio

PREFIX = "outage:"


def errors(registry: CollectorRegistry) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "smsroute_state_backend_errors":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def test_redis_killed_mid_traffic_loses_no_message_and_the_router_rejoins(
    throwaway_redis: RedisServer,  # noqa: F811
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
) -> None:
    server = throwaway_redis
    config = make_config(
        f"""
providers:
{twilio_block("tw", twilio_a, rate_limit="400/s")}
{twilio_block("other", twilio_b)}
rules:
  - name: default
    providers: [tw]
{state_block(server.url, PREFIX, sync_interval="100ms", timeout="200ms")}
"""
    )
    registry = CollectorRegistry()
    results: list[SendResult] = []
    stop = asyncio.Event()
    async with Router(config, registry=registry) as router:
        state = router.state
        assert isinstance(state, RedisState)

        async def sender(w: int) -> None:
            i = 0
            while not stop.is_set():
                text = f"sender {w} message {i}"
                results.append(await router.send(Message(to=f"+49151{w:02d}{i:06d}", text=text)))
                i += 1

        senders = [asyncio.ensure_future(sender(w)) for w in range(8)]
        try:
            await until(lambda: len(results) >= 200, what="traffic with Redis up")
            assert state.link.up
            assert errors(registry) == 0

            server.kill()
            await until(lambda: not state.link.up, what="the router notices")
            during = len(results)
            other = state.breaker(config.providers["other"], None)
            other.trip()  # changed while Redis is away: written when it is back
            await until(lambda: len(results) >= during + 300, what="sending goes on without Redis")
            assert errors(registry) > 0

            server.start()  # the same port, empty
            await until(lambda: state.link.up, what="the router rejoins")
            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            try:

                async def rejoined() -> bool:
                    return (
                        await client.exists(f"{PREFIX}rate:tw") == 1
                        and await client.zscore(f"{PREFIX}replicas", state.replica) is not None
                        and await client.hget(f"{PREFIX}breakers", "other|") is not None
                    )

                await until(rejoined, what="rate limit, heartbeat and breaker back in Redis")
                packed = await client.hget(f"{PREFIX}breakers", "other|")
            finally:
                await client.aclose()
            assert packed is not None
            assert packed.split(",")[1] == "open"
            assert other.state is BreakerState.OPEN
            after = len(results)
            await until(lambda: len(results) >= after + 200, what="traffic after rejoining")
        finally:
            stop.set()
            await asyncio.gather(*senders)

    assert all(r.ok for r in results), {r.reason for r in results if not r.ok}
    texts = [m.text for m in twilio_a.messages]
    assert len(texts) == len(results)  # every message sent once, none lost
    assert len(set(texts)) == len(texts)
