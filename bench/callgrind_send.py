"""Router.send against raw aiohttp in instructions per message, under callgrind.

    python bench/callgrind_send.py [--messages 1000] [--base 300]

bench_send.py measures CPU time, which on a shared VM drifts by tens of
percent from minute to minute.  This counts the instructions the client
process executes (valgrind's callgrind; ``apt-get install valgrind``), which
do not drift: the same work gives the same count to within a fraction of a
percent.  Each client (raw aiohttp, Router.send, Router.send with
``metrics=False``) runs the same rounds as bench_send.py, with ``--base`` and
with ``--base + --messages`` messages; the difference divided by
``--messages`` is the cost of one message, start-up and warm-up cancelled
out.  The fake Twilio runs in its own process, outside valgrind.

Instructions are not time (a cache miss costs more than an add), but for the
same interpreter running similar Python they track CPU time closely; the CPU
time ratio from bench_send.py is the target's measure, this is its check.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = {
    "raw": "raw aiohttp",
    "router": "Router.send",
    "router-no-metrics": "Router.send, metrics off",
}


async def client(arm: str, count: int) -> None:
    sys.path.insert(0, str(HERE))
    import bench_send as b

    proc, info = b.start_fake()
    try:
        warm = b.numbers(200, seed=78)
        items = b.numbers(count, seed=77)
        if arm == "raw":
            await b.raw_round(info, warm, 64)
            await b.raw_round(info, items, 64)
        else:
            metrics = arm == "router"
            await b.router_round(info, warm, 64, metrics=metrics)
            await b.router_round(info, items, 64, metrics=metrics)
    finally:
        proc.terminate()
        proc.wait()


def instructions(arm: str, count: int) -> int:
    """Instructions the client executes sending ``count`` messages (plus fixed costs)."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--arm",
            arm,
            "--count",
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--base", type=int, default=300)
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:  # one measured client, run by valgrind
        asyncio.run(client(args.arm, args.count))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")

    per_message: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two valgrinds at once on 2 cores
        for arm in ARMS:
            small = pool.submit(instructions, arm, args.base)
            large = pool.submit(instructions, arm, args.base + args.messages)
            per_message[arm] = (large.result() - small.result()) / args.messages
            print(f"{ARMS[arm]:26s}: {per_message[arm] / 1000:8.1f} k instructions/msg", flush=True)
    raw = per_message["raw"]
    print(
        f"ratio to raw aiohttp      : Router.send {per_message['router'] / raw:.3f}x, "
        f"metrics off {per_message['router-no-metrics'] / raw:.3f}x "
        f"({args.messages} messages over a base of {args.base}, concurrency 64)"
    )


if __name__ == "__main__":
    main()
