"""Several router processes sharing one Redis behave as one router towards a provider.

Each test starts replica processes (``tests/redis_replica.py``) against fake
providers served by this test process.  The fakes stamp each message with
``time.monotonic()``, the same clock the replicas report their breaker
transitions in (one machine, one CLOCK_MONOTONIC).

The shared rate limit is checked on what the limiter decides, not on when
requests happen to reach the fake (a busy machine bunches those up): each
replica records the Redis time of every slot its leases were granted and of
the slot each of its sends went on, and the bound is put on those times.
"""

from __future__ import annotations

import asyncio
import json
import math
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
    grants: list[Path] | None = None,
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
            *(("--grants", str(grants[i])) if grants is not None else ()),
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
    rate, burst = 200, 5
    async with FakeTwilio() as fake:
        config = tmp_path / "routing.yaml"
        # burst 5: after an idle spell at most 5 go at once.
        config.write_text(
            f"""
defaults: {{max_rate_wait: 1s}}
providers:
{twilio_block("shared", fake, rate_limit=f"{rate}/s", burst=burst)}
rules:
  - name: default
    providers: [shared]
{state_block(redis_url, prefix)}
"""
        )
        # Each replica offers 150/s: alone, each would send all of it (150/s is under
        # its own 200/s), so four replicas limiting themselves would send 600/s.
        grants = [tmp_path / f"grants-{i}.json" for i in range(4)]
        replicas = await start_replicas(
            spawned, config, 4, duration=10.0, rate=150.0, to=["+49151"] * 4, grants=grants
        )
        results = [await r.read_until("done") for r in replicas]
        for r in replicas:
            assert await r.process.wait() == 0

    records = [json.loads(path.read_text())["shared"] for path in grants]
    for i, record in enumerate(records):
        assert record["unexpected"] == [], f"replica {i}: {record['unexpected'][:3]}"
        # Redis stayed up: every token was a slot of the shared schedule.
        assert record["unslotted"] == 0, (
            f"replica {i}: {record['unslotted']} tokens not taken from a leased slot"
        )
    taken = [
        (server, late, came_late)
        for record in records
        for server, late, came_late in record["taken"]
    ]
    # No send went before its slot's time (1 us: Redis times are written to the microsecond).
    assert min(late for _, late, _ in taken) >= -1e-6

    # The bound, in Redis time: a GCRA schedule of `rate` per second and `burst` puts at
    # most rate x 1 s + burst slots in any closed 1-s window; the slots Redis leased to all
    # replicas together, and so the ones sends went on, never more.
    bound = math.floor(rate * 1.0 + burst)
    leased = busiest_second([t for record in records for t in record["granted"]])
    assert leased <= bound, f"{leased} slots leased in one second, limit {bound}"
    used = busiest_second([server for server, _, _ in taken])
    assert used <= bound, f"{used} sends in one second of the schedule, limit {bound}"
    # And a replica sends on a slot at most 10 ms (GRACE) after the slot reached it, keeping
    # it only if it reached it at most 10 ms after its time: at most 20 ms late in all.  A
    # replica late twice in a row uses late leases on arrival rather than starve (the
    # bucket's documented choice): those are left out, and counted in the message.
    late = [late for _, late, came_late in taken if not came_late]
    starved = len(taken) - len(late)
    assert max(late) <= 0.020 + 1e-6, (
        f"a send {max(late) * 1000:.1f} ms after its slot ({starved} sends on late leases)"
    )

    # End to end: the messages really went to the fake, each on a slot of its own.
    offered = sum(r["sent"] for r in results)
    accepted = sum(r["outcomes"].get("accepted", 0) for r in results)
    # About 4 x 150/s x 10 s; a replica short of CPU offers less, so the test asks only
    # that demand was at least twice what the limit lets through: the limit binds.
    assert offered >= 2 * rate * 10.0, f"only {offered} offered"
    assert accepted == len(fake.messages)  # every accepted message is at the fake, and only those
    assert len(taken) == len(fake.messages)  # one slot per request
    # The limit binds but does not starve: close to 200/s over the run.
    times = [server for server, _, _ in taken]
    span = max(times) - min(times)
    assert len(times) / span >= 0.9 * rate, f"{len(times)} in {span:.2f}s"
    # Each replica got a share, none monopolised the schedule: each at least a quarter of an
    # equal share.  Shares are not equal: four replicas on two cores get unequal CPU, and
    # a replica's event loop that runs more often leases again sooner (a lease is capped
    # at 5% of a second, so none hoards).  Seen on this machine, the smallest of the four
    # in a run: 187 to 465 of about 2,200 (the floor here was 200 and failed once, in CI).
    for i, r in enumerate(results):
        got = r["outcomes"]["accepted"]
        assert got >= accepted / (4 * len(results)), f"replica {i}: {got} of {accepted}"


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
