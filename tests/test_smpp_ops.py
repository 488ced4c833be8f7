"""The smpp adapter in operation: bind metrics, explain (API and CLI), and config reloads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from smsroute import LinkState, Message, Router, load_config
from smsroute.cli import main
from smsroute.testing.smsc import FakeSMSC

pytestmark = pytest.mark.timeout(30)
TO = "+4915123456789"


def yaml_config(port: int, *, binds: int = 1, window: int = 10, deadline: str = "2s") -> str:
    return f"""
defaults:
  deadline: {deadline}
providers:
  smsc:
    type: smpp
    host: 127.0.0.1
    port: {port}
    system_id: smsroute
    password: secret
    from: ACME
    timeout: 1s
    binds: {binds}
    window: {window}
    enquire_link: 0.5s
    reconnect_delay: 0.05s
    reconnect_max: 0.2s
rules:
  - name: all
    providers: [smsc]
"""


def write(tmp_path: Path, port: int, **kw: Any) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml_config(port, **kw))
    return path


@pytest.fixture
async def smsc() -> AsyncIterator[FakeSMSC]:
    async with FakeSMSC() as fake:
        yield fake


async def until(check: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - state moved by another peer's socket
            await asyncio.sleep(0.01)


def message() -> Message:
    return Message(to=TO, text="Your code is 123456", category="otp")


# -- metrics --------------------------------------------------------------------------------


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"provider": "smsc"})


async def test_bind_gauges_follow_the_binds(smsc: FakeSMSC, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    config = load_config(write(tmp_path, smsc.port, binds=2, window=3))
    async with Router(config, registry=registry) as router:
        assert gauge(registry, "smsroute_smpp_binds_up") == 2
        assert gauge(registry, "smsroute_smpp_binds_down") == 0
        assert gauge(registry, "smsroute_smpp_window_size") == 6
        assert gauge(registry, "smsroute_smpp_window_in_use") == 0

        smsc.refuse_bind()  # the binds cannot come back
        await smsc.drop_all()
        await until(lambda: router.dispatcher.links()["smsc"].up == 0)
        assert gauge(registry, "smsroute_smpp_binds_up") == 0
        assert gauge(registry, "smsroute_smpp_binds_down") == 2

        smsc.heal()
        await until(lambda: gauge(registry, "smsroute_smpp_binds_up") == 2)
    # Closed: down, and the series stays (the adapter still exists).
    assert gauge(registry, "smsroute_smpp_binds_up") == 0


async def test_one_bind_dropped_is_one_down(smsc: FakeSMSC, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    config = load_config(write(tmp_path, smsc.port, binds=2))
    async with Router(config, registry=registry) as router:
        await until(lambda: smsc.bound_sessions == 2)
        smsc.drop(times=1)
        smsc.refuse_bind(times=None)  # the dropped bind stays down
        result = await router.send(message())
        assert not result.ok
        await until(lambda: gauge(registry, "smsroute_smpp_binds_down") == 1)
        assert gauge(registry, "smsroute_smpp_binds_up") == 1


async def test_window_in_use_while_the_smsc_holds_sends(smsc: FakeSMSC, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    config = load_config(write(tmp_path, smsc.port, binds=2, window=2))
    smsc.hang()
    async with Router(config, registry=registry) as router:
        tasks = [asyncio.create_task(router.send(message())) for _ in range(3)]
        await until(lambda: len(smsc.submits) == 3)
        assert gauge(registry, "smsroute_smpp_window_in_use") == 3
        assert router.dispatcher.links()["smsc"] == LinkState(2, 0, 3, 4)
        results = await asyncio.gather(*tasks)  # each times out after 1s
        assert all(not r.ok for r in results)
        assert gauge(registry, "smsroute_smpp_window_in_use") == 0


async def test_http_providers_have_no_bind_series(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "routing.yaml"
    path.write_text(
        "providers:\n  t:\n    type: twilio\n    account_sid: AC1\n    auth_token: x\n"
        "    from: '+15005550006'\nrules:\n  - name: all\n    providers: [t]\n"
    )
    router = Router(load_config(path), registry=registry)
    assert router.dispatcher.links() == {}
    assert registry.get_sample_value("smsroute_smpp_binds_up", {"provider": "t"}) is None
    text = "\n".join(
        line
        for metric in registry.collect()
        if metric.name.startswith("smsroute_smpp")
        for line in map(str, metric.samples)
    )
    assert text == ""


# -- explain --------------------------------------------------------------------------------


async def test_explain_shows_the_bind_state(smsc: FakeSMSC, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, smsc.port, binds=2, window=10))
    router = Router(config, metrics=False)
    before = router.explain(message()).candidates[0].links
    assert before == "0/2 binds up, window 0/20 (not connected yet)"
    async with router:
        assert router.explain(message()).candidates[0].links == "2/2 binds up, window 0/20"
        smsc.refuse_bind()
        await smsc.drop_all()
        refused = ("bind refused with command_status 0x0000000D",)
        await until(lambda: router.dispatcher.links()["smsc"].problems == refused)
        links = router.explain(message()).candidates[0].links
    assert links == "0/2 binds up, window 0/20 (bind refused with command_status 0x0000000D)"


def test_explain_of_http_providers_has_no_links(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "providers:\n  t:\n    type: twilio\n    account_sid: AC1\n    auth_token: x\n"
        "    from: '+15005550006'\nrules:\n  - name: all\n    providers: [t]\n"
    )
    plan = Router(load_config(path), metrics=False).explain(message())
    assert plan.candidates[0].links is None


@pytest.fixture
def threaded_smsc() -> Iterator[FakeSMSC]:
    """A FakeSMSC on its own event loop in a thread (the CLI runs asyncio.run itself)."""
    loop = asyncio.new_event_loop()
    fake = FakeSMSC()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(fake.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_cli_explain_prints_the_binds(threaded_smsc: FakeSMSC, tmp_path: Path) -> None:
    path = write(tmp_path, threaded_smsc.port, binds=2, window=5)
    offline = CliRunner().invoke(main, ["explain", str(path), TO])
    assert offline.exit_code == 0, offline.output
    assert "binds    smsc: 0/2 binds up, window 0/10 (not connected yet)" in offline.output
    assert "--connect binds first" in offline.output
    assert threaded_smsc.binds == 0

    online = CliRunner().invoke(main, ["explain", str(path), TO, "--connect"])
    assert online.exit_code == 0, online.output
    assert "binds    smsc: 2/2 binds up, window 0/10\n" in online.output
    assert threaded_smsc.binds == 2
    assert threaded_smsc.unbinds == 2  # it unbinds before exiting
    assert TO not in online.output


# -- reload ---------------------------------------------------------------------------------


async def test_reload_unbinds_the_old_binds_and_binds_the_new(
    smsc: FakeSMSC, tmp_path: Path
) -> None:
    path = write(tmp_path, smsc.port, binds=2, deadline="0.5s")
    async with Router.from_yaml(path, metrics=False) as router:
        old = router.dispatcher.runtime.providers["smsc"]
        assert smsc.bound_sessions == 2
        smsc.latency(0.2)
        in_flight = asyncio.create_task(router.send(message()))  # on the old runtime
        await until(lambda: len(smsc.submits) == 1)
        write(tmp_path, smsc.port, binds=1, deadline="0.5s")
        router.reload()
        # The new runtime binds at once, without waiting for a send.
        await until(lambda: router.dispatcher.links()["smsc"].up == 1)
        assert smsc.binds == 3
        assert smsc.unbinds == 0  # the old binds wait for the old sends
        assert (await in_flight).ok
        await until(lambda: smsc.unbinds == 2)
        assert smsc.bound_sessions == 1
        assert old.links() == LinkState(0, 2, 0, 20, ("closed",))
        assert (await router.send(message())).ok
    assert smsc.unbinds == 3


async def test_closing_the_router_during_the_grace_unbinds_everything(
    smsc: FakeSMSC, tmp_path: Path
) -> None:
    path = write(tmp_path, smsc.port, binds=1, deadline="30s")
    async with Router.from_yaml(path, metrics=False) as router:
        write(tmp_path, smsc.port, binds=1, window=5, deadline="30s")  # a changed provider
        router.reload()
        await until(lambda: smsc.binds == 2)
        assert smsc.unbinds == 0
    assert smsc.unbinds == 2
    assert smsc.bound_sessions == 0


async def test_a_reload_that_leaves_the_smpp_provider_unchanged_keeps_its_binds(
    smsc: FakeSMSC, tmp_path: Path
) -> None:
    """Only the rules' deadline changes: the new runtime carries the provider over, binds
    and all, so the SMSC sees no second bind (one may be all a system_id is allowed) and
    the old runtime's retirement unbinds nothing."""
    path = write(tmp_path, smsc.port, binds=1, deadline="0.3s")
    async with Router.from_yaml(path, metrics=False) as router:
        old = router.dispatcher.runtime.providers["smsc"]
        assert (await router.send(message())).ok
        write(tmp_path, smsc.port, binds=1, deadline="0.4s")
        router.reload()
        assert router.dispatcher.runtime.config.defaults.deadline == 0.4
        assert router.dispatcher.runtime.providers["smsc"] is old
        await asyncio.sleep(0.6)  # past the old runtime's grace
        assert (smsc.binds, smsc.unbinds, smsc.bound_sessions) == (1, 0, 1)
        assert (await router.send(message())).ok
        assert len(smsc.submits) == 2
    assert smsc.unbinds == 1


async def test_reload_before_any_send_starts_nothing_twice(smsc: FakeSMSC, tmp_path: Path) -> None:
    path = write(tmp_path, smsc.port)
    router = Router.from_yaml(path, metrics=False)
    router.reload()  # never started: nothing to bind or unbind yet
    await asyncio.sleep(0)
    assert smsc.binds == 0
    async with router:
        assert smsc.binds == 1
    assert smsc.unbinds == 1
