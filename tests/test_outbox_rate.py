"""Rate limits hold at the providers while a queue drains.

Three fakes limited to 50/s, 20/s and 10/s get a queue of 1,000 messages
(one rule per country, in the proportions of their limits, interleaved).
Counted where it matters, at the fakes from when each message arrived: no
1-second window (closed, starting at any arrival) holds more than the limit,
and the busiest one comes close to it, so the pacing is not needlessly slow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import make_config, twilio_block

from smsroute import Message, Router
from smsroute.testing import FakeTwilio

pytestmark = pytest.mark.slow

#: Country, number, provider limit per second; 5:2:1 like the limits.
LANES = (
    ("DE", "+4915123456789", 50, 5),
    ("FR", "+33612345678", 20, 2),
    ("GB", "+447911123456", 10, 1),
)


def busiest_second(fake: FakeTwilio) -> int:
    times = sorted(m.received_at for m in fake.messages)
    best, end = 0, 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] <= t + 1.0:
            end += 1
        best = max(best, end - start)
    return best


async def test_queue_drains_without_exceeding_any_providers_rate_limit(tmp_path: Path) -> None:
    async with FakeTwilio() as de, FakeTwilio() as fr, FakeTwilio() as gb:
        config = make_config(
            f"""
providers:
{twilio_block("fast", de, rate_limit="50/s")}
{twilio_block("medium", fr, rate_limit="20/s")}
{twilio_block("slow", gb, rate_limit="10/s")}
rules:
  - {{name: germany, match: {{country: DE}}, providers: [fast]}}
  - {{name: france, match: {{country: FR}}, providers: [medium]}}
  - {{name: default, providers: [slow]}}
outbox:
  path: {tmp_path / "outbox.db"}
"""
        )
        queue = [
            Message(to=number, text=f"{country} {round_}.{k}")
            for round_ in range(125)
            for country, number, _, share in LANES
            for k in range(share)
        ]
        assert len(queue) == 1000
        async with Router(config, metrics=False) as router:
            await router.enqueue_many(queue)
            async with router.worker(concurrency=32) as worker, asyncio.timeout(40):
                await worker.drain()
            assert (await router.outbox.counts())["sent"] == 1000

    for fake, (_, _, limit, share) in zip((de, fr, gb), LANES, strict=True):
        assert len(fake.messages) == 125 * share
        assert busiest_second(fake) <= limit
        assert busiest_second(fake) >= 0.9 * limit
