"""Crash safety: a worker process killed with SIGKILL mid-drain loses nothing.

2,000 messages are queued; ``python -m smsroute.outbox CONFIG`` drains them
into two fake providers served by this test, and is SIGKILLed four times
along the way.  After each kill the messages it held leases on are read from
the database: those were in flight.  At the end every message was accepted
at the fakes (counted there, by its text), and the only duplicates are
messages that were in flight at a kill.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, twilio_block

from smsroute import Message, Router
from smsroute.testing import FakeTwilio

pytestmark = pytest.mark.slow

MESSAGES = 2000
KILLS = 4
CONCURRENCY = 16


def write_config(tmp_path: Path, a: FakeTwilio, b: FakeTwilio) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        f"""
providers:
{twilio_block("a", a, rate_limit="250/s")}
{twilio_block("b", b, rate_limit="250/s")}
rules:
  - name: default
    strategy: weighted
    weights: {{a: 50, b: 50}}
    providers: [a, b]
outbox:
  path: outbox.db
  lease: 2s
  poll: 100ms
  backoff: {{base: 100ms, max: 1s}}
"""
    )
    return path


async def start_worker(config: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    """The worker process, and the lease owner it announces once it works."""
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smsroute.outbox",
            str(config),
            "--concurrency",
            str(CONCURRENCY),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    assert process.stdout is not None
    hello = json.loads(await process.stdout.readline())
    assert hello["concurrency"] == CONCURRENCY
    return process, hello["worker"]


def accepted(*fakes: FakeTwilio) -> int:
    return sum(len(f.messages) for f in fakes)


def leased_by(db: Path, owner: str) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id FROM messages WHERE state = 'leased' AND lease_owner = ?", (owner,)
        )
        return {row[0] for row in rows}


def sent(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM messages WHERE state = 'sent'").fetchone()[0])


async def until(condition: object, seconds: float) -> None:
    assert callable(condition)
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached in {seconds}s")


async def test_sigkilled_worker_loses_nothing_and_duplicates_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    async with FakeTwilio() as a, FakeTwilio() as b, asyncio.timeout(90):
        config = write_config(tmp_path, a, b)
        db = tmp_path / "outbox.db"
        log = tmp_path / "worker.log"
        async with Router.from_yaml(config, metrics=False) as router:
            ids = await router.enqueue_many(
                [Message(to="+4915123456789", text=f"crash {i:04d}") for i in range(MESSAGES)]
            )
        in_flight: list[set[str]] = []
        for _ in range(KILLS):
            worker, owner = await start_worker(config, log)
            target = accepted(a, b) + MESSAGES // 8
            await until(lambda target=target: accepted(a, b) >= target, 20)  # type: ignore[misc]
            worker.kill()
            await worker.wait()
            in_flight.append(leased_by(db, owner))

        worker, _ = await start_worker(config, log)
        await until(lambda: sent(db) == MESSAGES, 40)
        worker.terminate()  # SIGTERM: a graceful stop
        assert await worker.wait() == 0

    at_fakes = Counter(m.text for m in (*a.messages, *b.messages))
    assert len(at_fakes) == MESSAGES, "a message was lost"
    by_text = {f"crash {i:04d}": message_id for i, message_id in enumerate(ids)}
    duplicated = {by_text[text] for text, n in at_fakes.items() if n > 1}
    everything_in_flight = set().union(*in_flight)
    assert duplicated <= everything_in_flight
    assert sum(at_fakes.values()) - MESSAGES <= sum(len(s) for s in in_flight)
    # Never more in flight than the worker's concurrency; and the kills did catch sends in
    # flight (not every one need: on a loaded machine a kill can land in the instant
    # between one batch's end and the next lease, which is fine).
    assert all(len(s) <= CONCURRENCY for s in in_flight), "more leased than the concurrency"
    assert any(in_flight), "no kill caught a send in flight: the test proved nothing"
    print(
        f"in flight at the kills: {[len(s) for s in in_flight]}, "
        f"sent twice: {sum(at_fakes.values()) - MESSAGES}"
    )
    assert a.messages
    assert b.messages
