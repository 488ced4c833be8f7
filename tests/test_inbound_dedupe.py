"""Inbound messages reach ``on_inbound`` and the opt-out logic once (issue 12).

Providers retry webhooks: the same inbound message (one provider, one id of
that provider's) is processed once within the receipt window, in memory and
across replicas sharing state in Redis.  Two messages with the same sender and
text are two messages: both arrive.  FakeTwilio signs each request as Twilio
does; the router's webhook app is served on real sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import Hooks, call, make_config, twilio_block
from redis_support import prefix, redis_url, state_block  # noqa: F401

from smsroute import InboundMessage, ManualClock, Router
from smsroute.testing import FakeTwilio

HANDSET = "+4915123456789"
OUR_NUMBER = "+15005550006"
PUBLIC = "https://sms.example.test/hooks"  # what a load balancer in front of replicas serves


def config_text(fake: FakeTwilio, webhook_url: str, state: str = "") -> str:
    return f"""
defaults:
  webhook_url: {webhook_url}
providers:
{twilio_block("tw", fake)}
rules:
  - name: default
    providers: [tw]
{state}
"""


@pytest.fixture
async def second_hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    yield h
    await h.close()


async def test_a_retried_inbound_message_is_processed_once(
    hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    async with Router(make_config(config_text(twilio_a, hooks.url)), metrics=False) as router:
        await hooks.serve(router)
        seen: list[InboundMessage] = []
        router.on_inbound(seen.append)
        url = f"{hooks.url}/tw/inbound"
        method, target, headers, body = twilio_a.inbound_request(url, HANDSET, OUR_NUMBER, "Hi")
        for _ in range(3):  # Twilio retrying: the very same request
            assert await call(method, target, headers, body) == 200
        assert [m.text for m in seen] == ["Hi"]
        # Another message, same sender and text: a message of its own.
        method, target, headers, body = twilio_a.inbound_request(url, HANDSET, OUR_NUMBER, "Hi")
        assert await call(method, target, headers, body) == 200
        assert [m.text for m in seen] == ["Hi", "Hi"]
        assert seen[0].provider_message_id != seen[1].provider_message_id


async def test_a_retried_stop_does_not_undo_a_later_start(
    hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    async with Router(make_config(config_text(twilio_a, hooks.url)), metrics=False) as router:
        await hooks.serve(router)
        url = f"{hooks.url}/tw/inbound"
        stop = twilio_a.inbound_request(url, HANDSET, OUR_NUMBER, "STOP")
        start = twilio_a.inbound_request(url, HANDSET, OUR_NUMBER, "START")
        assert await call(*stop) == 200
        assert router.is_opted_out(HANDSET)
        assert await call(*start) == 200
        assert not router.is_opted_out(HANDSET)
        assert await call(*stop) == 200  # Twilio retrying the STOP it thinks was lost
        assert not router.is_opted_out(HANDSET)


async def test_the_same_id_is_new_again_after_the_receipt_window(
    hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    clock = ManualClock()
    text = config_text(twilio_a, hooks.url, "state:\n  receipt_ttl: 1h")
    async with Router(make_config(text), metrics=False, clock=clock) as router:
        await hooks.serve(router)
        seen: list[InboundMessage] = []
        router.on_inbound(seen.append)
        request = twilio_a.inbound_request(f"{hooks.url}/tw/inbound", HANDSET, OUR_NUMBER, "Hi")
        assert await call(*request) == 200
        clock.advance(3599)
        assert await call(*request) == 200
        assert len(seen) == 1
        clock.advance(2)  # over an hour since it was first seen: forgotten
        assert await call(*request) == 200
        assert len(seen) == 2


async def test_replicas_sharing_redis_process_a_retry_once(
    hooks: Hooks,
    second_hooks: Hooks,
    twilio_a: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    text = config_text(twilio_a, PUBLIC, state_block(redis_url, prefix, sync_interval="50ms"))
    async with (
        Router(make_config(text), metrics=False) as one,
        Router(make_config(text), metrics=False) as two,
    ):
        await hooks.serve(one)
        await second_hooks.serve(two)
        seen: list[tuple[str, InboundMessage]] = []
        one.on_inbound(lambda m: seen.append(("one", m)))
        two.on_inbound(lambda m: seen.append(("two", m)))
        # Signed for the public URL; the load balancer sends the retry to the other replica.
        _, _, headers, body = twilio_a.inbound_request(
            f"{PUBLIC}/tw/inbound", HANDSET, OUR_NUMBER, "STOP"
        )
        assert await call("POST", f"{hooks.url}/tw/inbound", headers, body) == 200
        assert await call("POST", f"{second_hooks.url}/tw/inbound", headers, body) == 200
        assert [(who, m.keyword) for who, m in seen] == [("one", "STOP")]
        # Another message with the same sender and text reaches the other replica.
        _, _, headers, body = twilio_a.inbound_request(
            f"{PUBLIC}/tw/inbound", HANDSET, OUR_NUMBER, "STOP"
        )
        assert await call("POST", f"{second_hooks.url}/tw/inbound", headers, body) == 200
        assert [(who, m.keyword) for who, m in seen] == [("one", "STOP"), ("two", "STOP")]
