"""SyncRouter: the router for code without an event loop (issue 17).

The fakes run on the test's event loop; the SyncRouter is called from other
threads (``asyncio.to_thread``), as a Django view or a Celery task would call it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, twilio_block

from smsroute import (
    BreakerState,
    InvalidMessage,
    InvalidNumber,
    Message,
    Router,
    SendResult,
    SyncRouter,
)
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")


def config_file(tmp_path: Path, fake: FakeTwilio, *extra: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "providers:\n"
        + twilio_block("twilio", fake, timeout="2s")
        + "\n"
        + "".join(f"{line}\n" for line in extra)
        + "rules:\n  - name: default\n    providers: [twilio]\n"
    )
    return path


@pytest.fixture
async def router(tmp_path: Path, twilio_a: FakeTwilio) -> object:
    sync = SyncRouter.from_yaml(config_file(tmp_path, twilio_a), metrics=False)
    yield sync
    await asyncio.to_thread(sync.close)


async def test_many_threads_send_through_one_router(
    router: SyncRouter, twilio_a: FakeTwilio
) -> None:
    def one_thread(n: int) -> tuple[list[SendResult], int]:
        results = [router.send(OTP) for _ in range(5)]
        return results, id(router.async_router)

    def all_threads() -> list[tuple[list[SendResult], int]]:
        with ThreadPoolExecutor(32) as pool:
            return list(pool.map(one_thread, range(32)))

    outcomes = await asyncio.to_thread(all_threads)
    results = [r for rs, _ in outcomes for r in rs]
    assert len(results) == 160
    assert all(r.ok and r.provider == "twilio" for r in results)
    assert len({r.message_id for r in results}) == 160
    assert len({router_id for _, router_id in outcomes}) == 1  # one Router for every thread
    assert len(twilio_a.messages) == 160
    state = await asyncio.to_thread(router.status, results[0].message_id)
    assert state is not None
    assert state.status == "accepted"


async def test_threads_share_the_breaker(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    path = tmp_path / "failover.yaml"
    path.write_text(
        "providers:\n"
        + twilio_block("primary", twilio_a, timeout="2s")
        + "\n"
        + twilio_block("backup", twilio_b, timeout="2s")
        + "\nrules:\n  - name: default\n    providers: [primary, backup]\n"
    )
    twilio_a.fail(503)  # every call, until healed
    router = SyncRouter.from_yaml(path, metrics=False)

    def all_threads() -> list[SendResult]:
        with ThreadPoolExecutor(32) as pool:
            return list(pool.map(lambda _: router.send(OTP), range(64)))

    try:
        results = await asyncio.to_thread(all_threads)
        assert all(r.ok and r.provider == "backup" for r in results)
        assert router.async_router.breaker_states()[("primary", None)] is BreakerState.OPEN
        # One breaker for every thread: now that it is open, no thread calls the primary.
        calls = twilio_a.requests
        results = await asyncio.to_thread(all_threads)
        assert all(r.ok and [a.provider for a in r.attempts] == ["backup"] for r in results)
        assert twilio_a.requests == calls
    finally:
        await asyncio.to_thread(router.close)


async def test_a_call_inside_a_running_loop_points_at_router(router: SyncRouter) -> None:
    for call in (
        lambda: router.send(OTP),
        lambda: router.status("x"),
        lambda: router.explain(OTP),
        lambda: router.enqueue(OTP),
    ):
        with pytest.raises(RuntimeError, match=r"smsroute\.Router and 'await router\.\w+"):
            call()


async def test_bad_input_raises_in_the_calling_thread(router: SyncRouter) -> None:
    bad_number = Message(to="+1 555 000 0000", text="hi")
    with pytest.raises(InvalidNumber) as caught:
        await asyncio.to_thread(router.send, bad_number)
    assert "5550000000" not in str(caught.value)  # masked
    with pytest.raises(InvalidNumber):
        await asyncio.to_thread(router.explain, bad_number)
    with pytest.raises(InvalidMessage):
        await asyncio.to_thread(router.send, Message(to="+4915123456789", text=""))
    # The router is not hurt by it.
    assert (await asyncio.to_thread(router.send, OTP)).ok


async def test_explain_reload_and_the_async_router(
    router: SyncRouter, tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    plan = await asyncio.to_thread(router.explain, OTP)
    assert (plan.rule, [c.provider for c in plan.candidates]) == ("default", ["twilio"])
    path = config_file(tmp_path, twilio_a)
    path.write_text(path.read_text().replace("name: default", "name: renamed"))
    config = await asyncio.to_thread(router.reload, path)
    assert config.rules[0].name == "renamed"
    assert (await asyncio.to_thread(router.explain, OTP)).rule == "renamed"
    assert isinstance(router.async_router, Router)


async def test_the_outbox_through_the_sync_router(tmp_path: Path, twilio_a: FakeTwilio) -> None:
    path = config_file(tmp_path, twilio_a, "outbox:\n  path: outbox.db")

    def use() -> None:
        with SyncRouter.from_yaml(path, metrics=False) as router:
            first = router.enqueue(OTP, idempotency_key="k1")
            assert router.enqueue(OTP, idempotency_key="k1") == first
            state = router.status(first)
            assert state is not None
            assert state.status == "pending"
            assert len(router.enqueue_many([OTP, OTP])) == 2
            assert router.dead_letters() == []
            assert router.requeue("not-a-dead-letter") is False
            with pytest.raises(InvalidNumber):
                router.enqueue(Message(to="+1 555 000 0000", text="hi"))

    await asyncio.to_thread(use)


async def test_a_closed_router_says_so(router: SyncRouter) -> None:
    assert (await asyncio.to_thread(router.send, OTP)).ok
    await asyncio.to_thread(router.close)
    await asyncio.to_thread(router.close)  # idempotent
    with pytest.raises(RuntimeError, match="was closed: make a new one"):
        await asyncio.to_thread(router.send, OTP)


async def test_session_keyword_is_refused(tmp_path: Path, twilio_a: FakeTwilio) -> None:
    with pytest.raises(TypeError, match=r"session=.*leave session out"):
        SyncRouter.from_yaml(config_file(tmp_path, twilio_a), session=object())


async def test_a_forked_child_starts_its_own_loop_and_session(
    router: SyncRouter, twilio_a: FakeTwilio
) -> None:
    def fork_and_send() -> dict[str, object]:
        assert router.send(OTP).ok  # the parent's loop, thread and session are running
        parent_router = id(router.async_router)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read_end)
                result = router.send(OTP)
                report = {
                    "ok": result.ok,
                    "fresh_router": id(router.async_router) != parent_router,
                    "fresh_thread": router.async_router is not None,
                }
                router.close()
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            child = json.loads(pipe.read() or b"{}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's router goes on, on its own loop and connections.
        assert all(router.send(OTP).ok for _ in range(3))
        assert id(router.async_router) == parent_router
        return dict(child)

    child = await asyncio.to_thread(fork_and_send)
    assert child == {"ok": True, "fresh_router": True, "fresh_thread": True}
    assert len(twilio_a.messages) == 5


SCRIPT = """
import os, sys
from smsroute import Message, SyncRouter

otp = Message(to="+4915123456789", text="Your code is 123456", category="otp")
with SyncRouter.from_yaml(sys.argv[1], metrics=False) as router:  # closed by `with`
    assert router.send(otp).ok
left_open = SyncRouter.from_yaml(sys.argv[1], metrics=False)      # closed at exit
assert left_open.send(otp).ok
pid = os.fork()
if pid == 0:
    assert left_open.send(otp).ok   # a fresh loop and session in the child
    sys.exit(0)                     # and a normal exit: what it inherited is left alone
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
for _ in range(3):                  # the parent's keep-alive connection still works
    result = left_open.send(otp)
    assert result.ok and result.attempts[0].latency < 1.5, result
print("done")
"""


async def test_clean_shutdown_and_exit_without_warnings(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    path = config_file(tmp_path, twilio_a)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",  # asyncio debug mode, ResourceWarnings shown
        "-W",
        "error",
        "-c",
        textwrap.dedent(SCRIPT),
        str(path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert (proc.returncode, out.decode(), err.decode()) == (0, "done\n", "")
    assert len(twilio_a.messages) == 6


async def wait_for_requests(fake: FakeTwilio, count: int) -> None:
    async with asyncio.timeout(10):
        await fake.wait_requests(count)


async def test_a_slow_call_does_not_hold_up_a_quick_one(
    router: SyncRouter, twilio_a: FakeTwilio
) -> None:
    """The thread driving the loop for its own slow call runs other threads' calls
    too, and each returns as soon as it is done, not when the driver's call is."""
    twilio_a.hang(country="DE")
    slow = asyncio.ensure_future(asyncio.to_thread(router.send, OTP))
    await wait_for_requests(twilio_a, 1)
    france = Message(to="+33612345678", text="Your code is 123456", category="otp")
    quick = await asyncio.to_thread(router.send, france)
    assert quick.ok
    assert not slow.done()  # still hung at the provider
    twilio_a.heal()  # the hung request is answered 503 now
    answered = await slow
    assert [a.provider for a in answered.attempts] == ["twilio"]


async def test_closing_ends_a_call_running_in_another_thread(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    sync = SyncRouter.from_yaml(config_file(tmp_path, twilio_a), metrics=False)
    twilio_a.hang()
    running = asyncio.ensure_future(asyncio.to_thread(sync.send, OTP))
    await wait_for_requests(twilio_a, 1)
    await asyncio.to_thread(sync.close)
    # The call ends: closing the session fails its request (or, had it been
    # between requests, it would be cancelled and say so).
    async with asyncio.timeout(10):
        result = await running
    assert not result.ok
    twilio_a.heal()
    with pytest.raises(RuntimeError, match="was closed"):
        await asyncio.to_thread(sync.send, OTP)


INTERRUPTED = """
import sys
from smsroute import Message, SyncRouter

otp = Message(to="+4915123456789", text="Your code is 123456", category="otp")
router = SyncRouter.from_yaml(sys.argv[1], metrics=False)
try:
    router.send(otp)                # hangs at the fake until Ctrl-C
except KeyboardInterrupt:
    print("interrupted", flush=True)
sys.stdin.readline()                # the test heals the fake
result = router.send(otp)           # the router still works after the interrupt
router.close()
print("done" if result.ok else result, flush=True)
"""


async def test_ctrl_c_during_a_send_leaves_the_router_working(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    """SIGINT lands while the script's own thread drives the loop (blocked in poll for
    the fake's answer): KeyboardInterrupt reaches the script, the loop is handed on, and
    the next send and close work."""
    twilio_a.hang()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",
        "-c",
        textwrap.dedent(INTERRUPTED),
        str(config_file(tmp_path, twilio_a)),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            await twilio_a.wait_requests(1)
            proc.send_signal(signal.SIGINT)
            assert await proc.stdout.readline() == b"interrupted\n"
            twilio_a.heal()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert (proc.returncode, out.decode()) == (0, "done\n"), err.decode()
    assert "Unclosed" not in err.decode()
