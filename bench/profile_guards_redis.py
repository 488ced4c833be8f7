"""Where a guarded send's CPU goes with the state in Redis, in one process (issue 19).

    python bench/profile_guards_redis.py [--config realistic-guards.yaml]
                                         [--backend redis|memory] [--messages 3000]
                                         [--guard-checks exact|local]
                                         [--no-io] [--profile FILE]

One router (bench/<config> as bench_procs.py runs it: a non-binding rate limit and a
state section) against a fake Twilio in another process; after a warm-up, ``--messages``
sends at 64 concurrent, and the CPU per message split into user and system time, with
the process's voluntary and involuntary context switches.  ``--no-io`` answers the
guards' script calls at once without Redis (every message passes, nothing to report):
what is left over the run without guards is the waiting itself, not Redis's I/O (with
``--guard-checks local``: the recording, the batches' answers not read back).
``--profile FILE`` writes a cProfile of the measured sends (for pstats).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


async def no_io(channel: Any, args: list[bytes], count: int) -> Any:
    """A guards' script reply with every message passed and nothing to report, without
    asking Redis (the head of ``args``: mode, n spends, n x (key, amount, ttl), n lanes;
    see ``smsroute.state.guards_spec.pack``)."""
    fields = args[0].split(b"\r\n")[1::2]  # the head's bulk strings
    spends = int(fields[1])
    lanes = int(fields[2 + 3 * spends])
    await asyncio.sleep(0)
    return [["0"] * spends, [[["0"] * 2, 0, 0, 0]] * lanes, []]


async def no_io_records(channel: Any, args: list[bytes], count: int) -> Any:
    """A record batch's reply, without asking Redis (see ``--no-io``)."""
    await asyncio.sleep(0)
    return [[], [], []]


async def main(args: argparse.Namespace) -> None:
    import bench_procs
    import bench_send as b

    from smsroute import Message, Router, parse_config

    proc, info = b.start_fake()
    try:
        text = bench_procs.config_text(
            args.backend,
            args.redis,
            f"smsroute-bench-prof:{uuid.uuid4().hex[:8]}:",
            args.config,
            args.guard_checks,
        )
        environ = {
            "BENCH_URL": info["url"],
            "BENCH_ACCOUNT_SID": info["account_sid"],
            "BENCH_AUTH_TOKEN": info["auth_token"],
        }
        async with Router(parse_config(text, environ=environ)) as router:
            failed = 0

            async def one(number: str) -> None:
                nonlocal failed
                result = await router.send(
                    Message(to=number, text="Your code is 123456", category="otp")
                )
                failed += not result.ok

            await b.run(64, b.numbers(300, seed=3), one)
            profile = cProfile.Profile() if args.profile else None
            before = resource.getrusage(resource.RUSAGE_SELF)
            cpu = time.process_time()
            if profile is not None:
                profile.enable()
            await b.run(64, b.numbers(args.messages, seed=4), one)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
            cpu = time.process_time() - cpu
            after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        proc.terminate()
        proc.wait()
    n = args.messages
    print(
        f"{args.config} {args.backend}{' no-io' if args.no_io else ''}: "
        f"{cpu / n * 1e6:.1f} us CPU/msg (user {(after.ru_utime - before.ru_utime) / n * 1e6:.1f},"
        f" system {(after.ru_stime - before.ru_stime) / n * 1e6:.1f}); context switches "
        f"{after.ru_nvcsw - before.ru_nvcsw} voluntary, {after.ru_nivcsw - before.ru_nivcsw} "
        f"involuntary; {failed} failed"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="realistic-guards.yaml")
    parser.add_argument("--backend", choices=["redis", "memory"], default="redis")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--guard-checks", choices=["exact", "local"], default="exact")
    parser.add_argument("--no-io", action="store_true")
    parser.add_argument("--profile")
    options = parser.parse_args()
    if options.no_io:
        from smsroute.state import redis_link

        if options.guard_checks == "local":  # records: an empty answer, nothing learnt
            from smsroute.state import guards_mirror

            redis_link.Channel.evalsha = no_io_records  # type: ignore[method-assign,assignment]
            guards_mirror.Mirror.learn = lambda *args: None  # type: ignore[method-assign]
        else:
            redis_link.Channel.evalsha = no_io  # type: ignore[method-assign,assignment]
    asyncio.run(main(options))
