"""Several router processes sharing one Redis behave as one router towards a provider.

Each test starts replica processes (``tests/redis_replica.py``) against fake
providers served by this test process.  The fakes stamp each message with
``time.monotonic()``, the same clock the replicas report their breaker
transitions in (one machine, one CLOCK_MONOTONIC).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, twilio_block
from redis_support import prefix, redis_url, state_block, until  # noqa: F401

from smsroute.testing import FakeTwilio

pytestmark = pytest.mark.slow

REPLICA = ROOT / "tests" / "redis_replica.py"


class Replica:
    """A replica process and what it printed (killed when the test ends, whatever happened)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    async def read_until(self, key: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            raw = await self.process.stdout.readline()
            if not raw:
                raise AssertionError(f"replica exited (rc {await self.process.wait()})")
            line = json.loads(raw)
            self.lines.append(line)
            if key in line:
                return line

    def breaker_times(self, provider: str, to: str) -> list[float]:
        return [
            float(line["at"])
            for line in self.lines
            if line.get("event") == "breaker" and line["provider"] == provider and line["to"] == to
        ]


@pytest.fixture
async def spawned() -> AsyncIterator[list[Replica]]:
    """The replicas a test starts; any still running at its end are killed."""
    replicas: list[Replica] = []
    yield replicas
    for replica in replicas:
        if replica.process.returncode is None:
            replica.process.kill()
            await replica.process.wait()


async def start_replicas(
    spawned: list[Replica],
    config: Path,
    count: int,
    *,
    duration: float,
    rate: float,
    to: list[str],
) -> list[Replica]:
    for i in range(count):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPLICA),
            str(config),
            "--duration",
            repr(duration),
            "--rate",
            repr(rate),
            "--to",
            to[i],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        spawned.append(Replica(process))
    for replica in spawned:
        await replica.read_until("ready")
    start_at = time.monotonic() + 0.5
    for replica in spawned:
        assert replica.process.stdin is not None
        replica.process.stdin.write(f"{start_at!r}\n".encode())
        await replica.process.stdin.drain()
    return spawned


def busiest_second(times: list[float]) -> int:
    """The most messages in any window of one second (windows start at each message)."""
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


async def test_four_replicas_together_respect_one_providers_rate_limit(
    tmp_path: Path,
    spawned: list[Replica],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    async with FakeTwilio() as fake:
        config = tmp_path / "routing.yaml"
        # burst 5: after an idle spell at most 5 go at once; a 1-s window sees rate + burst.
        config.write_text(
            f"""
defaults: {{max_rate_wait: 1s}}
providers:
{twilio_block("shared", fake, rate_limit="200/s", burst=5)}
rules:
  - name: default
    providers: [shared]
{state_block(redis_url, prefix)}
"""
        )
        # Each replica offers 150/s: alone, each would send all of it (150/s is under
        # its own 200/s), so four replicas limiting themselves would send 600/s.
        replicas = await start_replicas(
            spawned, config, 4, duration=10.0, rate=150.0, to=["+49151"] * 4
        )
        results = [await r.read_until("done") for r in replicas]
        for r in replicas:
            assert await r.process.wait() == 0

    offered = sum(r["sent"] for r in results)
    accepted = sum(r["outcomes"].get("accepted", 0) for r in results)
    times = [m.received_at for m in fake.messages]
    assert offered >= 5800  # about 4 x 150/s x 10 s
    assert accepted == len(times)  # every accepted message is at the fake, and only those
    assert busiest_second(times) <= 210, f"busiest second: {busiest_second(times)}"
    # The limit binds but does not starve: close to 200/s over the run.
    span = max(times) - min(times)
    assert len(times) / span >= 180, f"{len(times)} in {span:.2f}s"
    # Each replica got a share, none monopolised the schedule.
    for r in results:
        assert r["outcomes"]["accepted"] > 200


async def test_one_replicas_failures_open_the_breaker_for_every_replica_within_a_second(
    tmp_path: Path,
    spawned: list[Replica],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    async with FakeTwilio() as shared, FakeTwilio() as backup:
        config = tmp_path / "routing.yaml"
        config.write_text(
            f"""
defaults:
  breaker: {{consecutive_failures: 5, min_calls: 1000, open_for: 60s}}
providers:
{twilio_block("shared", shared)}
{twilio_block("backup", backup)}
rules:
  - name: default
    providers: [shared, backup]
{state_block(redis_url, prefix)}
"""
        )
        # Replica 0 sends to France, which only it sees failing; the others send to Germany.
        replicas = await start_replicas(
            spawned,
            config,
            4,
            duration=5.0,
            rate=40.0,
            to=["+336", "+49151", "+49151", "+49151"],
        )
        # About 2 s of good traffic first (the three German senders make 120/s together).
        await until(lambda: len(shared.messages) >= 240, within=10, what="good traffic")
        shared.fail(503, country="FR")
        results = [await r.read_until("done") for r in replicas]
        for r in replicas:
            assert await r.process.wait() == 0

    opened = replicas[0].breaker_times("shared", "open")
    assert len(opened) == 1, replicas[0].lines
    opened_at = opened[0]
    german = [m.received_at for m in shared.messages if m.to.startswith("+49")]
    before = [t for t in german if opened_at - 0.5 <= t < opened_at]
    after = [t for t in german if t > opened_at]
    assert len(before) >= 20, "the other replicas were sending to the provider when it opened"
    assert after == [] or max(after) - opened_at < 1.0, (
        f"last send {max(after) - opened_at:.3f}s after"
    )
    for replica in replicas[1:]:
        (seen,) = replica.breaker_times("shared", "open")
        assert seen - opened_at < 1.0
    # They went on through the backup, nothing failed.
    for r in results:
        assert set(r["outcomes"]) == {"accepted"}
        assert r["providers"].get("backup", 0) > 0
