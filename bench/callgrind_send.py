"""Router.send against raw aiohttp in instructions per message, under callgrind.

    python bench/callgrind_send.py [--messages 1000] [--base 300] [--arm ARM ...]
                                   [--repeat 1] [--profile DIR]

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

Arms (``--arm`` picks some; all by default): ``raw``, ``router`` (the minimal
config: one provider, two rules), ``router-no-metrics``, ``router-realistic``
(bench/realistic.yaml: two Twilio accounts, twelve rules, prices,
``max_concurrency``, metrics on), ``router-realistic-uncapped`` (the same
without ``max_concurrency``: the difference is what an uncontended slot costs),
``router-realistic-guards`` (bench/realistic-guards.yaml: the realistic config with
every fraud and spend guard configured, none reached; issue 19),
``router-realistic-redis`` and ``router-realistic-guards-redis`` (the same two configs with
their state in Redis, see :data:`REDIS_STATE`: the client's side of the guards' batches),
``router-realistic-guards-redis-local`` (the same with ``guard_checks: local``: checked in
memory, recorded in Redis)
and ``sdk`` (the twilio SDK's async client).
``--profile DIR`` keeps each run's callgrind file there (for callgrind_annotate).

The count of one run is exact, but the 64 concurrent sends interleave as the fake answers,
so the garbage collector's collections fall at different points from run to run: an arm's
per-message figure moves by up to ±5k between runs (more with fewer messages).
``--repeat N`` runs each arm N times and gives the median (and the spread).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The ``-redis`` arms' state: the Redis on 127.0.0.1:6379 (outside valgrind), a key
#: prefix per run, and no periodic work during the run (a sync a second, the most allowed; no rate
#: limit): under valgrind the client runs ~50x slower, so work done per second of wall
#: time would land on 50x fewer messages and be counted as theirs.
REDIS_STATE = """
state:
  backend: redis
  url: redis://127.0.0.1:6379/0
  key_prefix: "smsroute-bench-callgrind:{}:"
  sync_interval: 1s
  timeout: 30s
"""
ARMS = {
    "raw": "raw aiohttp",
    "router": "Router.send",
    "router-no-metrics": "Router.send, metrics off",
    "router-realistic": "Router.send, realistic",
    "router-realistic-uncapped": "realistic, no max_concurrency",
    "router-realistic-guards": "realistic, with guards",
    "router-realistic-redis": "realistic, Redis state",
    "router-realistic-guards-redis": "guards, Redis state",
    "router-realistic-guards-redis-local": "guards, Redis, local checks",
    "sdk": "twilio SDK (async)",
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
        elif arm == "sdk":
            await b.sdk_round(info, warm, 64)
            await b.sdk_round(info, items, 64)
        else:
            if arm.endswith("-local"):
                from smsroute.state import redis_guards

                # Records wait SPEND_DELAY (10 ms) to share a batch; under valgrind the
                # client runs ~50x slower, so the same wait would hold 50x fewer: wait
                # 50x longer, for the batches a native run makes.
                redis_guards.SPEND_DELAY *= 50
            kw = {
                "metrics": arm != "router-no-metrics",
                "realistic": arm.startswith("router-realistic"),
                "capped": arm != "router-realistic-uncapped",
                "guards": arm.startswith("router-realistic-guards"),
                "state": (
                    REDIS_STATE.format(uuid.uuid4().hex[:8])
                    + ("  guard_checks: local\n" if arm.endswith("-local") else "")
                    if "-redis" in arm
                    else ""
                ),
            }
            await b.router_round(info, warm, 64, **kw)
            await b.router_round(info, items, 64, **kw)
    finally:
        proc.terminate()
        proc.wait()


def callgrind(script: str, args: list[str], out_file: str = "/dev/null") -> int:
    """Instructions ``python script *args`` executes under valgrind's callgrind."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            sys.executable,
            script,
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def instructions(arm: str, count: int, profile: Path | None = None) -> int:
    """Instructions the client executes sending ``count`` messages (plus fixed costs)."""
    out_file = "/dev/null" if profile is None else str(profile / f"callgrind.{arm}.{count}")
    return callgrind(__file__, ["--arm", arm, "--count", str(count)], out_file)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--base", type=int, default=300)
    parser.add_argument(
        "--arm", choices=sorted(ARMS), action="append", help="run only these arms (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per arm (the median is given)")
    parser.add_argument("--profile", type=Path, help="keep the callgrind files in this directory")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:  # one measured client, run by valgrind
        asyncio.run(client(args.arm[0], args.count))
        return
    arms = [arm for arm in ARMS if args.arm is None or arm in args.arm]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")

    per_message: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two valgrinds at once on 2 cores
        for arm in arms:
            runs = []
            for _ in range(args.repeat):
                small = pool.submit(instructions, arm, args.base, args.profile)
                large = pool.submit(instructions, arm, args.base + args.messages, args.profile)
                runs.append((large.result() - small.result()) / args.messages)
            per_message[arm] = statistics.median(runs)
            spread = (
                f" (runs {', '.join(f'{r / 1000:.1f}' for r in runs)})" if len(runs) > 1 else ""
            )
            print(
                f"{ARMS[arm]:26s}: {per_message[arm] / 1000:8.1f} k instructions/msg{spread}",
                flush=True,
            )
    raw = per_message.get("raw")
    if raw is None:
        return
    ratios = ", ".join(f"{ARMS[arm]} {per_message[arm] / raw:.3f}x" for arm in arms if arm != "raw")
    print(
        f"ratio to raw aiohttp      : {ratios} "
        f"({args.messages} messages over a base of {args.base}, concurrency 64)"
    )


if __name__ == "__main__":
    main()
