"""SyncRouter against Router: the cost of the synchronous face (issue 17).

    python bench/bench_sync.py [--messages 3000] [--rounds 7]
    python bench/bench_sync.py --messages 20000 --paired 40   # the CPU measure, paired blocks

Both send through the same fake Twilio, run in another process.  Two measures,
each round running both arms back to back (alternating which goes first):

- CPU per message, one send at a time: process CPU time (every thread of this
  process: the caller's and the router's) divided by messages.  Target: a sync
  send costs at most 30 µs more than an async one.
- Throughput at concurrency 32: 32 asyncio tasks on one Router against 32
  threads calling one SyncRouter.  Target: the threads reach at least 80%.

Medians over rounds are the headline (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from smsroute import Config, Message, Router, SyncRouter, parse_config

MESSAGE = Message(to="+4915123456789", text="Your code is 123456", category="otp")


def config(info: dict[str, str]) -> Config:
    return parse_config(f"""
providers:
  twilio:
    type: twilio
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
rules:
  - name: default
    providers: [twilio]
""")


async def async_arm(cfg: Config, n: int, concurrency: int) -> tuple[float, float]:
    async with Router(cfg, metrics=False) as router:
        for _ in range(50):
            await router.send(MESSAGE)
        cpu, wall = time.process_time(), time.perf_counter()
        per = n // concurrency

        async def worker() -> None:
            for _ in range(per):
                await router.send(MESSAGE)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sent = per * concurrency
        return (time.process_time() - cpu) / sent, sent / (time.perf_counter() - wall)


def sync_arm(cfg: Config, n: int, concurrency: int) -> tuple[float, float]:
    with SyncRouter(cfg, metrics=False) as router:
        for _ in range(50):
            router.send(MESSAGE)
        per = n // concurrency

        def worker(_: int) -> None:
            for _ in range(per):
                router.send(MESSAGE)

        cpu, wall = time.process_time(), time.perf_counter()
        if concurrency == 1:
            worker(0)
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(worker, range(concurrency)))
        sent = per * concurrency
        return (time.process_time() - cpu) / sent, sent / (time.perf_counter() - wall)


def paired_cpu(cfg: Config, blocks: int, per_block: int) -> list[float]:
    """Sequential sends, CPU per message: an async Router (on a loop of its own, run
    only while its block runs) and a SyncRouter, both open the whole time, in
    alternating blocks (ABBA...), so that the machine's drift hits both arms alike.
    The extra CPU per message of each pair of blocks, in seconds."""
    loop = asyncio.new_event_loop()
    router = Router(cfg, metrics=False)
    loop.run_until_complete(router.__aenter__())
    sync = SyncRouter(cfg, metrics=False)

    async def async_block(n: int) -> None:
        for _ in range(n):
            await router.send(MESSAGE)

    def sync_block(n: int) -> None:
        for _ in range(n):
            sync.send(MESSAGE)

    def cpu_of(run: Callable[[], object]) -> float:
        start = time.process_time()
        run()
        return (time.process_time() - start) / per_block

    try:
        loop.run_until_complete(async_block(100))
        sync_block(100)
        extra: list[float] = []
        for b in range(blocks):
            arms = [
                lambda: loop.run_until_complete(async_block(per_block)),
                lambda: sync_block(per_block),
            ]
            if b % 2:
                arms.reverse()
            first, second = (cpu_of(arm) for arm in arms)
            extra.append(second - first if b % 2 == 0 else first - second)
        return extra
    finally:
        sync.close()
        loop.run_until_complete(router.aclose())
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="BLOCKS",
        help="instead of rounds: BLOCKS alternating blocks of --messages/BLOCKS sequential sends "
        "per arm, both routers open throughout (the CPU measure only)",
    )
    args = parser.parse_args()
    fake = subprocess.Popen(
        [sys.executable, "-m", "smsroute.testing", "twilio"], stdout=subprocess.PIPE, text=True
    )
    assert fake.stdout is not None
    cfg = config(json.loads(fake.stdout.readline()))
    cpu_extra: list[float] = []
    ratio: list[float] = []
    if args.paired:
        try:
            pairs = paired_cpu(cfg, args.paired, args.messages // args.paired)
        finally:
            fake.terminate()
            fake.wait()
        us = sorted(e * 1e6 for e in pairs)
        print(
            f"{len(us)} pairs of {args.messages // args.paired} sends: sync costs "
            f"{statistics.median(us):+.1f} µs CPU per message more than async (median; "
            f"quartiles {us[len(us) // 4]:+.1f} / {us[3 * len(us) // 4]:+.1f}; target <= 30)"
        )
        return
    try:
        for r in range(args.rounds):
            arms: list[tuple[str, Callable[[int], tuple[float, float]]]] = [
                ("async", lambda c: asyncio.run(async_arm(cfg, args.messages, c))),
                ("sync", lambda c: sync_arm(cfg, args.messages, c)),
            ]
            if r % 2:
                arms.reverse()
            seen = {name: (arm(1)[0], arm(32)[1]) for name, arm in arms}
            extra = (seen["sync"][0] - seen["async"][0]) * 1e6
            share = seen["sync"][1] / seen["async"][1]
            cpu_extra.append(extra)
            ratio.append(share)
            print(
                f"round {r + 1}: cpu/msg async {seen['async'][0] * 1e6:.0f} µs, "
                f"sync {seen['sync'][0] * 1e6:.0f} µs (+{extra:.1f}); "
                f"throughput@32 async {seen['async'][1]:.0f}/s, sync {seen['sync'][1]:.0f}/s "
                f"({share:.0%})",
                flush=True,
            )
    finally:
        fake.terminate()
        fake.wait()
    print(
        f"median: sync costs {statistics.median(cpu_extra):+.1f} µs CPU per message "
        f"(target <= 30); 32 threads reach {statistics.median(ratio):.0%} of 32 tasks "
        "(target >= 80%)"
    )


if __name__ == "__main__":
    main()
