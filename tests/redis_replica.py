"""One replica for the multi-process Redis tests: a router sending on a schedule.

    python tests/redis_replica.py CONFIG --duration S --rate R --to +49151

Enters the router (so Redis is connected), prints ``{"ready": ...}``, reads a
start time T from stdin, then at ``time.monotonic() == T`` (the same clock in
every process on one machine) sends ``R`` messages per second, open loop, to numbers made of ``--to`` and 8
more digits, for ``S`` seconds.  Every breaker transition is printed as it happens, with
the monotonic time; at the end one line sums up the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

from smsroute import BreakerTransition, Event, Message, Router


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
    args = parser.parse_args()

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
    say(done=True, sent=i, outcomes=dict(outcomes), providers=dict(providers))


async def bounded() -> None:
    # A replica never outlives a test that lost track of it.
    async with asyncio.timeout(120):
        await main()


if __name__ == "__main__":
    asyncio.run(bounded())
    sys.exit(0)
