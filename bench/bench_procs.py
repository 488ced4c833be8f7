"""Throughput across processes: k router processes, each with its own fake Twilio process.

    python bench/bench_procs.py [--k 1 2] [--messages 10000] [--concurrency 64]
                                [--rounds 3] [--redis redis://127.0.0.1:6379/0]
                                [--config realistic-guards.yaml]

Each router process runs bench/realistic.yaml (two Twilio accounts, twelve rules,
prices, ``max_concurrency``) with ``rate_limit: 100000/s`` added to both
providers (never binding, but with Redis every message takes a slot of the shared
schedule), against a fake Twilio of its own in another process.  Two state
backends: memory (each process its own) and Redis (one key prefix for all k
processes: breakers, health and the rate limit shared).  The k processes warm up,
then start together; messages/s is all of their messages over the slowest one's
wall time, CPU per message the router processes' CPU time (not the fakes') over
all of their messages.  Rounds alternate which backend goes first; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def config_text(
    backend: str, url: str, prefix: str, name: str = "realistic.yaml", guard_checks: str = "exact"
) -> str:
    """bench/<name> with a non-binding rate limit on each provider and a state section
    (with Redis: the guards' ``guard_checks``)."""
    out = []
    for line in (HERE / name).read_text().splitlines():
        out.append(line)
        if line.strip().startswith("max_concurrency:"):
            out.append("    rate_limit: 100000/s")
    checks = f", guard_checks: {guard_checks}" if backend == "redis" else ""
    out.append(f'state: {{backend: {backend}, url: "{url}", key_prefix: "{prefix}"{checks}}}')
    return "\n".join(out) + "\n"


async def child(
    backend: str,
    url: str,
    prefix: str,
    messages: int,
    concurrency: int,
    name: str,
    guard_checks: str = "exact",
) -> None:
    import bench_send as b

    from smsroute import Message, Router, parse_config

    proc, info = b.start_fake()
    try:
        environ = {
            "BENCH_URL": info["url"],
            "BENCH_ACCOUNT_SID": info["account_sid"],
            "BENCH_AUTH_TOKEN": info["auth_token"],
        }
        config = parse_config(
            config_text(backend, url, prefix, name, guard_checks), environ=environ
        )
        ok = 0
        async with Router(config) as router:

            async def one(number: str) -> None:
                nonlocal ok
                result = await router.send(
                    Message(to=number, text="Your code is 123456", category="otp")
                )
                ok += result.ok

            seed = int(uuid.uuid4().int % 10**6)
            await b.run(concurrency, b.numbers(concurrency * 4, seed=seed), one)  # warm up
            items = b.numbers(messages, seed=seed + 1)
            print("ready", flush=True)
            sys.stdin.readline()  # the parent says go when all k are ready
            ok = 0
            cpu, wall = time.process_time(), time.perf_counter()
            await b.run(concurrency, items, one)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(json.dumps({"cpu": cpu, "wall": wall, "ok": ok, "messages": messages}), flush=True)
    finally:
        proc.terminate()
        proc.wait()


def one_round(k: int, backend: str, args: argparse.Namespace) -> tuple[float, float]:
    """(messages/s over all k, CPU seconds per message) of one round."""
    prefix = f"smsroute-bench-procs:{uuid.uuid4().hex[:8]}:"
    command = [
        sys.executable,
        __file__,
        "--child",
        backend,
        "--prefix",
        prefix,
        "--redis",
        args.redis,
        "--messages",
        str(args.messages),
        "--concurrency",
        str(args.concurrency),
        "--config",
        args.config,
        "--guard-checks",
        args.guard_checks,
    ]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(k)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a router process did not start: {line!r}")
        for p in procs:  # go, all at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline()))
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    total = sum(r["messages"] for r in results)
    for r in results:
        assert r["ok"] == r["messages"], f"{backend}: {r['ok']}/{r['messages']} accepted"
    rate = total / max(r["wall"] for r in results)
    cpu = sum(r["cpu"] for r in results) / total
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--config",
        default="realistic.yaml",
        help="the config under bench/ (realistic-guards.yaml: every guard configured)",
    )
    parser.add_argument(
        "--guard-checks",
        choices=["exact", "local"],
        default="exact",
        help="state.guard_checks of the Redis runs (local: checked in memory, counted in Redis)",
    )
    parser.add_argument("--child", choices=["memory", "redis"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(
            child(
                args.child,
                args.redis,
                args.prefix,
                args.messages,
                args.concurrency,
                args.config,
                args.guard_checks,
            )
        )
        return
    print(
        f"{args.config}: {args.messages} messages per process, concurrency {args.concurrency}, "
        f"medians of {args.rounds} rounds, guard_checks {args.guard_checks}"
    )
    for k in args.k:
        rates: dict[str, list[float]] = {"memory": [], "redis": []}
        cpus: dict[str, list[float]] = {"memory": [], "redis": []}
        for i in range(args.rounds):
            for backend in ("memory", "redis") if i % 2 == 0 else ("redis", "memory"):
                rate, cpu = one_round(k, backend, args)
                rates[backend].append(rate)
                cpus[backend].append(cpu)
                print(
                    f"  k={k} round {i + 1} {backend:6}: {rate:7.0f} msg/s, "
                    f"{cpu * 1e6:6.1f} us CPU/msg",
                    flush=True,
                )
        mem, red = statistics.median(cpus["memory"]), statistics.median(cpus["redis"])
        print(
            f"k={k}: memory {statistics.median(rates['memory']):7.0f} msg/s "
            f"{mem * 1e6:6.1f} us CPU/msg | redis {statistics.median(rates['redis']):7.0f} "
            f"msg/s {red * 1e6:6.1f} us CPU/msg | CPU ratio redis/memory {red / mem:.3f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
