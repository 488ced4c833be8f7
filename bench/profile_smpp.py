"""cProfile of ``Router.send`` over one SMPP bind, against FakeSMSC in another process.

    python bench/profile_smpp.py [--messages 3000] [--window 10] [--top 30]

The same router, SMSC process and messages as ``bench/bench_smpp.py``; prints the
client CPU per message (with the profiler's overhead) and the functions by own
time and by cumulative time.  cProfile times are wall-clock: ``socket.send`` and
``epoll`` grow when the SMSC process waits for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_smpp  # the bench's SMSC process and config

from smsroute import Message, Router
from smsroute.instrument.prometheus import CollectorRegistry


async def profile(messages: int, window: int, top: int) -> None:
    proc, port = bench_smpp.start_smsc()
    try:
        config = bench_smpp.router_config(port, window)
        async with Router(config, registry=CollectorRegistry()) as router:

            async def one(number: str) -> None:
                result = await router.send(Message(to=number, text=bench_smpp.TEXT, category="otp"))
                if not result.ok:
                    raise RuntimeError(f"not accepted: {result.attempts}")

            await bench_smpp.run(window, bench_smpp.numbers(500, 0), one)  # warm-up
            profiler = cProfile.Profile()
            cpu = time.process_time()
            profiler.enable()
            await bench_smpp.run(window, bench_smpp.numbers(messages, 1000), one)
            profiler.disable()
            cpu = time.process_time() - cpu
        print(f"{messages} sends, {cpu / messages * 1e6:.1f} µs client CPU/msg under cProfile")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumtime").print_stats(top)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(profile(args.messages, args.window, args.top))


if __name__ == "__main__":
    main()
