"""One replica for the multi-process Redis tests: a router sending on a schedule.

    python tests/redis_replica.py CONFIG --duration S --rate R --to +49151

Enters the router (so Redis is connected), prints ``{"ready": ...}``, reads a
start time T from stdin, then at ``time.monotonic() == T`` (the same clock in
every process on one machine) sends ``R`` messages per second, open loop, to numbers made of ``--to`` and 8
more digits, for ``S`` seconds.  Every breaker transition is printed as it happens, with
the monotonic time; at the end one line sums up the results.

With ``--grants FILE`` the replica's rate limiters record what they decide and
write it to FILE as JSON at the end (see :class:`RecordingBucket`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter, deque
from pathlib import Path

import smsroute.state.redis
from smsroute import BreakerTransition, Event, Message, Router
from smsroute.config import ProviderConfig
from smsroute.state.redis import RedisState
from smsroute.state.redis_bucket import GRACE, SharedBucket


class RecordingBucket(SharedBucket):
    """A :class:`SharedBucket` that records the slots Redis grants and the ones sends take.

    Every lease reports, through the bucket's ``on_lease`` hook, the Redis time of
    each slot granted and which of them were kept; :attr:`queue` follows the
    bucket's local slot queue entry by entry with each slot's Redis time.  Each
    token ``_take`` hands out is matched to the slot it came from (the last one it
    removed from the queue: the ones before it were dropped as unused), and
    recorded with that slot's Redis time, how late (seconds) the bucket let it be
    used (the later of the slot's local time and the moment of the take, minus the
    slot's time: never negative; the moment is read just before the take, so this
    never overstates it), and whether the slot came in a lease that reached the
    replica more than ``GRACE`` after its time (kept only when the replica was late
    twice in a row: then the bucket uses such slots on arrival rather than starve).
    """

    made: list[RecordingBucket] = []

    def __init__(self, provider: ProviderConfig, backend: RedisState) -> None:
        super().__init__(provider, backend)
        #: The Redis time of every slot leased by this replica, kept or dropped.
        self.granted: list[float] = []
        #: (local time, Redis time, offset, came late) of each entry of the local slot queue.
        self.queue: deque[tuple[float, float, float, bool]] = deque()
        #: (Redis time of the slot, lateness, came late) of every token handed out.
        self.taken: list[tuple[float, float, bool]] = []
        #: Tokens handed out that were not slots of the shared schedule (local fallback).
        self.unslotted = 0
        #: Changes to the slot queue other than leases and takes (pauses, refunds).
        self.unexpected: list[str] = []
        self.on_lease = self._leased
        RecordingBucket.made.append(self)

    def _follows(self, n: int) -> bool:
        """Whether :attr:`queue` is the first ``n`` entries of the slot queue, and all of them."""
        slots = self._slots
        return len(self.queue) == n and all(
            a is b for a, (b, *_) in zip(slots, self.queue, strict=False)
        )

    def _lost_step(self, n: int, what: str) -> None:
        """Note a change to the slot queue this record cannot follow, and start over."""
        self.unexpected.append(what)
        self.queue = deque((at, math.nan, 0.0, False) for at in list(self._slots)[:n])

    def _leased(self, servers: list[float], kept: int, offset: float) -> None:
        self.granted.extend(servers)
        slots = self._slots
        old = len(slots) - kept
        if not self._follows(old):
            self._lost_step(old, "the slot queue changed outside leases and takes")
        self.queue.extend(
            (at, server, offset, at + offset - server > GRACE)
            for at, server in zip(list(slots)[old:], servers[len(servers) - kept :], strict=True)
        )

    def _take(self, max_wait: float) -> float | None:
        before = len(self._slots)
        if not self._follows(before):
            self._lost_step(before, "the slot queue changed outside leases and takes")
        now = self.clock.now()
        wait = super()._take(max_wait)
        removed = before - len(self._slots)
        entries = [self.queue.popleft() for _ in range(removed)]
        if wait is not None:
            if entries:
                at, server, offset, came_late = entries[-1]
                self.taken.append((server, max(at, now) + offset - server, came_late))
            else:
                self.unslotted += 1
        return wait

    def report(self) -> dict[str, object]:
        return {
            "granted": self.granted,
            "taken": self.taken,
            "unslotted": self.unslotted,
            "unexpected": self.unexpected,
        }


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def on_event(event: Event) -> None:
    if isinstance(event, BreakerTransition):
        say(
            event="breaker",
            provider=event.provider,
            to=event.to_state,
            at=time.monotonic(),
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--to", default="+49151")
    parser.add_argument("--grants", type=Path, help="record the rate limiters' grants here")
    args = parser.parse_args()
    if args.grants is not None:  # the state backend makes its buckets from this name
        smsroute.state.redis.SharedBucket = RecordingBucket  # type: ignore[misc]

    outcomes: Counter[str] = Counter()
    providers: Counter[str] = Counter()
    async with Router.from_yaml(args.config, hooks=[on_event], metrics=False) as router:
        say(ready=True, replica=getattr(router.state, "replica", None))

        async def one(i: int) -> None:
            number = f"{args.to}{i % 100_000_000:08d}"
            result = await router.send(Message(to=number, text=f"m{i}", category="otp"))
            outcomes[result.status if result.ok else str(result.outcome)] += 1
            if result.provider:
                providers[result.provider] += 1

        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.sleep(max(0.0, float(line) - time.monotonic()))
        tasks = []
        interval = 1.0 / args.rate
        start = time.monotonic()
        i = 0
        while (now := time.monotonic()) < start + args.duration:
            due = start + i * interval
            if now < due:
                await asyncio.sleep(due - now)
                continue
            tasks.append(asyncio.ensure_future(one(i)))
            i += 1
        await asyncio.gather(*tasks)
    if args.grants is not None:
        args.grants.write_text(json.dumps({b.name: b.report() for b in RecordingBucket.made}))
    say(done=True, sent=i, outcomes=dict(outcomes), providers=dict(providers))


async def bounded() -> None:
    # A replica never outlives a test that lost track of it.
    async with asyncio.timeout(120):
        await main()


if __name__ == "__main__":
    asyncio.run(bounded())
    sys.exit(0)
