"""submit_sm per second per bind: Router.send against aiosmpplib's PDUs over a raw
asyncio connection, on the same FakeSMSC in another process.

    python bench/bench_smpp.py [--messages 5000] [--window 10] [--rounds 7]

Both clients hold one transceiver bind and keep ``window`` submit_sm awaiting
their submit_sm_resp.  The raw client does the wire work only: an aiosmpplib
``SubmitSm`` (alphanumeric sender, international destination, registered
delivery, GSM-7 text) encoded per message, written, its submit_sm_resp matched
by sequence number and its message_id read.  The router also validates and
normalises the number, counts segments, matches a rule, consults the breaker
and token bucket, takes a window slot, records the acceptance (status store,
receipt queue) and builds a SendResult.  aiosmpplib's own ``ESME`` client is not
the peer: it sends from a queue and reports through hooks, with no per-message
answer to await and no window (see providers/smpp.py), so it cannot be timed
per message the same way.

Each round runs both clients back to back (alternating which goes first) on a
fresh bind; the medians of the rounds' rates and of their ratios are printed.
Client CPU per message is this process's CPU time (the SMSC runs in another
process) divided by messages.  The FakeSMSC decodes every PDU with aiosmpplib
in Python, so on a small machine it can be what limits messages per second:
compare the CPU per message too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmpplib import BindTransceiver, PhoneNumber, SubmitSm, Unbind
from aiosmpplib.state import NPI, TON

from smsroute import Message, Router, parse_config
from smsroute.instrument.prometheus import CollectorRegistry

HEADER = struct.Struct("!IIII")
TEXT = "Your code is 123456"


def serve() -> None:
    """The SMSC process: a FakeSMSC that prints its port and runs until stdin closes."""
    from smsroute.testing.smsc import FakeSMSC

    async def main() -> None:
        fake = FakeSMSC()
        await fake.start()
        print(fake.port, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            fake.messages.clear()  # keep the fake's memory flat over long runs
            fake.submits.clear()
            if await loop.run_in_executor(None, sys.stdin.readline) == "":
                break
        await fake.stop()

    asyncio.run(main())


def start_smsc() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def numbers(n: int, offset: int) -> list[str]:
    return [f"+49151{(offset + i) % 10**8:08d}" for i in range(n)]


async def run(window: int, items: list[str], one: Callable[[str], Awaitable[None]]) -> None:
    queue = iter(items)

    async def worker() -> None:
        for number in queue:
            await one(number)

    await asyncio.gather(*(worker() for _ in range(window)))


async def raw_round(port: int, window: int, items: list[str]) -> tuple[float, float]:
    """(messages per second, client CPU µs per message) of the raw client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pending: dict[int, asyncio.Future[bytes]] = {}
    seqs = iter(range(2, 2**31))

    async def read() -> None:
        while True:
            head = await reader.readexactly(16)
            length, _, _, seq = HEADER.unpack(head)
            body = await reader.readexactly(length - 16)
            waiter = pending.pop(seq, None)
            if waiter is not None:
                waiter.set_result(head + body)

    bound: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    pending[1] = bound
    reader_task = asyncio.create_task(read())
    writer.write(BindTransceiver(sequence_num=1, system_id="smsroute", password="secret").pdu())
    assert HEADER.unpack_from(await bound)[2] == 0
    source = PhoneNumber("ACME", TON.ALPHANUMERIC, NPI.UNKNOWN)
    loop = asyncio.get_running_loop()

    async def one(number: str) -> None:
        seq = next(seqs)
        submit = SubmitSm(
            sequence_num=seq,
            short_message=TEXT,
            source=source,
            destination=PhoneNumber(number[1:], TON.INTERNATIONAL, NPI.ISDN),
            registered_delivery=1,
        )
        waiter: asyncio.Future[bytes] = loop.create_future()
        pending[seq] = waiter
        writer.write(submit.pdu())
        pdu = await waiter
        if HEADER.unpack_from(pdu)[2] != 0 or not pdu[16:].split(b"\x00", 1)[0]:
            raise RuntimeError("submit_sm refused")

    cpu, wall = time.process_time(), time.perf_counter()
    await run(window, items, one)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    unbound: asyncio.Future[bytes] = loop.create_future()
    pending[0x7FFFFFFF] = unbound
    writer.write(Unbind(sequence_num=0x7FFFFFFF).pdu())
    await unbound
    reader_task.cancel()
    writer.close()
    await writer.wait_closed()
    return len(items) / wall, cpu / len(items) * 1e6


def router_config(port: int, window: int) -> Any:
    return parse_config(f"""
providers:
  smsc:
    type: smpp
    host: 127.0.0.1
    port: {port}
    system_id: smsroute
    password: secret
    from: ACME
    binds: 1
    window: {window}
    timeout: 5s
rules:
  - name: all
    providers: [smsc]
""")


async def router_round(port: int, window: int, items: list[str]) -> tuple[float, float]:
    """(messages per second, client CPU µs per message) through Router.send."""
    config = router_config(port, window)
    async with Router(config, registry=CollectorRegistry()) as router:

        async def one(number: str) -> None:
            result = await router.send(Message(to=number, text=TEXT, category="otp"))
            if not result.ok:
                raise RuntimeError(f"not accepted: {result.attempts}")

        cpu, wall = time.process_time(), time.perf_counter()
        await run(window, items, one)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return len(items) / wall, cpu / len(items) * 1e6


async def bench(messages: int, window: int, rounds: int) -> None:
    proc, port = start_smsc()
    assert proc.stdin is not None
    try:
        await raw_round(port, window, numbers(500, 0))  # warm-up
        await router_round(port, window, numbers(500, 0))
        rows: list[tuple[float, float, float, float]] = []
        for r in range(rounds):
            proc.stdin.write("\n")
            proc.stdin.flush()
            items = numbers(messages, r * messages)
            if r % 2:
                router = await router_round(port, window, items)
                raw = await raw_round(port, window, items)
            else:
                raw = await raw_round(port, window, items)
                router = await router_round(port, window, items)
            rows.append((*router, *raw))
            print(
                f"round {r + 1}: router {router[0]:7.0f}/s {router[1]:6.1f} µs CPU/msg | "
                f"raw {raw[0]:7.0f}/s {raw[1]:6.1f} µs CPU/msg | rate ratio {raw[0] / router[0]:.2f}",
                flush=True,
            )
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)
    med = statistics.median
    print(
        f"\nmedians over {rounds} rounds, {messages} messages, 1 bind, window {window}:\n"
        f"  Router.send      {med(r[0] for r in rows):7.0f} submit_sm/s per bind, "
        f"{med(r[1] for r in rows):6.1f} µs client CPU/msg\n"
        f"  raw aiosmpplib   {med(r[2] for r in rows):7.0f} submit_sm/s per bind, "
        f"{med(r[3] for r in rows):6.1f} µs client CPU/msg\n"
        f"  raw/router: rate {med(r[2] / r[0] for r in rows):.2f}x, "
        f"CPU per message {med(r[1] / r[3] for r in rows):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    asyncio.run(bench(args.messages, args.window, args.rounds))


if __name__ == "__main__":
    main()
