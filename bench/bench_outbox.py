"""The outbox: how fast messages go in, and how fast a worker drains them.

    python bench/bench_outbox.py [--enqueue 5000] [--many 50000] [--drain 10000]
                                 [--concurrency 64] [--rounds 3] [--synchronous normal]

enqueue one at a time  ``await router.enqueue(m)`` in a loop: validation, one
                       transaction and one commit per message (WAL)
enqueue_many           ``await router.enqueue_many(batch)`` in batches of 1,000
drain                  a worker (``concurrency``) sends a queue of ``--drain``
                       messages to a fake Twilio in another process, provider
                       limits generous (5,000/s): messages/s from start to empty
send() reference       ``Router.send`` with as many concurrent callers, same
                       fake: what routing alone costs here, the drain's ceiling

Every message has its own valid German mobile number, so every enqueue parses
a number it has not seen.  Each round uses a fresh database in a temporary
folder.  Besides messages/s, each line shows this process's CPU time per
message (the event loop and the SQLite thread; the fake runs elsewhere),
which a machine shared with other work disturbs less than wall time.
Medians over rounds are printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smsroute import Message, Router, parse_config


def start_fake() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smsroute.testing", "twilio"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def numbers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"+49151{rng.randrange(10**8):08d}" for _ in range(n)]


def messages(n: int, seed: int) -> list[Message]:
    return [Message(to=number, text="Your parcel ships today") for number in numbers(n, seed)]


def config(info: dict[str, str], db: Path, synchronous: str) -> str:
    return f"""
providers:
  twilio:
    type: twilio
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
    rate_limit: 5000/s
rules:
  - name: default
    providers: [twilio]
outbox:
  path: {db}
  synchronous: {synchronous}
"""


Rate = tuple[float, float]  # (messages per second, CPU microseconds per message)


class Clocks:
    def __init__(self, n: int) -> None:
        self.n = n
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rate(self) -> Rate:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return self.n / wall, cpu / self.n * 1e6


async def enqueue_round(router: Router, items: list[Message]) -> Rate:
    clocks = Clocks(len(items))
    for message in items:
        await router.enqueue(message)
    return clocks.rate()


async def many_round(router: Router, items: list[Message], batch: int = 1000) -> Rate:
    clocks = Clocks(len(items))
    for i in range(0, len(items), batch):
        await router.enqueue_many(items[i : i + batch])
    return clocks.rate()


async def drain_round(router: Router, items: list[Message], concurrency: int) -> Rate:
    await router.enqueue_many(items)
    clocks = Clocks(len(items))
    async with router.worker(concurrency=concurrency) as worker:
        await worker.drain()
    rate = clocks.rate()
    counts = await router.outbox.counts()
    assert counts["sent"] >= len(items), counts
    return rate


async def send_round(router: Router, items: list[Message], concurrency: int) -> Rate:
    queue = iter(items)

    async def caller() -> None:
        for message in queue:
            result = await router.send(message)
            assert result.ok, result.reason

    clocks = Clocks(len(items))
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return clocks.rate()


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"SQLite {__import__('sqlite3').sqlite_version}, load average {load} at start"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--enqueue", type=int, default=5000)
    parser.add_argument("--many", type=int, default=50_000)
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    args = parser.parse_args()
    print(machine(), flush=True)

    proc, info = start_fake()
    results: dict[str, list[Rate]] = {"enqueue": [], "many": [], "drain": [], "send": []}
    try:
        for i in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = parse_config(config(info, Path(tmp) / "outbox.db", args.synchronous))
                async with Router(cfg, metrics=False) as router:
                    results["enqueue"].append(
                        await enqueue_round(router, messages(args.enqueue, 10 + i))
                    )
                    results["many"].append(await many_round(router, messages(args.many, 20 + i)))
                with tempfile.TemporaryDirectory() as tmp2:
                    cfg = parse_config(config(info, Path(tmp2) / "outbox.db", args.synchronous))
                    async with Router(cfg, metrics=False) as router:
                        results["drain"].append(
                            await drain_round(
                                router, messages(args.drain, 30 + i), args.concurrency
                            )
                        )
                        results["send"].append(
                            await send_round(router, messages(args.drain, 40 + i), args.concurrency)
                        )
            print(
                f"round {i + 1}: "
                + "  ".join(
                    f"{name} {values[-1][0]:6.0f}/s {values[-1][1]:4.0f}us"
                    for name, values in results.items()
                ),
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait()

    print()
    print(
        f"synchronous={args.synchronous}, rounds {args.rounds}, drain concurrency "
        f"{args.concurrency}; medians:"
    )
    labels = {
        "enqueue": f"enqueue one at a time ({args.enqueue})",
        "many": f"enqueue_many, batches of 1,000 ({args.many})",
        "drain": f"drain by a worker ({args.drain})",
        "send": f"Router.send, {args.concurrency} callers ({args.drain})",
    }
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"  {labels[name]:<42} {rate:8.0f} msg/s {cpu:7.0f} us CPU/msg")


if __name__ == "__main__":
    asyncio.run(main())
