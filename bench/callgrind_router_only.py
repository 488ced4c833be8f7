"""The router's own instructions per ``Router.send``, the HTTP client left out, under callgrind.

    python bench/callgrind_router_only.py [--messages 2000] [--base 1000] [--repeat 3]
                                          [--config bench/realistic.yaml]
                                          [--state memory|redis|redis-local]

``callgrind_send.py`` counts a whole send, aiohttp's request and the fake's answer
included, with 64 sends interleaved: its per-message figure moves by up to +-5k
instructions between runs (the garbage collector's collections fall at different
points).  This one isolates the router: every provider's ``send`` is replaced by a
coroutine that answers "accepted" at once (no socket, no aiohttp), the sends run one
after the other with the garbage collector off, and each message goes to a number not
used before.  What is left is parsing and checking the number, matching the rule,
ordering the providers, the breaker, the bucket, the concurrency slot, the guards when
configured, the status record and the metrics: the work a change to ``Dispatcher.send``
adds to or takes from.  Runs spread by about +-0.5k, so a change of 1k shows.

Each run counts ``--base`` sends and ``--base + --messages`` sends in two processes; the
difference over ``--messages`` is the cost of one send, start-up cancelled out.  Not a
target's measure (those are in callgrind_send.py and RESULTS.md): a tool to say what a
hot-path change costs, as a commit that adds instructions must.

``--state redis`` puts the state in the Redis on 127.0.0.1:6379 (``callgrind_send.py``'s
``REDIS_STATE``, a fresh key prefix per process: a prefix reused across runs fills the
per-number logs); ``redis-local`` adds ``guard_checks: local`` (issue 19's Redis arm).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The benchmark config's placeholders: nothing listens there (no request is made).
ENVIRON = {
    "BENCH_URL": "http://127.0.0.1:9",
    "BENCH_ACCOUNT_SID": "AC" + "0" * 32,
    "BENCH_AUTH_TOKEN": "t" * 32,
}
#: Sends before the counted ones: caches, lanes and label children made.
WARM = 200


def state_section(state: str) -> str:
    """The YAML ``state:`` section of ``--state`` (empty for memory)."""
    if state == "memory":
        return ""
    from callgrind_send import REDIS_STATE

    section = REDIS_STATE.format(uuid.uuid4().hex[:8])
    return section + ("  guard_checks: local\n" if state == "redis-local" else "")


async def sends(text: str, count: int) -> None:
    """``count`` sends through a router (config ``text``) whose providers answer at once."""
    from smsroute import Message, Router
    from smsroute.configload import parse_config
    from smsroute.message import Outcome
    from smsroute.providers.base import OutboundSMS, Reply

    config = parse_config(text, environ=ENVIRON)
    async with Router(config) as router:

        async def accepted(sms: OutboundSMS, session: object) -> Reply:
            return Reply(Outcome.ACCEPTED, provider_message_id="SM" + sms.message_id)

        for provider in router.dispatcher.runtime.providers.values():
            provider.send = accepted  # type: ignore[method-assign]
        # Each message to a number not used before, spread over a thousand 8-digit
        # prefixes (7919 is prime to 9e7: no number twice) so that no velocity limit of
        # bench/realistic-guards.yaml is reached.
        numbers = (f"+49151{10_000_000 + i * 7919 % 90_000_000:08d}" for i in range(WARM + count))
        messages = [Message(to=n, text="Your code is 123456", category="otp") for n in numbers]
        for message in messages[:WARM]:
            await router.send(message)
        gc.collect()
        gc.disable()
        refused = 0
        for message in messages[WARM:]:
            result = await router.send(message)
            refused += result.status != "accepted"
        if refused:
            raise SystemExit(f"{refused} of {count} sends not accepted: the count is not a send's")


def count_sends(config_path: str, count: int, state: str) -> int:
    """Instructions of one process making ``count`` counted sends."""
    from callgrind_send import callgrind  # the same valgrind run and count reading

    args = ["--config", config_path, "--state", state, "--count", str(count)]
    return callgrind(__file__, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--base", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", default=str(HERE / "realistic.yaml"))
    parser.add_argument("--state", choices=("memory", "redis", "redis-local"), default="memory")
    parser.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:  # one measured process, run by valgrind
        text = Path(args.config).read_text() + state_section(args.state)
        asyncio.run(sends(text, args.count))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    runs = []
    for _ in range(args.repeat):
        small = count_sends(args.config, args.base, args.state)
        large = count_sends(args.config, args.base + args.messages, args.state)
        runs.append((large - small) / args.messages)
    shown = ", ".join(f"{r / 1000:.1f}" for r in runs)
    print(
        f"Router.send, router only ({Path(args.config).name}, {args.state}): "
        f"{statistics.median(runs) / 1000:.1f} k instructions/msg (runs {shown})"
    )


if __name__ == "__main__":
    main()
