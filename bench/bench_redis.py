"""Router.send CPU per message: state in Redis against state in memory, in one run.

    python bench/bench_redis.py [--messages 10000] [--concurrency 64] [--rounds 3]
                                [--redis redis://127.0.0.1:6379/0]

The same router config is run with ``state: {backend: memory}`` and with
``state: {backend: redis}``, against one fake Twilio in another process.  Two
provider settings: a rate limit that does not bind (100000/s: with Redis,
every message takes a slot of the shared schedule, leased in batches), and
no rate limit.  Client CPU per message is this process's CPU time divided by
messages (the fake and Redis run elsewhere).  Each round runs both backends,
memory first in odd rounds and Redis first in even ones, so drift on a shared
machine and order effects hit both; the ratio of medians is what counts.
Each Redis round uses a fresh key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_send import numbers, run, start_fake

from smsroute import Message, Router, parse_config


def config(info: dict[str, str], backend: str, url: str, prefix: str, rate: str | None) -> str:
    limit = f"\n    rate_limit: {rate}" if rate else ""
    return f"""
defaults: {{max_attempts: 2}}
providers:
  twilio:
    type: twilio
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"{limit}
    prices: {{DE: 0.079, default: 0.05}}
rules:
  - name: default
    providers: [twilio]
state:
  backend: {backend}
  url: {url}
  key_prefix: "{prefix}"
"""


async def round_(
    info: dict[str, str],
    items: list[str],
    concurrency: int,
    backend: str,
    url: str,
    rate: str | None,
) -> float:
    prefix = f"smsroute-bench:{uuid.uuid4().hex[:8]}:"
    ok = 0
    async with Router(
        parse_config(config(info, backend, url, prefix, rate)), metrics=False
    ) as router:

        async def one(number: str) -> None:
            nonlocal ok
            result = await router.send(
                Message(to=number, text="Your code is 123456", category="otp")
            )
            if result.ok:
                ok += 1

        await run(concurrency, items[:concurrency], one)  # warm the pool (and the lease)
        ok = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await run(concurrency, items, one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert ok == len(items), f"{backend}: {ok}/{len(items)} accepted"
    print(
        f"  {backend:6} {cpu / len(items) * 1e6:6.1f} us CPU/msg, {len(items) / wall:5.0f} msg/s",
        flush=True,
    )
    if backend == "redis":
        client = aioredis.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return cpu


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    proc, info = start_fake()
    n = args.messages
    lines = []
    try:
        for rate in ("100000/s", None):
            cpu: dict[str, list[float]] = {"memory": [], "redis": []}
            for i in range(args.rounds):
                items = numbers(n, seed=200 + i)
                order = ("memory", "redis") if i % 2 == 0 else ("redis", "memory")
                for backend in order:
                    cpu[backend].append(
                        await round_(info, items, args.concurrency, backend, args.redis, rate)
                    )
                print(
                    f"rate_limit {rate or 'none'} round {i + 1}: memory "
                    f"{cpu['memory'][-1] / n * 1e6:.1f} us/msg, redis "
                    f"{cpu['redis'][-1] / n * 1e6:.1f} us/msg",
                    flush=True,
                )
            mem = statistics.median(cpu["memory"]) / n
            red = statistics.median(cpu["redis"]) / n
            lines.append(
                f"rate_limit {rate or 'none':>9}: memory {mem * 1e6:6.1f} us CPU/msg, "
                f"redis {red * 1e6:6.1f} us CPU/msg, ratio {red / mem:.3f}x"
            )
    finally:
        proc.terminate()
        proc.wait()
    print()
    print(
        f"messages {n}, concurrency {args.concurrency}, rounds {args.rounds}, cores {os.cpu_count()}"
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
