"""Rate limits hold while a queue drains, counted on what the limiter grants.

Three fakes limited to 50/s, 20/s and 10/s get a queue of 1,000 messages
(one rule per country, in the proportions of their limits, interleaved), and
every message really goes to its fake.  The bound is put on the limiter's own
decisions: the router's token bucket of each provider records, on its own
clock, the time each token it grants may be used (the outbox worker's pacer
asks for a token only once its sliding window allows another send).  No
1-second window (closed, starting at any grant) holds more grants than the
limit, and the busiest one comes close to it, so the pacing is not needlessly
slow.  Every message at a fake was sent on one recorded grant.

When the requests then reach a fake is not counted: on a machine busy with
other work the event loop runs late and a few sends bunch up on their way,
which the limiter cannot prevent and a provider's own window tolerates by the
worker's ``rate_margin``.  A limiter that grants too much still fails here:
the grants themselves would exceed the limit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import make_config, twilio_block

import smsroute.state.memory
from smsroute import Message, Router
from smsroute.clock import Clock
from smsroute.ratelimit import TokenBucket
from smsroute.testing import FakeTwilio

pytestmark = pytest.mark.slow

#: Provider, country, number, limit per second; 5:2:1 like the limits.
LANES = (
    ("fast", "DE", "+4915123456789", 50, 5),
    ("medium", "FR", "+33612345678", 20, 2),
    ("slow", "GB", "+447911123456", 10, 1),
)


class RecordingBucket(TokenBucket):
    """A :class:`TokenBucket` that records when each token it grants may be used.

    A grant's time is the bucket's own decision: the clock reading the
    reservation was computed from, plus the wait it returned.  A token given
    back unused (a send cancelled while it waited) is struck off again.
    """

    def __init__(self, rate: float | None, burst: int | None, clock: Clock) -> None:
        super().__init__(rate, burst, clock)
        self.grants: list[float] = []

    def reserve(self, max_wait: float) -> float | None:
        wait = super().reserve(max_wait)
        if wait is not None:
            # _last is the clock reading reserve() just computed the wait from.
            self.grants.append(self._last + wait)
        return wait

    def refund(self, at: float) -> None:
        super().refund(at)
        if self.grants:
            self.grants.remove(min(self.grants, key=lambda g: abs(g - at)))


def busiest_second(times: list[float]) -> int:
    """The most times in any closed window of one second (windows start at each time)."""
    times = sorted(times)
    best, end = 0, 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] <= t + 1.0:
            end += 1
        best = max(best, end - start)
    return best


async def test_queue_drains_without_the_limiter_granting_more_than_any_providers_rate_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router's in-memory state makes its buckets from this name: every one records.
    monkeypatch.setattr(smsroute.state.memory, "TokenBucket", RecordingBucket)
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
            for _, country, number, _, share in LANES
            for k in range(share)
        ]
        assert len(queue) == 1000
        async with Router(config, metrics=False) as router:
            buckets = {
                name: router.state.bucket(router.config.providers[name]) for name, *_ in LANES
            }
            await router.enqueue_many(queue)
            async with router.worker(concurrency=32) as worker, asyncio.timeout(40):
                await worker.drain()
            assert (await router.outbox.counts())["sent"] == 1000

    for fake, (name, _, _, limit, share) in zip((de, fr, gb), LANES, strict=True):
        bucket = buckets[name]
        assert isinstance(bucket, RecordingBucket)
        assert len(fake.messages) == 125 * share
        # One grant per request: every message at the fake waited for its own token.
        assert len(bucket.grants) == len(fake.messages), name
        busiest = busiest_second(bucket.grants)
        assert busiest <= limit, f"{name}: {busiest} tokens granted in one second, limit {limit}"
        assert busiest >= 0.9 * limit, f"{name}: at most {busiest} granted in a second"
