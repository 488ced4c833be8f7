"""Receipts for messages an outbox worker sent, arriving at another process's webhooks."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import Hooks, make_config, twilio_block

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
