"""Resident memory of a router per 100,000 sends, with receipts expected and none coming.

    python bench/bench_memory.py [--blocks 4] [--block 100000] [--concurrency 64]

The worst case for what a router keeps per message: ``webhook_url`` is set (so
every accepted message waits for a receipt, for resend and for delivery
health), every message goes to a number never seen before, and no receipt
ever comes.  The fake Twilio runs in its own process.  After each block of
sends the script collects garbage and reads this process's resident set size
(VmRSS): with every per-message store bounded by count, RSS grows while the
stores fill and then stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_send as b

from smsroute import Message, Router, parse_config


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def config(info: dict[str, str]) -> str:
    return f"""
defaults:
  webhook_url: http://127.0.0.1:9/sms
  receipt_timeout: 10m
providers:
  twilio:
    type: twilio
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
    prices: {{DE: 0.079, default: 0.05}}
    breaker: {{min_delivery_ratio: 0.5}}
rules:
  - name: otp
    match: {{category: otp}}
    providers: [twilio]
    on_undelivered: resend
  - name: default
    providers: [twilio]
"""


async def main(blocks: int, block: int, concurrency: int) -> None:
    proc, info = b.start_fake()
    try:
        async with Router(parse_config(config(info))) as router:

            async def one(number: str) -> None:
                result = await router.send(Message(to=number, text="Code 123456", category="otp"))
                assert result.ok, result.reason

            await b.run(concurrency, b.numbers(1000, seed=99), one)  # warm up
            gc.collect()
            base = rss_mib()
            print(f"after warm-up: RSS {base:.1f} MiB")
            print("| sends | RSS MiB | growth in the block MiB | seconds |")
            print("|------:|--------:|------------------------:|--------:|")
            last = base
            for i in range(1, blocks + 1):
                start = time.perf_counter()
                await b.run(concurrency, b.numbers(block, seed=1000 + i), one)
                gc.collect()
                now = rss_mib()
                took = time.perf_counter() - start
                print(f"| {i * block:,} | {now:.1f} | {now - last:+.1f} | {took:.0f} |")
                last = now
            print(f"total growth over {blocks * block:,} sends: {last - base:+.1f} MiB")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.blocks, args.block, args.concurrency))
