"""What a dead primary costs a send once its breaker is open: p99 latency against a healthy one.

    python bench/bench_failover.py [--messages 3000] [--rounds 3]

One router, two rules over the same two providers: ``healthy`` lists the
working fake Twilio (another process) first; ``failover`` lists a dead provider
first (a port nothing listens on: connection refused), then the same working
fake.  The dead provider's breaker is opened first (five failed sends) with an
``open_for`` longer than the run, so every ``failover`` send skips it in its
plan and goes to the working provider.  Sends alternate between the two rules,
one at a time (no queueing in the latency), each timed from the call to the
result; the target is that ``failover``'s p99 is at most 1 ms above
``healthy``'s.  Each round uses fresh numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_send import numbers, start_fake

from smsroute import BreakerState, Message, Router, parse_config


def dead_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(info: dict[str, str], port: int) -> str:
    return f"""
defaults:
  max_attempts: 2
  breaker: {{consecutive_failures: 5, open_for: 1h, max_open_for: 1h}}
providers:
  dead:
    type: twilio
    base_url: http://127.0.0.1:{port}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
  good:
    type: twilio
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
rules:
  - name: failover
    match: {{category: otp}}
    providers: [dead, good]
  - name: healthy
    providers: [good, dead]
"""


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def one_round(info: dict[str, str], count: int, seed: int) -> tuple[list[float], list[float]]:
    items = numbers(2 * count + 10, seed=seed)
    async with Router(parse_config(config(info, dead_port())), metrics=True) as router:
        for number in items[:5]:  # open the dead provider's breaker
            result = await router.send(Message(to=number, text="hello", category="otp"))
            assert result.provider == "good", result.attempts
        assert router.breaker_states()[("dead", None)] is BreakerState.OPEN
        for number in items[5:10]:  # warm the connection to the working fake
            await router.send(Message(to=number, text="hello", category="transactional"))
        healthy: list[float] = []
        failover: list[float] = []
        clock = time.perf_counter
        for i, number in enumerate(items[10:]):
            category = "otp" if i % 2 else "transactional"
            start = clock()
            result = await router.send(Message(to=number, text="hello", category=category))
            took = clock() - start
            assert result.provider == "good", result.attempts
            assert len(result.attempts) == 1, result.attempts
            (failover if category == "otp" else healthy).append(took)
    return healthy, failover


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000, help="per rule and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proc, info = start_fake()
    added = []
    try:
        for i in range(args.rounds):
            healthy, failover = await one_round(info, args.messages, seed=300 + i)
            h50, f50 = statistics.median(healthy), statistics.median(failover)
            h99, f99 = p99(healthy), p99(failover)
            added.append(f99 - h99)
            print(
                f"round {i + 1}: healthy p50 {h50 * 1e3:.3f} ms p99 {h99 * 1e3:.3f} ms | "
                f"failover (breaker open) p50 {f50 * 1e3:.3f} ms p99 {f99 * 1e3:.3f} ms | "
                f"p99 added {(f99 - h99) * 1e3:+.3f} ms, p50 added {(f50 - h50) * 1e3:+.3f} ms",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait()
    print(
        f"p99 added by an open primary: median {statistics.median(added) * 1e3:+.3f} ms "
        f"(rounds: {', '.join(f'{a * 1e3:+.3f}' for a in added)}; target at most 1 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
