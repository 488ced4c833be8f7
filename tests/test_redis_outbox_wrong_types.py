"""A Redis key of the wrong type where the outbox writes a message's outcome.

Redis does not undo what a script wrote before one of its commands failed.  So a
``sent`` or ``dead`` index, a queue or a message's own ``m:<id>`` key that another
program made a string (or a list, a hash where a sorted set belongs) must not make a
script stop half way: the message marked sent but without its history, dead but in no
index, pending but in no queue (never sent, even after the key is fixed).  The
contract, each time counted at the fake provider:

- the message is sent exactly once, and ends in a known state;
- an index that is not a sorted set is skipped, with one ERROR line naming the key and
  what to do; a queue that is not one refuses the call (nothing written) and, once the
  key is deleted, every message is there to lease;
- a message whose own key is not a hash leaves the leases (never sent again), with one
  ERROR line naming the key;
- no traceback, no number, no message text in the logs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import attrs
import pytest
import redis
from conftest import make_config
from log_support import Records, every_log_record
from redis_support import redis_url, until  # noqa: F401  (fixture)
from test_outbox_corrupt_file import SECRET, START, config_for, item

from smsroute import DeliveryReport, ManualClock, Message, OutboxUnavailable, Router
from smsroute.outbox.redis import RedisOutbox
from smsroute.outbox.store import utc
from smsroute.testing import FakeTwilio

TO = "+4915123456789"
LEASE = 30.0  # outbox.lease's default


@dataclass
class Outbox:
    router: Router
    store: RedisOutbox
    fake: FakeTwilio
    clock: ManualClock
    client: redis.Redis
    prefix: str  # <key_prefix>outbox:
    logs: Records

    def spoil(self, name: str, kind: str = "string") -> str:
        """Make the key ``<prefix>name`` a key of type ``kind``; returns its name."""
        key = self.prefix + name
        self.client.delete(key)
        if kind == "string":
            self.client.set(key, "not smsroute's")
        elif kind == "list":
            self.client.rpush(key, "not smsroute's")
        else:
            self.client.hset(key, "f", "not smsroute's")
        return key

    def errors(self) -> list[str]:
        return [text for level, text in self.logs.records if level >= logging.ERROR]

    def check_logs(self) -> None:
        for _, text in self.logs.records:
            assert "Traceback" not in text, text
            assert "15123456" not in text, text
            assert SECRET not in text, text
            assert "hello" not in text, text

    async def run_worker(self, rounds: int = 3) -> None:
        """The worker's rounds, each after every lease taken could have expired."""
        worker = self.router.worker()
        for _ in range(rounds):
            await worker.run_once()
            self.clock.advance(LEASE + 1)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:  # noqa: F811
    name = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    leftover = list(client.scan_iter(match=f"{name}*", count=1000))
    if leftover:
        client.delete(*leftover)
    client.close()


@pytest.fixture
async def outbox(
    redis_url: str,  # noqa: F811
    key_prefix: str,
    twilio_a: FakeTwilio,
) -> AsyncIterator[Outbox]:
    clock = ManualClock(START)
    router = Router(
        make_config(config_for(Path("/nonexistent/outbox.db"), twilio_a)),
        clock=clock,
        sleep=clock.sleep,
        metrics=False,
    )
    store = RedisOutbox(redis_url, key_prefix=key_prefix)
    router.outbox_service.adopt(store)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with every_log_record() as logs:
        async with router:
            yield Outbox(router, store, twilio_a, clock, client, f"{key_prefix}outbox:", logs)
    client.close()


def history(state: object) -> list[str]:
    assert state is not None
    return [status for status, _, _ in state.history]  # type: ignore[attr-defined]


# -- an index that is not a sorted set: skipped, the message final ----------------------


@pytest.mark.parametrize("kind", ["string", "hash"])
async def test_a_sent_index_of_another_type_still_marks_the_message_sent_once(
    outbox: Outbox, kind: str
) -> None:
    key = outbox.spoil("sent", kind)
    mid = await outbox.router.enqueue(Message(to=TO, text="hello"))
    await outbox.run_worker()
    assert outbox.fake.requests == 1  # never sent again
    state = await outbox.router.status(mid)
    assert state is not None, state
    assert state.status == "accepted", state
    assert history(state) == ["pending", "accepted"]  # the whole ack, history included
    assert outbox.client.hget(f"{outbox.prefix}m:{mid}", "state") == "sent"
    assert outbox.client.zcard(f"{outbox.prefix}leased") == 0
    errors = outbox.errors()
    assert len(errors) == 1, errors  # once, not once per message
    assert key in errors[0], errors
    assert "not a sorted set" in errors[0], errors
    assert "purge" in errors[0], errors
    assert "could not record" not in errors[0], errors
    # Another message while the key is still wrong: sent, not logged again at ERROR.
    await outbox.router.enqueue(Message(to=TO, text="hello again"))
    await outbox.run_worker(1)
    assert outbox.fake.requests == 2
    assert len(outbox.errors()) == 1, outbox.errors()
    outbox.check_logs()


async def test_a_dead_index_of_another_type_still_makes_a_dead_letter_that_can_be_requeued(
    outbox: Outbox,
) -> None:
    key = outbox.spoil("dead", "list")
    outbox.fake.fail(400, times=1)  # rejected: a dead letter at once
    mid = await outbox.router.enqueue(Message(to=TO, text="hello"))
    await outbox.run_worker()
    assert outbox.fake.requests == 1
    state = await outbox.router.status(mid)
    assert state is not None, state
    assert state.status == "dead", state
    assert history(state) == ["pending", "dead"]
    assert outbox.client.zcard(f"{outbox.prefix}leased") == 0
    errors = outbox.errors()
    assert len(errors) == 1, errors
    assert key in errors[0], errors
    assert mid in errors[0], errors
    assert "router.requeue" in errors[0], errors
    # Requeued by id (the index is still wrong): pending in its queue, then sent once.
    assert await outbox.router.requeue(mid)
    await outbox.run_worker(1)
    assert outbox.fake.requests == 2
    state = await outbox.router.status(mid)
    assert state is not None, state
    assert state.status == "accepted", state
    assert history(state) == ["pending", "dead", "requeued", "accepted"]
    outbox.check_logs()


# -- a queue that is not a sorted set: refused before anything is written ----------------


async def test_a_queue_of_another_type_strands_no_message(outbox: Outbox) -> None:
    store, p = outbox.store, outbox.prefix
    first, second = item(1), item(2)  # transactional: queue pending:1
    await store.enqueue_many([first, second])
    one, two = await store.lease("w", 2, START, START + 5)
    outbox.spoil("pending:1")
    # An expired lease going back, a retry, a release: refused while the queue is wrong...
    refused = []
    for call in (
        store.lease("v", 10, START + 10, START + 20),
        store.retry(two.message_id, "w", START + 1, "503", None, START + 1),
        store.release("w", None, START + 1),
    ):
        with pytest.raises(OutboxUnavailable) as raised:
            await call
        refused.append(str(raised.value))
    # ... and nothing was written: once the key is deleted, both messages come back.
    assert outbox.client.zcard(f"{p}leased") == 2
    outbox.client.delete(f"{p}pending:1")
    assert await store.retry(two.message_id, "w", START + 1, "503", None, START + 1)
    again = await store.lease("v", 10, START + 10, START + 20)
    assert sorted(m.message_id for m in again) == sorted([one.message_id, two.message_id])
    for text in refused:  # the error names the key
        assert f"{p}pending:1" in text, text
        assert "\n" not in text, text


# -- a message's own key that is not a hash while it is leased ---------------------------


async def spoiled_while_sent(outbox: Outbox, kind: str) -> str:
    """Enqueue one message and send it; while the fake answers, its key becomes ``kind``."""
    outbox.fake.latency(0.3)
    mid = await outbox.router.enqueue(Message(to=TO, text="hello"))
    worker = outbox.router.worker()
    task = asyncio.ensure_future(worker.run_once())
    await until(lambda: outbox.fake.requests == 1, what="the send at the fake")
    outbox.spoil(f"m:{mid}", kind)
    await task
    assert outbox.client.zcard(f"{outbox.prefix}leased") == 0  # out of the leases at once
    outbox.fake.heal()
    await outbox.run_worker()
    assert outbox.fake.requests == 1  # never sent again
    assert await outbox.store.status(mid) is None  # known: no record of smsroute's here
    return mid


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (None, "cannot be marked sent"),  # ack
        (503, "outcome cannot be recorded"),  # retry
        (400, "outcome cannot be recorded"),  # dead
    ],
)
async def test_a_message_key_of_another_type_while_leased_is_named_and_never_resent(
    outbox: Outbox, fault: int | None, said: str
) -> None:
    if fault is not None:
        outbox.fake.fail(fault, times=1)
    mid = await spoiled_while_sent(outbox, "string")
    errors = [e for e in outbox.errors() if "dead letter" not in e]
    assert len(errors) == 1, errors
    assert f"{outbox.prefix}m:{mid}" in errors[0], errors
    assert said in errors[0], errors
    assert "is a string, not a hash" in errors[0], errors
    assert "could not record" not in errors[0], errors
    assert not outbox.client.exists(f"{outbox.prefix}h:{mid}")  # no history of nothing
    outbox.check_logs()


async def test_receipts_requeue_and_recipient_of_a_message_key_of_another_type(
    outbox: Outbox,
) -> None:
    store = outbox.store
    (mid,) = await store.enqueue_many([item(1)])
    key = outbox.spoil(f"m:{mid}", "list")
    report = DeliveryReport(
        message_id=mid,
        provider="twilio",
        provider_message_id="SM1",
        status="delivered",
        error_code=None,
        at=utc(START),
    )
    assert await store.record_receipt(report, START) is False
    assert await store.record_accepted(mid, "twilio", "SM2", START) is False
    assert await store.requeue(mid, START) is False
    assert await store.recipient(mid) is None
    errors = outbox.errors()
    assert len(errors) == 4, errors
    for text, said in zip(
        errors,
        ["delivery receipt", "resend", "cannot be requeued", "no recipient"],
        strict=True,
    ):
        assert key in text, text
        assert said in text, text
        assert "is a list, not a hash" in text, text
    assert outbox.client.type(key) == "list"  # another program's key: left as it was
    outbox.check_logs()


@pytest.mark.parametrize("name", ["idem", "seq", "pending:3"])
async def test_an_enqueue_meeting_a_key_of_another_type_stores_nothing(
    outbox: Outbox, name: str
) -> None:
    # The first message has no key and another queue: stored before the wrong key is met.
    first = attrs.evolve(item(1), priority=0, idempotency_key=None)
    second = attrs.evolve(item(2), priority=3)
    key = outbox.spoil(name, "list")
    with pytest.raises(OutboxUnavailable) as raised:
        await outbox.store.enqueue_many([first, second])
    outbox.client.delete(key)
    assert await outbox.store.counts() == {"pending": 0, "leased": 0, "sent": 0, "dead": 0}
    assert outbox.client.keys(f"{outbox.prefix}m:*") == []  # no record without the rest
    assert key in str(raised.value)  # and the error named the key
