"""Router.send against raw aiohttp, on the same fake Twilio server in another process.

    python bench/bench_send.py [--messages 20000] [--concurrency 64] [--rounds 9]
                               [--without-metrics] [--realistic] [--sdk]

Both clients do the same wire work per message: a form-encoded POST with Basic
auth to Twilio's Messages endpoint, read the body, decode the JSON, take the
sid.  The router also validates and normalises the number, counts segments,
matches a rule, orders providers, consults the breaker and token bucket, and
builds a SendResult.  Client CPU per message is process CPU time in this
process (the server runs elsewhere) divided by messages.  Each round runs
both clients back to back (alternating which goes first) on a fresh set of
numbers, so drift on a shared machine hits both; the median of the per-round
ratios is the headline.  This VM's speed moves by tens of percent from minute
to minute: more rounds (``--rounds 21 --messages 5000``) narrow the median,
and bench/callgrind_send.py counts instructions, which do not drift at all.

Two router configs: the minimal one (one provider, two rules: ``router_config``)
and, with ``--realistic``, ``bench/realistic.yaml`` (two Twilio accounts with
price tables and ``max_concurrency``, twelve rules, ``priority`` and
``cheapest``; the message matches the eighth rule).  ``--sdk`` adds the
official twilio SDK's async client as a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from smsroute import Config, Message, Router, load_config, parse_config

HERE = Path(__file__).resolve().parent
#: The realistic config (issue 15); ${BENCH_*} are the fake's URL and credentials.
REALISTIC = HERE / "realistic.yaml"
#: The same with every fraud and spend guard configured (issue 19), none reached.
REALISTIC_GUARDS = HERE / "realistic-guards.yaml"


def start_fake() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smsroute.testing", "twilio"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, info


def numbers(n: int, seed: int = 1) -> list[str]:
    """Distinct valid German mobile numbers: every send parses a number it has not seen."""
    rng = random.Random(seed)
    return [f"+49151{rng.randrange(10**8):08d}" for _ in range(n)]


async def run(concurrency: int, items: list[str], one: Callable[[str], Awaitable[None]]) -> None:
    it = iter(items)

    async def worker() -> None:
        for number in it:
            await one(number)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def raw_round(
    info: dict[str, str], items: list[str], concurrency: int
) -> tuple[float, float]:
    url = f"{info['url']}/2010-04-01/Accounts/{info['account_sid']}/Messages.json"
    headers = {
        "Authorization": "Basic "
        + base64.b64encode(f"{info['account_sid']}:{info['auth_token']}".encode()).decode(),
        "Accept": "application/json",
    }
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one(number: str) -> None:
            nonlocal ok
            form = {"To": number, "Body": "Your code is 123456", "From": "+15005550006"}
            async with session.post(url, data=form, headers=headers) as resp:
                doc = json.loads(await resp.read())
                if resp.status == 201 and doc.get("sid"):
                    ok += 1

        await run(concurrency, items[:concurrency], one)  # warm the connection pool
        ok = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await run(concurrency, items, one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert ok == len(items), f"raw: {ok}/{len(items)} accepted"
    return cpu, wall


def router_config(info: dict[str, str], hooks_note: str = "") -> str:
    return f"""
defaults: {{max_attempts: 2, deadline: 120s}}
providers:
  twilio:
    type: twilio
    timeout: 60s  # generous: under valgrind the client runs ~50x slower
    base_url: {info["url"]}
    account_sid: {info["account_sid"]}
    auth_token: {info["auth_token"]}
    from: "+15005550006"
    prices: {{DE: 0.079, default: 0.05}}
rules:
  - name: otp-de
    match: {{country: DE, category: otp}}
    providers: [twilio]
  - name: default
    providers: [twilio]
"""


def realistic_config(
    info: dict[str, str], *, capped: bool = True, guards: bool = False, state: str = ""
) -> Config:
    """bench/realistic.yaml pointed at the fake ``info`` describes (``capped=False``:
    without its ``max_concurrency`` lines, to measure what the cap costs; ``state``: a
    ``state:`` section to add)."""
    environ = {
        "BENCH_URL": info["url"],
        "BENCH_ACCOUNT_SID": info["account_sid"],
        "BENCH_AUTH_TOKEN": info["auth_token"],
    }
    if state:
        path = REALISTIC_GUARDS if guards else REALISTIC
        return parse_config(path.read_text() + state, file=str(path), environ=environ)
    if guards:
        return load_config(REALISTIC_GUARDS, environ=environ)
    if capped:
        return load_config(REALISTIC, environ=environ)
    lines = REALISTIC.read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if "max_concurrency:" not in line)
    return parse_config(text, file=str(REALISTIC), environ=environ)


async def router_round(
    info: dict[str, str],
    items: list[str],
    concurrency: int,
    *,
    realistic: bool = False,
    capped: bool = True,
    guards: bool = False,
    state: str = "",
    **router_kwargs: Any,
) -> tuple[float, float]:
    if realistic:
        config = realistic_config(info, capped=capped, guards=guards, state=state)
    else:
        config = parse_config(router_config(info))
    ok = 0
    async with Router(config, **router_kwargs) as router:

        async def one(number: str) -> None:
            nonlocal ok
            result = await router.send(
                Message(to=number, text="Your code is 123456", category="otp")
            )
            if result.ok:
                ok += 1

        await run(concurrency, items[:concurrency], one)
        ok = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await run(concurrency, items, one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert ok == len(items), f"router: {ok}/{len(items)} accepted"
    return cpu, wall


async def sdk_round(
    info: dict[str, str], items: list[str], concurrency: int
) -> tuple[float, float]:
    """The official twilio SDK's async client (``AsyncTwilioHttpClient``), same wire work."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    http = AsyncTwilioHttpClient()
    client = Client(info["account_sid"], info["auth_token"], http_client=http)
    client.api.base_url = info["url"]  # the fake, in place of https://api.twilio.com
    messages = client.api.v2010.accounts(info["account_sid"]).messages
    ok = 0
    try:

        async def one(number: str) -> None:
            nonlocal ok
            msg = await messages.create_async(
                to=number, from_="+15005550006", body="Your code is 123456"
            )
            if msg.sid:
                ok += 1

        await run(concurrency, items[:concurrency], one)
        ok = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await run(concurrency, items, one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await http.close()
    assert ok == len(items), f"sdk: {ok}/{len(items)} accepted"
    return cpu, wall


def explain_rate(rules: int, seconds: float = 2.0) -> float:
    countries = ["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL", "SE", "AT"]
    body = [
        f"  - name: r{i}\n    match: {{country: {countries[i % len(countries)]}, "
        f"category: {['otp', 'marketing', 'transactional'][i % 3]}, tags: [t{i}]}}\n"
        f"    providers: [a, b]"
        for i in range(rules - 1)
    ]
    text = (
        "providers:\n"
        "  a: {type: twilio, account_sid: AC1, auth_token: x, prices: {default: 0.05}}\n"
        "  b: {type: twilio, account_sid: AC2, auth_token: y, prices: {DE: 0.04}}\n"
        "rules:\n" + "\n".join(body) + "\n  - name: default\n    providers: [a, b]\n"
    )
    router = Router(parse_config(text))
    msgs = [Message(to=n, text="hi", category="otp") for n in numbers(1000, seed=2)]
    for m in msgs:
        router.explain(m)  # the number cache is warm for both sizes alike
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for m in msgs:
            router.explain(m)
        count += len(msgs)
    return count / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--without-metrics",
        action="store_true",
        help="also run the router with metrics=False each round (the Prometheus hook's cost)",
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="also run the router with bench/realistic.yaml each round",
    )
    parser.add_argument(
        "--sdk", action="store_true", help="also run the twilio SDK's async client each round"
    )
    args = parser.parse_args()

    proc, info = start_fake()
    try:
        raw_cpu, raw_wall, r_cpu, r_wall, off_cpu = [], [], [], [], []
        extra: dict[str, list[float]] = {"realistic": [], "sdk": []}
        for i in range(args.rounds):
            items = numbers(args.messages, seed=100 + i)
            # Alternate which client goes first, so slow drift favours neither.
            for arm in ("raw", "router") if i % 2 == 0 else ("router", "raw"):
                if arm == "raw":
                    c, w = await raw_round(info, items, args.concurrency)
                    raw_cpu.append(c)
                    raw_wall.append(w)
                else:
                    c, w = await router_round(info, items, args.concurrency)
                    r_cpu.append(c)
                    r_wall.append(w)
            line = (
                f"round {i + 1}: raw {raw_cpu[-1]:.2f}s cpu {raw_wall[-1]:.2f}s wall | "
                f"router {r_cpu[-1]:.2f}s cpu {r_wall[-1]:.2f}s wall"
            )
            if args.without_metrics:
                c, _ = await router_round(info, items, args.concurrency, metrics=False)
                off_cpu.append(c)
                line += f" | router, metrics off {c:.2f}s cpu"
            if args.realistic:
                c, _ = await router_round(info, items, args.concurrency, realistic=True)
                extra["realistic"].append(c)
                line += f" | router, realistic config {c:.2f}s cpu"
            if args.sdk:
                c, _ = await sdk_round(info, items, args.concurrency)
                extra["sdk"].append(c)
                line += f" | twilio SDK {c:.2f}s cpu"
            print(line, flush=True)
    finally:
        proc.terminate()
        proc.wait()

    n = args.messages
    raw_c, rt_c = statistics.median(raw_cpu) / n, statistics.median(r_cpu) / n
    raw_w, rt_w = statistics.median(raw_wall), statistics.median(r_wall)
    print()
    print(
        f"messages {n}, concurrency {args.concurrency}, rounds {args.rounds}, cores {os.cpu_count()}"
    )
    print(f"raw aiohttp : {raw_c * 1e6:7.1f} us CPU/msg  {n / raw_w:8.0f} msg/s")
    print(f"Router.send : {rt_c * 1e6:7.1f} us CPU/msg  {n / rt_w:8.0f} msg/s")
    # Each round runs raw and router back to back: the ratio within a round is the
    # least disturbed by a shared machine's drift, and its median is the headline.
    # Noise only ever adds CPU time, so the ratio of the two best rounds is the
    # second estimate.
    paired = sorted(r / w for r, w in zip(r_cpu, raw_cpu, strict=True))
    print(
        f"ratio       : CPU/msg {statistics.median(paired):.3f}x (median of rounds, "
        f"{paired[0]:.3f}x to {paired[-1]:.3f}x); medians {rt_c / raw_c:.3f}x; "
        f"best rounds {min(r_cpu) / min(raw_cpu):.3f}x; "
        f"throughput {(n / rt_w) / (n / raw_w):.3f}x"
    )
    if off_cpu:
        off = sorted(r / w for r, w in zip(r_cpu, off_cpu, strict=True))
        print(
            f"metrics     : Router.send with metrics off {statistics.median(off_cpu) / n * 1e6:.1f} "
            f"us CPU/msg; on/off {statistics.median(off):.3f}x (median of rounds)"
        )
    for name, label in (("realistic", "realistic  "), ("sdk", "twilio SDK ")):
        if extra[name]:
            paired = sorted(c / r for c, r in zip(extra[name], raw_cpu, strict=True))
            print(
                f"{label}: {statistics.median(extra[name]) / n * 1e6:7.1f} us CPU/msg; "
                f"to raw aiohttp {statistics.median(paired):.3f}x (median of rounds)"
            )
    e10, e1000 = explain_rate(10), explain_rate(1000)
    print(
        f"explain     : {e10:8.0f}/s with 10 rules, {e1000:8.0f}/s with 1000 rules "
        f"(cost ratio {e10 / e1000:.2f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
