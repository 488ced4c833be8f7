"""``on_undelivered: resend`` for messages the outbox sent: the durable record follows
each attempt (issue 12).

``status()`` answers from the outbox's durable record when it knows the
message.  That record must follow a resend as the in-memory one does: once the
message is resent through the next provider it is ``accepted`` by that
provider (not still the first one's failure), and only the current attempt's
receipts move it.  Runs on both stores: SQLite and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Hooks, make_config, reaches
from provider_support import provider_settings, routing_yaml
from redis_support import prefix, redis_url, until  # noqa: F401  (fixtures)
from test_resend_chain import UNREACHABLE, accepted_by

from smsroute import Message, MessageState, Router
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")


@pytest.fixture(params=["sqlite", "redis"])
def outbox_yaml(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,  # noqa: F811  (the fixture)
    prefix: str,  # noqa: F811
) -> str:
    if request.param == "sqlite":
        return f"outbox:\n  path: {tmp_path / 'outbox.db'}\n"
    return (
        f"state:\n  backend: redis\n  url: {redis_url}\n  key_prefix: '{prefix}'\n"
        "outbox:\n  backend: redis\n"
    )


async def resent_through_b(router: Router, message_id: str, at_b: asyncio.Event) -> MessageState:
    """Wait until b accepted the resend and the durable record has the new attempt."""
    async with asyncio.timeout(10):
        await at_b.wait()
    state: MessageState | None = None

    async def moved() -> bool:
        nonlocal state
        state = await router.status(message_id)
        return state is not None and state.provider == "b"

    await until(moved, within=5, what="the resend recorded in the outbox")
    assert state is not None
    return state


def chain_with_outbox(hooks: Hooks, fakes: tuple[FakeTwilio, ...], outbox: str) -> str:
    providers = {
        name: provider_settings(fake, "+15005550006")
        for name, fake in zip("abc", fakes, strict=True)
    }
    return routing_yaml(providers, webhook_url=hooks.url) + "    on_undelivered: resend\n" + outbox


@contextlib.asynccontextmanager
async def resent_to_b(
    hooks: Hooks, fakes: tuple[FakeTwilio, FakeTwilio, FakeTwilio], outbox_yaml: str
) -> AsyncIterator[tuple[Router, str, MessageState]]:
    """A message enqueued, sent by a worker through a (which reports it undelivered) and
    resent through b (which stays silent): the router, its id and its durable state then,
    with the worker still running."""
    a, b, _ = fakes
    a.receipts("undelivered", error_code=UNREACHABLE)
    b.receipts("never")
    at_b = asyncio.Event()
    config = make_config(chain_with_outbox(hooks, fakes, outbox_yaml))
    async with Router(config, hooks=[accepted_by("b", at_b)], metrics=False) as router:
        await hooks.serve(router)
        message_id = await router.enqueue(OTP)
        async with router.worker(concurrency=1):
            yield router, message_id, await resent_through_b(router, message_id, at_b)


async def test_the_durable_status_follows_a_resend_chain(
    hooks: Hooks,
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    twilio_c: FakeTwilio,
    outbox_yaml: str,
) -> None:
    fakes = (twilio_a, twilio_b, twilio_c)
    async with resent_to_b(hooks, fakes, outbox_yaml) as (router, message_id, state):
        # Resent through b, which has not answered: the durable record says so, and
        # none of a's failure is put on b.
        assert (state.status, state.provider, state.error_code) == ("accepted", "b", None)
        assert state.provider_message_id == twilio_b.messages[0].provider_message_id
        # b now reports a failure too: the message goes on to c, which delivers.
        twilio_c.receipts("delivered")
        await twilio_b.send_receipt(twilio_b.messages[0], "undelivered", UNREACHABLE)
        async with asyncio.timeout(10):
            await reaches(router, message_id, "delivered")
        final = await router.status(message_id)
    assert final is not None
    assert (final.status, final.provider) == ("delivered", "c")
    moves = [(s, p) for s, p, _ in final.history if s in ("accepted", "undelivered", "delivered")]
    assert moves[-4:] == [
        ("accepted", "b"),
        ("undelivered", "b"),
        ("accepted", "c"),
        ("delivered", "c"),
    ]


async def test_a_late_receipt_of_the_replaced_attempt_does_not_move_the_durable_record(
    hooks: Hooks,
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    twilio_c: FakeTwilio,
    outbox_yaml: str,
) -> None:
    fakes = (twilio_a, twilio_b, twilio_c)
    async with resent_to_b(hooks, fakes, outbox_yaml) as (router, message_id, _):
        # a (the replaced attempt) now says delivered after all: recorded, moves nothing.
        await twilio_a.send_receipt(twilio_a.messages[0], "delivered", None)
        state = await router.status(message_id)
        assert state is not None
        assert (state.status, state.provider) == ("accepted", "b")
