"""An outbox worker always stops, in bounded time, whatever its store does.

1. 200 start/stop cycles of ``async with router.worker(concurrency=8)`` on the
   Redis outbox, each stop within a bound.  On Python 3.11 redis-py loses, by
   chance, a cancellation that arrives as a call completes (``asyncio.wait_for``);
   the store here loses it every time, so a loop that counts on being cancelled
   hangs in the first cycles instead of one run in a hundred.
2. A stop while Redis stops answering (a proxy in front of it, paused) returns
   within its bound, and so does ``router.aclose()``.
3. A send cancelled while it waits for its rate-limit token gives the token and
   the message's lease back.
4. ``smsroute worker`` on SIGTERM, while its Redis hangs, exits 0 in bounded time.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, twilio_block
from redis_support import PausableProxy, prefix, proxy, redis_url, state_block, until  # noqa: F401

from smsroute import Message, Router
from smsroute.outbox.redis import RedisOutbox
from smsroute.outbox.worker import STORE_WAIT
from smsroute.testing import FakeTwilio

TO = "+4915123456789"


class LosesCancellations(RedisOutbox):
    """A Redis outbox whose every script call ends even when cancelled, and returns.

    That is what ``asyncio.wait_for`` on Python 3.11 does when a cancellation
    arrives as the call it wraps completes (redis-py wraps each socket write in
    it); here it happens to every cancellation, and each call takes ``latency``
    more, so a worker's loops are always caught in a call when they are stopped.
    """

    latency = 0.003

    async def _run(self, script: Any, args: Sequence[object]) -> Any:
        async def call() -> Any:
            result = await super(LosesCancellations, self)._run(script, args)
            await asyncio.sleep(self.latency)
            return result

        inner = asyncio.ensure_future(call())
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            return await inner  # the cancellation is lost


def redis_config(fake: FakeTwilio, redis_url: str, prefix: str, *extra: str) -> str:  # noqa: F811
    return "\n".join(
        [
            "providers:",
            twilio_block("twilio", fake),
            "rules:",
            "  - name: default",
            "    providers: [twilio]",
            state_block(redis_url, prefix),
            "outbox:",
            "  backend: redis",
            *extra,
        ]
    )


# -- 1. start and stop, again and again ----------------------------------------------------


@pytest.mark.timeout(60)
async def test_200_start_stop_cycles_on_the_redis_outbox_each_stop_within_its_bound(
    twilio_a: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    loop = asyncio.get_running_loop()
    router = Router(make_config(redis_config(twilio_a, redis_url, prefix)), metrics=False)
    router.outbox_service.adopt(LosesCancellations(redis_url, key_prefix=prefix))
    slowest = 0.0
    started = loop.time()
    async with router:
        for cycle in range(200):
            worker = router.worker(concurrency=8)
            async with worker:
                for _ in range(cycle % 4):  # stop at different points of the loops' first turn
                    await asyncio.sleep(0)
                stopping = loop.time()
            took = loop.time() - stopping
            slowest = max(slowest, took)
            assert took < STORE_WAIT, f"cycle {cycle}: stopping took {took:.2f} s"
            assert worker._main is not None
            assert worker._main.done()
            assert worker._keeper is not None
            assert worker._keeper.done()
    assert loop.time() - started < 20.0
    assert slowest < 1.0  # nothing hangs: no stop needed to cancel anything for long


# -- 2. a store that stops answering ---------------------------------------------------------


async def test_stop_and_aclose_return_within_their_bound_while_redis_hangs(
    twilio_a: FakeTwilio,
    tmp_path: Path,
    proxy: PausableProxy,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    loop = asyncio.get_running_loop()
    config = make_config(
        "\n".join(
            [
                "providers:",
                twilio_block("twilio", twilio_a),
                "rules:",
                "  - name: default",
                "    providers: [twilio]",
                "outbox:",
                f"  path: {tmp_path / 'unused.db'}",
                "  poll: 20ms",
            ]
        )
    )
    router = Router(config, metrics=False)
    # The store's own timeout is generous: only stop()'s bound can end the wait.
    router.outbox_service.adopt(RedisOutbox(proxy.url, key_prefix=prefix, timeout=30.0))
    await router.__aenter__()
    worker = router.worker(concurrency=8)
    await worker.start()
    await worker.drain()  # it works: the queue is read through the proxy
    proxy.pause()
    worker.wake()  # the lease loop asks Redis again, and waits
    t0 = loop.time()
    await worker.stop()
    stopped = loop.time() - t0
    t1 = loop.time()
    await router.aclose()
    closed = loop.time() - t1
    assert stopped < STORE_WAIT + 0.5, f"stop() took {stopped:.2f} s"
    assert closed < STORE_WAIT + 0.5, f"aclose() took {closed:.2f} s"
    assert worker._main is not None
    assert worker._main.done()
    assert worker._keeper is not None
    assert worker._keeper.done()


# -- 3. a cancelled send gives back what it took --------------------------------------------


async def test_send_cancelled_while_waiting_for_its_token_gives_token_and_lease_back(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    config = make_config(
        "\n".join(
            [
                "providers:",
                twilio_block("twilio", twilio_a, rate_limit=2, burst=1),
                "rules:",
                "  - name: default",
                "    providers: [twilio]",
                "outbox:",
                f"  path: {tmp_path / 'outbox.db'}",
            ]
        )
    )
    async with Router(config, metrics=False) as router:
        bucket = router.state.bucket(router.config.providers["twilio"])
        bucket.reserve(math.inf)
        bucket.reserve(math.inf)  # others took the next second's tokens
        before = bucket.wait_time()
        await router.enqueue(Message(to=TO, text="waits for its token"))
        worker = router.worker(concurrency=1)
        run = asyncio.ensure_future(worker.run_once())
        await until(lambda: bucket.wait_time() > before + 0.2, what="the worker reserved a token")
        assert await router.outbox.counts() == {"pending": 0, "leased": 1, "sent": 0, "dead": 0}
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert bucket.wait_time() <= before  # the token is back (time only went on)
        await asyncio.gather(*worker._handbacks)
        assert await router.outbox.counts() == {"pending": 1, "leased": 0, "sent": 0, "dead": 0}
    assert twilio_a.messages == []


# -- 4. the worker process ----------------------------------------------------------------


async def test_smsroute_worker_exits_0_on_sigterm_in_bounded_time_while_redis_hangs(
    twilio_a: FakeTwilio,
    tmp_path: Path,
    proxy: PausableProxy,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    config = tmp_path / "routing.yaml"
    config.write_text(redis_config(twilio_a, proxy.url, prefix, "  poll: 20ms"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute.cli",
        "worker",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert b'"worker"' in await proc.stdout.readline()
        proxy.pause()  # its next lease (every 20 ms) waits for Redis
        t0 = loop.time()
        proc.terminate()
        async with asyncio.timeout(3 * STORE_WAIT):
            _, err = await proc.communicate()
        took = loop.time() - t0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert took < STORE_WAIT + 3.0, f"SIGTERM to exit: {took:.2f} s"
    assert b"Traceback" not in err
