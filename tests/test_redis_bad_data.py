"""Data in Redis that smsroute did not write: the router keeps sending, and says where.

Another program, a manual write or another smsroute version under the same
``key_prefix`` can leave a key of another type, or a value that is not a number, where
the shared state keeps its own.  Redis then *answers* smsroute's calls with an error.
Before, any such error counted as Redis being down: the whole shared state went local,
came back at the next call that did not touch the key ("answers again"), went down
again, and so on, with a traceback every sync for a breaker smsroute could not read.

The contract, for any such data under the prefix (hypothesis picks which of the keys a
router made are spoiled, and how; ``guard_checks`` exact or local):

- every send ends in a known state (here: accepted; the fake answers and no limit is
  near), never an exception;
- the link stays up: Redis is there, and what the spoiled keys do not touch stays
  shared;
- an ERROR line names the key (or the prefix) and what to do, once per key and kind of
  call, not once per call; no traceback; no number or message text in any log line;
- once the keys are deleted, the guards count in Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis
from conftest import twilio_block
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from log_support import every_log_record
from redis_support import redis_url, state_block, until  # noqa: F401  (fixtures)

from smsroute import BreakerState, Message, Router, SendResult
from smsroute.configload import parse_config
from smsroute.testing import FakeTwilio

NUMBER = "+4915123456{:03d}"
TEXT = "Code 7f3a secret"
TYPES = ("string", "list", "hash", "set", "zset")

GUARDS = """
guards:
  otp:
    velocity:
      - {per: number, max: 1000, window: 1h}
      - {per: prefix, digits: 8, max: 1000, window: 10m}
    anomaly: {window: 5m, baseline: 1h, factor: 5, min_count: 1000}
  budgets:
    - {scope: provider, name: a, limit: 1000, per: day}
    - {scope: category, name: otp, limit: 1000, per: month}
"""


def otp(i: int) -> Message:
    return Message(to=NUMBER.format(i), text=TEXT, category="otp")


#: Junk without a digit that Redis's or Lua's number parsing may still read as one.
NUMBER_WORDS = {"inf", "-inf", "+inf", "nan", "infinity", "-infinity", "+infinity"}


def outcome(result: SendResult) -> str:
    """ "accepted", or why not (a guard's refusal reads "refused by guard ...")."""
    return "accepted" if result.status == "accepted" else str(result.reason)


def spoil(client: redis.Redis, key: bytes, how: str, kind: str, junk: str) -> None:
    """Make ``key`` a key of type ``kind`` (``how`` "type") or fill it with ``junk`` of
    its own type ("value")."""
    actual = client.type(key).decode()
    if how == "type":
        if kind == actual:
            kind = TYPES[(TYPES.index(kind) + 1) % len(TYPES)]
        client.delete(key)
        {
            "string": lambda: client.set(key, junk),
            "list": lambda: client.rpush(key, junk),
            "hash": lambda: client.hset(key, "f", junk),
            "set": lambda: client.sadd(key, junk),
            "zset": lambda: client.zadd(key, {junk: 1.0}),
        }[kind]()
    elif actual == "string":
        client.set(key, junk)
    elif actual == "hash":
        for field in client.hkeys(key) or [b"f"]:
            client.hset(key, field, junk)
    elif actual == "zset":
        client.zadd(key, {junk: 1.0})
    elif actual == "set":
        client.sadd(key, junk)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    picks=st.lists(st.sampled_from(["keep", "type", "value"]), min_size=12, max_size=12),
    kinds=st.lists(st.sampled_from(TYPES), min_size=12, max_size=12),
    junk=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=30,
    )
    | st.sampled_from(["0x10", "inf", "-inf", "nan", "1e400", " 5 ", "-1", "2,open,1,9e99"]),
    mode=st.sampled_from(["exact", "local"]),
)
@example(picks=["type"] * 12, kinds=["list"] * 12, junk="garbage", mode="exact")
@example(picks=["value"] * 12, kinds=["string"] * 12, junk="garbage,x,y", mode="local")
def test_data_smsroute_did_not_write_is_named_and_sending_goes_on(
    redis_url: str,  # noqa: F811
    picks: list[str],
    kinds: list[str],
    junk: str,
    mode: str,
) -> None:
    with every_log_record() as logs:
        spoiled, statuses, up, healed = asyncio.run(run(redis_url, picks, kinds, junk, mode))
    # Junk that reads as a number is data a guard may act on (a spend of "1000" is a
    # budget at its cap, "1e400" one past it): a send it refuses is a decision, not a
    # failure.  Anything else must not change what is sent.
    numeric = any(c.isdigit() for c in junk) or junk.strip().lower() in NUMBER_WORDS
    for status in statuses:
        assert status == "accepted" or (numeric and status.startswith("refused by guard")), (
            status,
            junk,
        )
    assert up, "the link went down: Redis answered, so it is up"
    assert healed, "the guards did not count in Redis again once the keys were deleted"
    for _, text in logs.records:
        assert "Traceback" not in text, text
        assert "15123456" not in text, text
        assert TEXT not in text, text
        assert "failed during" not in text, text  # the link never went down
        assert "answers again" not in text, text
    errors = [text for level, text in logs.records if level >= logging.ERROR]
    if any(how == "type" for _, how in spoiled):
        assert errors, "nothing said where the bad data is"
    for text in errors:
        assert "error about its data" in text, text
        assert "smsroute-test:" in text, text
        assert "DEL '" in text or "--scan" in text, text
    # once per key and kind of call, not per call: 6 sends and several syncs met them
    assert len(errors) <= 3 * max(1, len(spoiled)), errors


async def settle(router: Router) -> None:
    """What the guards checked, recorded and spent so far is answered or written."""
    counts: Any = router.state.guard_counts()  # type: ignore[attr-defined]
    await getattr(counts, "remote", counts).settle()


async def run(
    url: str, picks: list[str], kinds: list[str], junk: str, mode: str
) -> tuple[list[tuple[bytes, str]], list[str], bool, bool]:
    key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(url)
    try:
        async with FakeTwilio() as fake:
            text = (
                "defaults:\n  breaker: {consecutive_failures: 1, open_for: 100ms}\n"
                + "providers:\n"
                + twilio_block("a", fake, prices="{DE: 0.08, default: 0.05}", rate_limit="500/s")
                + "\nrules:\n  - name: default\n    providers: [a]\n"
                + GUARDS
                + state_block(url, key_prefix, sync_interval="50ms", timeout="1s")
                + f"\n  guard_checks: {mode}\n"
            )
            async with Router(parse_config(text), metrics=False) as router:
                fake.fail(503, times=1)  # an open breaker, in the breakers hash
                assert (await router.send(otp(0))).status == "failed"
                await until(  # its open time passes: the next send may close it
                    lambda: router.breaker_states()[("a", None)] is not BreakerState.OPEN
                )
                for i in range(3):
                    assert (await router.send(otp(i))).status == "accepted"
                await settle(router)
                await until(  # a sync wrote health and the replicas
                    lambda: (
                        bool(client.keys(f"{key_prefix}health:*"))
                        and bool(client.exists(f"{key_prefix}replicas"))
                    )
                )
                keys = sorted(client.keys(f"{key_prefix}*"))
                spoiled = []
                for n, key in enumerate(keys):
                    how = picks[n % len(picks)]
                    if how != "keep":
                        spoil(client, key, how, kinds[n % len(kinds)], junk)
                        spoiled.append((key, how))
                with contextlib.suppress(redis.ResponseError):  # as another replica's
                    client.incr(f"{key_prefix}breakers:version")  # write: syncs read them
                statuses = []
                for i in range(6):
                    statuses.append(outcome(await router.send(otp(i))))
                    await asyncio.sleep(0.03)  # syncs run between sends
                await settle(router)
                plan = router.explain(otp(1))  # read in Redis (a blocking call of its own)
                assert {g.guard for g in plan.guards} >= {"velocity", "budget"}
                up = bool(router.state.link.up)  # type: ignore[attr-defined]
                if spoiled:
                    client.delete(*[key for key, _ in spoiled])
                statuses.append(outcome(await router.send(otp(999))))
                await settle(router)

                def counted() -> bool:
                    return any(
                        client.zcard(k) > 0
                        for k in client.keys(f"{key_prefix}guard:v|c:otp|number0|*")
                    )

                try:
                    await until(counted, within=3.0)
                    healed = True
                except AssertionError:
                    healed = False
                up = up and bool(router.state.link.up)  # type: ignore[attr-defined]
                return spoiled, statuses, up, healed
    finally:
        leftover: Any = client.keys(f"{key_prefix}*")
        if leftover:
            client.delete(*leftover)
        client.close()
