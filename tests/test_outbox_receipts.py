"""Receipts for messages an outbox worker sent, arriving at another process's webhooks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import Hooks, make_config, twilio_block
from log_support import every_log_record
from redis_support import PausableProxy, prefix, proxy, redis_url, state_block, until  # noqa: F401

from smsroute import Message, Router
from smsroute.testing import FakeTwilio


async def test_receipt_for_a_message_sent_by_another_router_is_recorded_durably(
    tmp_path: Path, hooks: Hooks, twilio_a: FakeTwilio
) -> None:
    text = f"""
defaults:
  webhook_url: {hooks.url}
providers:
{twilio_block("twilio", twilio_a)}
rules:
  - name: default
    providers: [twilio]
outbox:
  path: {tmp_path / "outbox.db"}
  poll: 20ms
"""
    twilio_a.receipts("delivered")
    async with (
        Router(make_config(text), metrics=False) as sender,
        Router(make_config(text), metrics=False) as receiver,
    ):
        await hooks.serve(receiver)  # webhooks go to the other router, as with smsroute serve
        seen = []
        receiver.on_delivery_report(seen.append)
        message_id = await sender.enqueue(Message(to="+4915123456789", text="hi"))
        async with sender.worker(concurrency=2), asyncio.timeout(10):
            await twilio_a.wait_receipts(1)
        assert twilio_a.receipts_sent[0][2] == 200
        state = await receiver.status(message_id)
        assert state is not None
        assert state.status == "delivered"
        assert [r.message_id for r in seen] == [message_id]
        assert (await sender.status(message_id)).status == "delivered"  # type: ignore[union-attr]


def worker_config(
    backend: str, tmp_path: Path, hooks: Hooks, fake: FakeTwilio, url: str, key_prefix: str
) -> str:
    """One Twilio provider, receipts to ``hooks``, an outbox in SQLite or in Redis."""
    store = (
        f"outbox:\n  path: {tmp_path / 'outbox.db'}\n  poll: 20ms\n"
        if backend == "sqlite"
        else "outbox:\n  backend: redis\n  poll: 20ms\n" + state_block(url, key_prefix) + "\n"
    )
    return f"""
defaults:
  webhook_url: {hooks.url}
  default_region: DE
providers:
{twilio_block("twilio", fake)}
rules:
  - name: default
    providers: [twilio]
{store}"""


@pytest.mark.parametrize("late", [False, True], ids=["ack-first", "receipt-first"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_an_opt_out_receipt_for_a_worker_sent_message_opts_the_number_out(
    tmp_path: Path,
    hooks: Hooks,
    twilio_a: FakeTwilio,
    backend: str,
    late: bool,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receipt reaches a router that never sent the message: the number comes from
    the outbox's record (the one the message was enqueued for), checked against the
    provider and id there, and is opted out for every router of the store.

    ``receipt-first``: the provider calls back before the worker that sent the message
    has written the provider's id to the outbox (the write held 300 ms here; the fake
    calls back at once).  The receipt waits for that record instead of being parked in a
    process whose own sends will never claim it."""
    if late:
        from smsroute.outbox.redis import RedisOutbox
        from smsroute.outbox.sqlite import SQLiteOutbox

        store_class: type = SQLiteOutbox if backend == "sqlite" else RedisOutbox
        ack = store_class.ack

        async def late_ack(self: object, *args: object) -> bool:
            await asyncio.sleep(0.3)  # the delay under test, not a wait for something
            return await ack(self, *args)  # type: ignore[no-any-return]

        monkeypatch.setattr(store_class, "ack", late_ack)
    text = worker_config(backend, tmp_path, hooks, twilio_a, redis_url, prefix)
    number = "+4915123456789"
    twilio_a.receipts("opted_out")
    async with (
        Router(make_config(text), metrics=False) as sender,
        Router(make_config(text), metrics=False) as receiver,
    ):
        await hooks.serve(receiver)
        message_id = await sender.enqueue(Message(to="0151 23456789", text="Sale!"))
        async with sender.worker(concurrency=2), asyncio.timeout(10):
            await twilio_a.wait_receipts(1)
        assert twilio_a.receipts_sent[0][2] == 200
        state = await receiver.status(message_id)
        assert state is not None
        assert state.status == "failed"
        assert receiver.is_opted_out(number)
        refused = await receiver.send(Message(to=number, text="Sale!", category="marketing"))
        assert (refused.ok, refused.reason, refused.attempts) == (False, "opted_out", ())
        assert len(twilio_a.messages) == 1


async def test_a_receipt_the_outbox_cannot_take_now_is_a_503_and_its_retry_is_applied(
    tmp_path: Path,
    hooks: Hooks,
    twilio_a: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    proxy: PausableProxy,  # noqa: F811
) -> None:
    """The webhook's router knows the message only from the outbox (a worker elsewhere
    sent it), and the outbox's Redis does not answer: the receipt cannot be checked or
    recorded.  Before: the error went up through the webhook handler (a 500 and a
    traceback) and the receipt was remembered as seen, so the provider's retry was dropped
    as a duplicate.  Now: 503 (providers retry a 5xx), one ERROR line saying why, and the
    retry, once Redis answers, is applied."""
    sender_text = worker_config("redis", tmp_path, hooks, twilio_a, redis_url, prefix)
    receiver_text = worker_config("redis", tmp_path, hooks, twilio_a, proxy.url, prefix).replace(
        f'key_prefix: "{prefix}"', f'key_prefix: "{prefix}"\n  timeout: 300ms'
    )
    async with (
        Router(make_config(sender_text), metrics=False) as sender,
        Router(make_config(receiver_text), metrics=False) as receiver,
    ):
        await hooks.serve(receiver)
        message_id = await sender.enqueue(Message(to="+4915123456789", text="hi"))
        async with sender.worker(concurrency=1):
            await until(lambda: bool(twilio_a.messages), what="the worker's send")
        state = await sender.status(message_id)
        assert state is not None
        assert state.status == "accepted"
        record = twilio_a.messages[0]
        proxy.pause()
        with every_log_record() as records:
            assert await twilio_a.send_receipt(record, "delivered") == 503
        errors = [line for level, line in records.records if level >= logging.ERROR]
        assert any("could not be applied now" in line for line in errors), errors
        assert not any("Traceback" in line for _, line in records.records)
        proxy.resume()
        assert await twilio_a.send_receipt(record, "delivered") == 200  # the retry
        state = await receiver.status(message_id)
        assert state is not None
        assert state.status == "delivered"
