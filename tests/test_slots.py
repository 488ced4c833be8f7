"""max_concurrency slots: free ones are taken with no await; waiters are served in order.

The send path takes a free slot with :meth:`ConcurrencySlot.try_acquire` (no
timer, no coroutine) and waits under the attempt's deadline only when every
slot is taken.  These tests pin what that must keep of a semaphore: nobody
jumps the queue, a slot handed to a waiter that is then cancelled goes on to
the next one, and a cancelled waiter leaves nothing behind.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import make_config, twilio_block

from smsroute import Message, Router
from smsroute.state.slots import ConcurrencySlot
from smsroute.testing import FakeTwilio


async def test_free_slots_are_taken_without_waiting_and_counted() -> None:
    slot = ConcurrencySlot(2)
    assert slot.try_acquire()
    assert slot.try_acquire()
    assert slot.in_use == 2
    assert slot.locked()
    assert not slot.try_acquire()
    slot.release()
    assert slot.in_use == 1
    assert not slot.locked()
    slot.release()
    assert slot.in_use == 0
    with pytest.raises(ValueError, match="released more often than acquired"):
        slot.release()


async def test_waiters_are_served_first_come_first_served_and_nobody_jumps_the_queue() -> None:
    slot = ConcurrencySlot(1)
    assert slot.try_acquire()
    order: list[str] = []
    got = {name: asyncio.Event() for name in "abc"}

    async def waiter(name: str) -> None:
        await slot.acquire()
        order.append(name)
        got[name].set()

    tasks = [asyncio.ensure_future(waiter(n)) for n in "abc"]
    await asyncio.sleep(0)  # one loop step: all three tasks run to their wait
    assert slot.locked()
    slot.release()  # handed straight to "a"
    assert not slot.try_acquire(), "try_acquire took a slot a waiter was handed"
    for name in "abc":
        await asyncio.wait_for(got[name].wait(), 1.0)
        assert order == list("abc"[: "abc".index(name) + 1])
        slot.release()
    await asyncio.gather(*tasks)
    assert slot.in_use == 0
    assert not slot.locked()


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    slot = ConcurrencySlot(1)
    assert slot.try_acquire()
    first = asyncio.ensure_future(slot.acquire())
    second = asyncio.ensure_future(slot.acquire())
    await asyncio.sleep(0)
    slot.release()  # handed to `first`, which has not run yet
    first.cancel()  # ... and is cancelled before it can use it
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1.0) is True
    assert slot.in_use == 1
    slot.release()
    assert slot.in_use == 0
    assert not slot.locked()


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    slot = ConcurrencySlot(1)
    assert slot.try_acquire()
    waiting = asyncio.ensure_future(slot.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slot.locked()  # still held by the first taker, nobody waiting
    slot.release()
    assert not slot.locked()
    assert slot.in_use == 0
    assert slot.try_acquire()


async def test_a_router_send_takes_a_free_slot_and_gives_it_back(twilio_a: FakeTwilio) -> None:
    text = f"""
providers:
{twilio_block("a", twilio_a, max_concurrency=2)}
rules:
  - name: default
    providers: [a]
"""
    async with Router(make_config(text), metrics=False) as router:
        slot = router.state.slots(router.config.providers["a"])
        assert isinstance(slot, ConcurrencySlot)
        results = await asyncio.gather(
            *(
                router.send(Message(to=f"+49151{i:08d}", text="Your code is 123456"))
                for i in range(10)
            )
        )
        assert all(r.ok for r in results), [r.reason for r in results]
        assert slot.in_use == 0
        assert not slot.locked()


async def test_after_a_reload_changed_the_cap_each_config_keeps_its_own_slots() -> None:
    """Sends still on the old config (a failover, a wait) and sends on the new one ask in
    turn: each must find its own slots with what it holds, not a new, empty one every
    time the other asked (then neither cap held)."""
    from smsroute.config import ProviderConfig
    from smsroute.state.slots import ConcurrencySlots

    slots = ConcurrencySlots()
    old = ProviderConfig(name="a", type="twilio", max_concurrency=2)
    new = ProviderConfig(name="a", type="twilio", max_concurrency=3)
    held = slots.get(old)
    assert held is not None
    assert held.try_acquire()
    assert held.try_acquire()
    fresh = slots.get(new)
    assert fresh is not None
    assert fresh is not held
    assert fresh.try_acquire()
    again = slots.get(old)
    assert again is held  # before: a new slot of 2, none in use: two more requests at once
    assert again.in_use == 2
    assert not again.try_acquire()
    assert slots.get(new) is fresh
    assert fresh.in_use == 1
