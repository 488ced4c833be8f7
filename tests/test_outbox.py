"""The outbox, message by message: enqueue, lease, pace, retry, dead-letter, requeue.

A ManualClock drives the router and the outbox (``sleep=clock.sleep``), so
backoffs, send_at, ttls and rate waits pass without real waiting; the
providers are real fake servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Hooks, make_config, twilio_block

from smsroute import (
    AttemptFinished,
    InvalidMessage,
    InvalidNumber,
    ManualClock,
    Message,
    Outcome,
    Router,
    SendResult,
)
from smsroute.config import Config
from smsroute.outbox import OutboxWorker
from smsroute.testing import FakeTwilio

START = 1_800_000_000.0
TO = "+4915123456789"


class FixedRandom(random.Random):
    """An rng whose ``random()`` is always ``value``: the jitter becomes a known fraction."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def config(
    tmp_path: Path,
    primary: FakeTwilio,
    *,
    outbox: str = "",
    primary_extra: dict[str, object] | None = None,
    secondary: FakeTwilio | None = None,
    defaults: str = "",
    top: str = "",
) -> Config:
    providers = twilio_block("primary", primary, **(primary_extra or {}))
    names = "[primary]"
    if secondary is not None:
        providers += "\n" + twilio_block("secondary", secondary)
        names = "[primary, secondary]"
    return make_config(
        f"""
defaults:
  breaker: {{consecutive_failures: null, min_calls: 1000}}
{defaults}
{top}
providers:
{providers}
rules:
  - name: default
    providers: {names}
outbox:
  path: {tmp_path / "outbox.db"}
  backoff: {{base: 1s, max: 5s}}
{outbox}
"""
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def manual_router(cfg: Config, clock: ManualClock, jitter: float = 0.5) -> Router:
    return Router(cfg, clock=clock, sleep=clock.sleep, rng=FixedRandom(jitter), metrics=False)


@pytest.fixture
async def router(tmp_path: Path, twilio_a: FakeTwilio, clock: ManualClock) -> AsyncIterator[Router]:
    async with manual_router(config(tmp_path, twilio_a), clock) as r:
        yield r


def texts(fake: FakeTwilio) -> list[str]:
    return [m.text for m in fake.messages]


# -- enqueue: validation and idempotency -------------------------------------------------


async def test_enqueue_refuses_a_bad_number_and_stores_nothing(router: Router) -> None:
    with pytest.raises(InvalidNumber):
        await router.enqueue(Message(to="+49 12", text="hello"))
    assert (await router.outbox.counts())["pending"] == 0


async def test_enqueue_refuses_an_empty_text(router: Router) -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        await router.enqueue(Message(to=TO, text="  "))


async def test_enqueue_many_refuses_the_whole_batch_naming_the_bad_message(router: Router) -> None:
    batch = [Message(to=TO, text="one"), Message(to="12", text="two"), Message(to=TO, text="3")]
    with pytest.raises(InvalidNumber, match=r"^messages\[1\]: "):
        await router.enqueue_many(batch)
    assert (await router.outbox.counts())["pending"] == 0


async def test_metadata_json_cannot_hold_is_refused_at_enqueue(router: Router) -> None:
    with pytest.raises(InvalidMessage, match="metadata"):
        await router.enqueue(Message(to=TO, text="hi", metadata={"at": object()}))


async def test_same_idempotency_key_returns_the_first_id_and_sends_once(
    router: Router, twilio_a: FakeTwilio
) -> None:
    first = await router.enqueue(Message(to=TO, text="order shipped"), idempotency_key="order-7")
    again = await router.enqueue(Message(to=TO, text="order shipped"), idempotency_key="order-7")
    batch = await router.enqueue_many(
        [Message(to=TO, text="order shipped"), Message(to=TO, text="other")],
        idempotency_keys=["order-7", None],
    )
    assert again == first
    assert batch[0] == first
    await router.worker().run_once()
    assert texts(twilio_a) == ["order shipped", "other"]


async def test_enqueue_many_keeps_the_order_of_ids_and_metadata(router: Router) -> None:
    messages = [Message(to=TO, text=f"n{i}", metadata={"i": i}, tags=("t",)) for i in range(5)]
    ids = await router.enqueue_many(messages)
    leased = await router.outbox.lease("test", 10, START, START + 30)
    assert [q.message_id for q in leased] == ids
    assert [q.message for q in leased] == messages


# -- the order of sending ----------------------------------------------------------------


async def test_otp_goes_before_transactional_before_marketing_before_other_categories(
    tmp_path: Path, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    cfg = config(tmp_path, twilio_a, top="categories: [alerts]")
    async with manual_router(cfg, clock) as router:
        for category in ("alerts", "marketing", "transactional", "otp", "marketing"):
            await router.enqueue(Message(to=TO, text=category, category=category))
        worker = router.worker(concurrency=1)
        while await worker.run_once():
            pass
    assert texts(twilio_a) == ["otp", "transactional", "marketing", "marketing", "alerts"]


async def test_send_at_holds_a_message_until_it_is_due(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    worker = router.worker()
    later = await router.enqueue(
        Message(to=TO, text="later"), send_at=datetime.timedelta(minutes=5)
    )
    await router.enqueue(
        Message(to=TO, text="at noon"),
        send_at=datetime.datetime.fromtimestamp(START + 600, datetime.UTC),
    )
    assert await worker.run_once() == 0
    clock.advance(299)
    assert await worker.run_once() == 0
    state = await router.status(later)
    assert state is not None
    assert state.status == "pending"
    clock.advance(1)
    assert await worker.run_once() == 1
    clock.advance(300)
    assert await worker.run_once() == 1
    assert texts(twilio_a) == ["later", "at noon"]


async def test_send_at_without_a_time_zone_is_refused(router: Router) -> None:
    with pytest.raises(InvalidMessage, match="time zone"):
        await router.enqueue(Message(to=TO, text="x"), send_at=datetime.datetime(2030, 1, 1))


async def test_worker_waits_for_rate_tokens_instead_of_skipping_to_the_next_provider(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio, clock: ManualClock
) -> None:
    cfg = config(
        tmp_path,
        twilio_a,
        secondary=twilio_b,
        primary_extra={"rate_limit": "10/s", "burst": 1},
        defaults="  max_rate_wait: 100ms",
    )
    async with manual_router(cfg, clock) as router:
        await router.enqueue_many([Message(to=TO, text=f"m{i}") for i in range(20)])
        assert await router.worker(concurrency=20).run_once() == 20
    assert len(twilio_a.messages) == 20
    assert twilio_b.messages == []
    assert clock.now() - START >= 1.9  # 20 sends at 10/s, paced on the router's clock


# -- failures: backoff, dead letters, requeue --------------------------------------------


async def test_retries_back_off_exponentially_with_full_jitter(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(503)
    message_id = await router.enqueue(Message(to=TO, text="flaky"))
    worker = router.worker()
    delays = []
    for _ in range(5):
        before = clock.now()
        assert await worker.run_once() == 1
        due = await router.outbox.next_due()
        assert due is not None
        delays.append(round(due - before, 6))
        clock.set(due - 0.001)
        assert await worker.run_once() == 0  # not a moment before it is due
        clock.set(due)
    # uniform(0, min(5s, 1s * 2**(tries-1))) with the rng drawing 0.5 every time
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5]
    state = await router.status(message_id)
    assert state is not None
    assert state.status == "retrying"
    assert twilio_a.requests == 5


def test_backoff_jitter_spans_zero_to_the_exponential_cap(
    clock: ManualClock, tmp_path: Path
) -> None:
    cfg = make_config(
        f"""
providers:
  p: {{type: twilio, account_sid: AC1, auth_token: t}}
rules: [{{name: default, providers: [p]}}]
outbox: {{path: {tmp_path / "o.db"}, backoff: {{base: 2s, max: 60s}}}}
"""
    )
    low = OutboxWorker(Router(cfg, metrics=False), rng=FixedRandom(0.0))
    high = OutboxWorker(Router(cfg, metrics=False), rng=FixedRandom(0.999999))
    draws = OutboxWorker(Router(cfg, metrics=False), rng=random.Random(7))
    assert [low.backoff(n) for n in (1, 2, 5, 40)] == [0.0, 0.0, 0.0, 0.0]
    caps = [high.backoff(n) / 0.999999 for n in (1, 2, 3, 4, 5, 6, 40)]
    assert [round(c, 6) for c in caps] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    samples = [draws.backoff(3) for _ in range(2000)]
    assert 0.0 <= min(samples) < 0.5
    assert 7.5 < max(samples) <= 8.0


async def test_rejected_message_is_a_dead_letter_at_once(
    router: Router, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(400, 21211)
    message_id = await router.enqueue(Message(to=TO, text="to nobody"))
    await router.worker().run_once()
    (dead,) = await router.dead_letters()
    assert dead.message_id == message_id
    assert dead.tries == 1
    assert dead.outcome is Outcome.REJECTED
    assert [a.outcome for a in dead.attempts] == [Outcome.REJECTED]
    assert "rejected by primary" in dead.reason
    assert await router.outbox.next_due() is None
    state = await router.status(message_id)
    assert state is not None
    assert state.status == "dead"


async def test_retryable_failure_is_dead_lettered_after_max_attempts_with_its_attempts(
    tmp_path: Path, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(503)
    async with manual_router(config(tmp_path, twilio_a, outbox="  max_attempts: 3"), clock) as r:
        await r.enqueue(Message(to=TO, text="never"))
        worker = r.worker()
        for _ in range(3):
            assert await worker.run_once() == 1
            due = await r.outbox.next_due()
            if due is not None:
                clock.set(due)
        assert await worker.run_once() == 0
        (dead,) = await r.dead_letters()
    assert dead.tries == 3
    assert [a.outcome for a in dead.attempts] == [Outcome.TRANSIENT] * 3
    assert [a.status_code for a in dead.attempts] == [503] * 3
    assert dead.reason.startswith("gave up after 3 tries: ")


async def test_retrying_message_is_dead_lettered_when_its_ttl_runs_out(
    tmp_path: Path, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.fail(503)
    async with manual_router(config(tmp_path, twilio_a), clock, jitter=0.9) as r:
        await r.enqueue(Message(to=TO, text="soon stale"), ttl=2.5)
        worker = r.worker()
        await worker.run_once()  # the retry is due at 0.9 s (0.9 x 1 s): inside the ttl
        clock.set(START + 0.9)
        await worker.run_once()  # the next would be due at 2.7 s (+ 0.9 x 2 s): past it
        (dead,) = await r.dead_letters()
    assert dead.tries == 2
    assert dead.reason.startswith("its ttl ran out after 2 tries")


async def test_message_past_its_ttl_is_dead_lettered_unsent(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    await router.enqueue(Message(to=TO, text="too late"), ttl=datetime.timedelta(seconds=5))
    clock.advance(6)
    await router.worker().run_once()
    (dead,) = await router.dead_letters()
    assert dead.tries == 0
    assert dead.outcome is None
    assert twilio_a.requests == 0


async def test_timeout_under_on_timeout_stop_is_not_retried(
    tmp_path: Path, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    twilio_a.hang()
    cfg = config(tmp_path, twilio_a, primary_extra={"timeout": "200ms"})
    async with manual_router(cfg, clock) as r:
        await r.enqueue(Message(to=TO, text="sale", category="marketing"))
        await r.enqueue(Message(to=TO, text="receipt", category="transactional"))
        await r.worker().run_once()
        (dead,) = await r.dead_letters()
        assert dead.message.text == "sale"
        assert "may have been sent" in dead.reason
        assert (await r.outbox.counts())["pending"] == 1  # the transactional one retries


async def test_requeue_puts_a_dead_letter_back_and_it_is_sent(
    router: Router, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(400, 21211, times=1)
    message_id = await router.enqueue(Message(to=TO, text="second chance"))
    worker = router.worker()
    await worker.run_once()
    assert await router.requeue(message_id) is True
    assert await router.requeue(message_id) is False  # not a dead letter any more
    assert await router.requeue("no-such-id") is False
    await worker.run_once()
    assert await router.dead_letters() == []
    assert texts(twilio_a) == ["second chance"]
    state = await router.status(message_id)
    assert state is not None
    assert [s for s, _, _ in state.history] == ["pending", "dead", "requeued", "accepted"]


# -- leases ------------------------------------------------------------------------------


async def test_expired_lease_returns_the_message_to_the_queue(
    router: Router, twilio_a: FakeTwilio, clock: ManualClock
) -> None:
    message_id = await router.enqueue(Message(to=TO, text="orphan"))
    store = router.outbox
    (taken,) = await store.lease("dead-worker", 10, START, START + 30)
    assert taken.message_id == message_id
    clock.set(START + 29.9)
    worker = router.worker()
    assert await worker.run_once() == 0  # still leased by a worker that may be alive
    clock.set(START + 30)
    assert await worker.run_once() == 1
    assert texts(twilio_a) == ["orphan"]
    assert await store.ack(message_id, "dead-worker", _accepted(message_id), START + 31) is False
    state = await router.status(message_id)
    assert state is not None
    assert [s for s, _, _ in state.history] == ["pending", "lease_expired", "accepted", "accepted"]


def _accepted(message_id: str) -> SendResult:
    return SendResult(message_id, "accepted", "primary", "SMx", (), 1, "GSM-7")


async def test_renewed_lease_does_not_expire(router: Router, clock: ManualClock) -> None:
    message_id = await router.enqueue(Message(to=TO, text="slow"))
    store = router.outbox
    await store.lease("alive", 10, START, START + 30)
    assert await store.renew("alive", [message_id], START + 60) == 1
    assert await store.renew("someone-else", [message_id], START + 90) == 0
    assert await store.lease("other", 10, START + 45, START + 75) == []
    assert len(await store.lease("other", 10, START + 60, START + 90)) == 1


# -- status and receipts -----------------------------------------------------------------


async def test_status_of_unknown_message_is_none(router: Router) -> None:
    assert await router.status("nope") is None


async def test_status_keeps_the_durable_history_with_receipts_across_routers(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    hooks = Hooks()
    cfg = config(tmp_path, twilio_a, defaults=f"  webhook_url: {hooks.url}")
    twilio_a.receipts("delivered")
    try:
        async with Router(cfg, metrics=False) as router:
            await hooks.serve(router)
            message_id = await router.enqueue(Message(to=TO, text="tracked"))
            async with router.worker() as worker:
                await worker.drain()
                async with asyncio.timeout(5):
                    await twilio_a.wait_receipts(1)
            state = await router.status(message_id)
    finally:
        await hooks.close()
    assert state is not None
    assert state.status == "delivered"
    async with Router(cfg, metrics=False) as fresh:  # another process, or after a restart
        again = await fresh.status(message_id)
    assert again is not None
    assert again.status == "delivered"
    assert [(s, p) for s, p, _ in again.history] == [
        ("pending", None),
        ("accepted", "primary"),
        ("delivered", "primary"),
    ]


# -- the worker in the background --------------------------------------------------------


async def test_enqueue_wakes_a_running_worker_at_once(tmp_path: Path, twilio_a: FakeTwilio) -> None:
    cfg = config(tmp_path, twilio_a, outbox="  poll: 60s")
    async with Router(cfg, metrics=False) as router, router.worker() as worker:
        await worker.drain()
        await router.enqueue(Message(to=TO, text="now"))
        async with asyncio.timeout(5):
            await worker.drain()
    assert texts(twilio_a) == ["now"]


async def test_graceful_stop_hands_back_messages_not_yet_sent(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    cfg = config(tmp_path, twilio_a, primary_extra={"rate_limit": "4/s", "burst": 1})
    async with Router(cfg, metrics=False) as router:
        await router.enqueue_many([Message(to=TO, text=f"m{i}") for i in range(8)])
        first = asyncio.Event()
        router.add_hook(lambda event: first.set() if isinstance(event, AttemptFinished) else None)
        async with router.worker(concurrency=8):
            async with asyncio.timeout(5):
                await first.wait()
        counts = await router.outbox.counts()
    sent = len(twilio_a.messages)
    assert 1 <= sent < 8
    assert counts == {"pending": 8 - sent, "leased": 0, "sent": sent, "dead": 0}


async def test_closing_the_router_stops_its_workers(tmp_path: Path, twilio_a: FakeTwilio) -> None:
    cfg = config(tmp_path, twilio_a)
    router = Router(cfg, metrics=False)
    worker = router.worker()
    await worker.start()
    await router.enqueue(Message(to=TO, text="before close"))
    await worker.drain()
    await router.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await router.enqueue(Message(to=TO, text="after close"))
    assert texts(twilio_a) == ["before close"]
