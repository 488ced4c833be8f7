"""Config reloads while traffic flows: sends under way, the provider start, the retirement.

Each hypothesis example runs on its own event loop (``asyncio.Runner``): real fake
servers, a real router, waves of concurrent sends, and a reload drawn from a small
family of configs between the waves (providers added, removed and renamed, rules
reordered, caps and rate limits changed, guards added and removed, broken configs).

The contract checked on every example:

* every send returns a :class:`SendResult` (never raises, never hangs);
* an accepted message reached exactly the fake its result names, exactly once;
* a broken reload raises :class:`ConfigError` and the config in force stays (a probe
  send right after shows it); after a good one, probes go by the new config;
* after ``aclose()`` no task of the router is left, no connection to a fake is open,
  and nothing is reported as destroyed while pending or left unclosed.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from conftest import twilio_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import redis_url, state_block  # noqa: F401 - a fixture

from smsroute import ConfigError, Message, Router, SendResult
from smsroute.testing import FakeTwilio
from smsroute.testing.smsc import FakeSMSC

pytestmark = pytest.mark.timeout(120)

#: The names each fake may go by (a rename keeps the fake: a name always means one fake).
ALIASES = (("a", "a2"), ("b", "b2"), ("c", "c2"))
FAKE_OF = {name: i for i, names in enumerate(ALIASES) for name in names}
#: Destinations: one per rule of the family (DE, US) and one the guard denies (FR).
TO = {"DE": "+4915123456789", "US": "+14155550100", "FR": "+33612345678"}
SEND_LIMIT = 5.0  # no send may take longer (the deadline is 1s)


# -- the family of configs ------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    max_concurrency: int | None
    rate_limit: str | None


@dataclass(frozen=True)
class Spec:
    """One config of the family; ``broken`` is None or how it is broken."""

    providers: tuple[ProviderSpec, ...]
    rules: tuple[tuple[str, str | None, tuple[str, ...]], ...]  # (name, country, providers)
    guards: bool
    broken: str | None = None

    def first(self, country: str) -> tuple[str, str]:
        """(rule, first provider of its plan) of a message to ``country``."""
        for name, matched, providers in self.rules:
            if matched is None or matched == country:
                return name, providers[0]
        raise AssertionError("the family always has a catch-all")

    def yaml(self, fakes: list[FakeTwilio], extra: str = "") -> str:
        blocks = []
        for p in self.providers:
            opts: dict[str, object] = {"timeout": "500ms"}
            if p.max_concurrency is not None:
                opts["max_concurrency"] = p.max_concurrency
            if p.rate_limit is not None:
                opts["rate_limit"] = p.rate_limit
            blocks.append(twilio_block(p.name, fakes[FAKE_OF[p.name]], **opts))
        rules = []
        for name, country, providers in self.rules:
            names = list(providers)
            if self.broken == "unknown provider" and name == "rest":
                names.append("nope")
            match = f"    match: {{country: [{country}]}}\n" if country else ""
            rules.append(f"  - name: {name}\n{match}    providers: [{', '.join(names)}]\n")
        text = (
            "defaults:\n"
            "  default_region: US\n"
            "  deadline: 1s\n"
            "  max_rate_wait: 200ms\n"
            "  breaker: {consecutive_failures: 1000, open_for: 1s, half_open_probes: 1}\n"
            "providers:\n" + "\n".join(blocks) + "\nrules:\n" + "".join(rules)
        )
        if self.guards:
            text += "guards:\n  otp:\n    countries: {deny: [FR]}\n"
        text += extra
        if self.broken == "yaml":
            text += "rules: [\n  {name: oops\n"
        return text


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    present = draw(
        st.lists(st.sampled_from(range(len(ALIASES))), min_size=1, max_size=3, unique=True)
    )
    providers = tuple(
        ProviderSpec(
            draw(st.sampled_from(ALIASES[i])),
            draw(st.sampled_from([None, None, 1, 4])),
            draw(st.sampled_from([None, None, "40/s", "1000/s"])),
        )
        for i in sorted(present)
    )
    names = [p.name for p in providers]

    def plan() -> tuple[str, ...]:
        return tuple(draw(st.permutations(names))[: draw(st.integers(1, len(names)))])

    specific = [("de", "DE", plan()), ("us", "US", plan())]
    if draw(st.booleans()):
        specific.reverse()  # rules reordered
    return Spec(
        providers,
        (*specific, ("rest", None, plan())),
        guards=draw(st.booleans()),
        broken=draw(st.sampled_from([None, None, None, None, "yaml", "unknown provider"])),
    )


def good(spec: Spec) -> Spec:
    return Spec(spec.providers, spec.rules, spec.guards)


# -- what the loop reports ---------------------------------------------------------------


@dataclass
class Complaints:
    """What the event loop and the warnings machinery said during a run."""

    loop: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)

    def check(self) -> None:
        bad = [
            text
            for text in self.loop + self.warned
            if "destroyed but it is pending" in text
            or "Unclosed" in text
            or "unclosed" in text
            or "never awaited" in text
        ]
        assert not bad, bad


@contextmanager
def watched_loop() -> Iterator[tuple[asyncio.Runner, Complaints]]:
    """A fresh event loop that records what its exception handler is given, and the
    warnings raised meanwhile (ResourceWarning included), collected before it closes."""
    complaints = Complaints()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        complaints.loop.append(f"{context.get('message')}: {context.get('exception')!r}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with asyncio.Runner() as runner:
            runner.get_loop().set_exception_handler(handler)
            yield runner, complaints
            gc.collect()
            runner.run(asyncio.sleep(0))
        gc.collect()
    complaints.warned = [f"{w.category.__name__}: {w.message}" for w in caught]
    complaints.check()


def put(path: Path, text: str) -> None:
    """Write a config file (a small local write: no need to leave the event loop)."""
    path.write_text(text)


def router_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since ``before`` that are not the fakes' own (nor this one)."""
    left = []
    for task in asyncio.all_tasks() - before - {asyncio.current_task()}:
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        where = code.co_filename if code is not None else repr(coro)
        if "smsroute/testing" in where or "aiohttp/web_protocol" in where:
            continue
        left.append(f"{task.get_name()}: {where}:{getattr(code, 'co_name', '')}")
    return left


def open_connections(fake: FakeTwilio) -> int:
    """Connections the fake's HTTP server holds open now."""
    runner = fake._runner
    if runner is None:
        return 0
    server = runner.server
    assert isinstance(server, web.Server)
    return len(server.connections)


async def settled(check: Callable[[], bool], limit: float = 2.0) -> bool:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 - moved by the peer's socket
            await asyncio.sleep(0.01)
    return True


# -- the traffic ----------------------------------------------------------------------------


@dataclass
class Traffic:
    """Sends under way, each with the unique text it carries."""

    router: Router
    counter: Iterator[int] = field(default_factory=itertools.count)
    sent: list[tuple[str, asyncio.Task[SendResult]]] = field(default_factory=list)

    def wave(self, n: int) -> None:
        for _ in range(n):
            k = next(self.counter)
            country = ("DE", "US", "FR")[k % 3]
            text = f"traffic {k}"
            message = Message(to=TO[country], text=text, category="otp")
            send = asyncio.wait_for(self.router.send(message), SEND_LIMIT)
            self.sent.append((text, asyncio.ensure_future(send)))

    async def results(self) -> list[tuple[str, SendResult]]:
        done = await asyncio.gather(*(t for _, t in self.sent), return_exceptions=True)
        out = []
        for (text, _), result in zip(self.sent, done, strict=True):
            assert isinstance(result, SendResult), f"{text}: {result!r}"
            out.append((text, result))
        return out


def check_deliveries(results: list[tuple[str, SendResult]], fakes: list[FakeTwilio]) -> None:
    """Each accepted message reached exactly the fake its result names, once; it reached
    no other fake but one that timed out on it (it may have taken it: documented)."""
    seen: dict[str, list[tuple[int, str]]] = {}
    for i, fake in enumerate(fakes):
        for m in fake.messages:
            seen.setdefault(m.text, []).append((i, m.provider_message_id))
    accepted = 0
    for text, result in results:
        arrived = seen.get(text, [])
        timed_out = {FAKE_OF[a.provider] for a in result.attempts if a.outcome.value == "timeout"}
        if result.ok:
            accepted += 1
            assert result.provider is not None
            assert result.provider_message_id is not None
            named = (FAKE_OF[result.provider], result.provider_message_id)
            assert arrived.count(named) == 1, (text, result, arrived)
            others = [fake for fake, pid in arrived if (fake, pid) != named]
            assert all(fake in timed_out for fake in others), (text, result, arrived)
        else:
            assert all(fake in timed_out for fake, _ in arrived), (text, result, arrived)
    assert accepted > 0


async def probe(router: Router, spec: Spec) -> None:
    """Sends that show ``spec`` is the config in force: each destination's rule and the
    first provider its plan tries, and the guard (FR refused only with guards)."""
    for country in ("DE", "US"):
        text = f"probe {country}"
        result = await asyncio.wait_for(
            router.send(Message(to=TO[country], text=text, category="otp")), SEND_LIMIT
        )
        rule, first = spec.first(country)
        assert result.rule == rule, (spec, result)
        assert result.attempts, result
        assert result.attempts[0].provider == first, (spec, result)
    gb = await asyncio.wait_for(
        router.send(Message(to=TO["FR"], text="probe FR", category="otp")), SEND_LIMIT
    )
    if spec.guards:
        assert not gb.ok, gb
        assert gb.attempts == (), gb
        assert "FR" in (gb.reason or ""), gb
    else:
        assert gb.attempts, gb
        assert gb.attempts[0].provider == spec.first("FR")[1], gb


# -- 1. HTTP providers ----------------------------------------------------------------------


async def reload_under_traffic(
    path: Path, first: Spec, steps: list[Spec], pauses: list[int], extra: str = ""
) -> None:
    before = asyncio.all_tasks()
    async with FakeTwilio() as f0, FakeTwilio() as f1, FakeTwilio() as f2:
        fakes = [f0, f1, f2]
        for fake in fakes:
            fake.latency(0.005)
        put(path, first.yaml(fakes, extra))
        router = Router.from_yaml(path, metrics=False)
        traffic = Traffic(router)
        in_force = first
        session = None
        try:
            for step, pause in zip(steps, pauses, strict=True):
                traffic.wave(40)
                for _ in range(pause):  # let the wave get under way (or not)
                    await asyncio.sleep(0.002)
                if session is None and router.dispatcher._session is not None:
                    session = router.dispatcher.session()
                target = path.with_name(f"step{next(traffic.counter)}.yaml")
                put(target, step.yaml(fakes, extra))
                if step.broken:
                    with pytest.raises(ConfigError):
                        router.reload(target)
                else:
                    router.reload(target)
                    in_force = step
                await probe(router, in_force)
            traffic.wave(20)
            results = await traffic.results()
            await probe(router, in_force)  # after the last reload: the final config
        finally:
            session = session or router.dispatcher._session
            await router.aclose()
        check_deliveries(results, fakes)
        assert session is None or session.closed
        for _ in range(3):
            await asyncio.sleep(0)
        assert router_tasks(before) == []
        await settled(lambda: all(open_connections(f) == 0 for f in fakes))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=specs().map(good),
    steps=st.lists(specs(), min_size=1, max_size=4),
    pauses=st.lists(st.integers(0, 5), min_size=4, max_size=4),
)
def test_reloads_under_traffic_keep_the_contract(
    tmp_path: Path, first: Spec, steps: list[Spec], pauses: list[int]
) -> None:
    with watched_loop() as (runner, _):
        runner.run(
            reload_under_traffic(tmp_path / "routing.yaml", first, steps, pauses[: len(steps)])
        )


# -- 2. an SMPP provider in the family ----------------------------------------------------


@dataclass(frozen=True)
class SmppSpec:
    """The SMPP provider's options, and whether the rule falls back to a Twilio fake."""

    binds: int
    window: int
    fallback: bool

    def yaml(self, smsc: FakeSMSC, fake: FakeTwilio, extra: str = "") -> str:
        providers = "[smsc, a]" if self.fallback else "[smsc]"
        return (
            "defaults:\n"
            "  default_region: US\n"
            "  deadline: 500ms\n"
            "  breaker: {consecutive_failures: 1000, open_for: 1s, half_open_probes: 1}\n"
            "providers:\n"
            "  smsc:\n"
            "    type: smpp\n"
            "    host: 127.0.0.1\n"
            f"    port: {smsc.port}\n"
            "    system_id: smsroute\n"
            "    password: secret\n"
            "    from: ACME\n"
            "    timeout: 400ms\n"
            f"    binds: {self.binds}\n"
            f"    window: {self.window}\n"
            "    enquire_link: 1s\n"
            "    reconnect_delay: 0.05s\n"
            "    reconnect_max: 0.2s\n"
            + twilio_block("a", fake, timeout="300ms")
            + f"\nrules:\n  - name: all\n    providers: {providers}\n"
            + extra
        )


smpp_specs = st.builds(SmppSpec, st.integers(1, 2), st.sampled_from([4, 8]), st.booleans())


def smsc_deliveries(
    results: list[tuple[str, SendResult]], smsc: FakeSMSC, fake: FakeTwilio
) -> None:
    """Each accepted message arrived once, where its result says (the SMSC's id, or the
    fake's); a message no provider timed out on arrived nowhere if it failed."""
    at_smsc: dict[str, list[str]] = {}
    for m in smsc.messages:
        at_smsc.setdefault(m.text, []).append(m.message_ids[0])
    at_fake: dict[str, list[str]] = {}
    for r in fake.messages:
        at_fake.setdefault(r.text, []).append(r.provider_message_id)
    for text, result in results:
        # A provider that timed out may have taken the message (a documented outcome).
        timed_out = {a.provider for a in result.attempts if a.outcome.value == "timeout"}
        for name, arrived in (("smsc", at_smsc.get(text, [])), ("a", at_fake.get(text, []))):
            if result.provider == name:
                assert arrived == [result.provider_message_id], (text, result, arrived)
            elif name in timed_out:
                assert len(arrived) <= 1, (text, result, arrived)
            else:
                assert arrived == [], (text, result, arrived)


async def smpp_reload_under_traffic(
    path: Path, first: SmppSpec, steps: list[SmppSpec], extra: str = ""
) -> None:
    before = asyncio.all_tasks()
    async with FakeSMSC() as smsc, FakeTwilio() as fake:
        smsc.latency(0.03)
        smsc.receipts("DELIVRD", delay=0.2)
        put(path, first.yaml(smsc, fake, extra))
        router = Router.from_yaml(path, metrics=False)
        traffic = Traffic(router)
        try:
            for n, step in enumerate(steps):
                traffic.wave(20)
                await settled(lambda: len(smsc.submits) > 0, 3.0)  # submits in flight
                put(path, step.yaml(smsc, fake, extra))
                router.reload(path)
                if n % 2:
                    await asyncio.sleep(0.1)  # some reloads in a row, some apart
            results = await traffic.results()
            final = steps[-1]
            # Past the grace of every runtime swapped out: only the final binds are left.
            await settled(lambda: smsc.bound_sessions == final.binds, 3.0)
            await asyncio.sleep(0.6)
            assert smsc.bound_sessions == final.binds
            assert router.dispatcher.links()["smsc"].up == final.binds
            # Receipts of messages sent through binds now unbound still correlate.
            sent = [r for _, r in results if r.provider == "smsc"]
            assert sent

            async def all_delivered() -> bool:
                for r in sent:
                    state = await router.status(r.message_id)
                    if state is None or state.status != "delivered":
                        return False
                return True

            async with asyncio.timeout(3.0):
                while not await all_delivered():  # noqa: ASYNC110 - receipts over SMPP
                    await asyncio.sleep(0.02)
            after = await asyncio.wait_for(
                router.send(Message(to=TO["DE"], text="after", category="otp")), SEND_LIMIT
            )
            assert after.provider == "smsc", after
        finally:
            await router.aclose()
        smsc_deliveries(results, smsc, fake)
        assert smsc.bound_sessions == 0
        assert smsc.unbinds == smsc.binds, (smsc.binds, smsc.unbinds)
        for _ in range(3):
            await asyncio.sleep(0)
        assert router_tasks(before) == []


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=smpp_specs, steps=st.lists(smpp_specs, min_size=1, max_size=3))
def test_smpp_reloads_under_traffic_unbind_the_old_binds_once(
    tmp_path: Path, first: SmppSpec, steps: list[SmppSpec]
) -> None:
    with watched_loop() as (runner, _):
        runner.run(smpp_reload_under_traffic(tmp_path / "routing.yaml", first, steps))


# -- 3. reload racing the router's start ---------------------------------------------------


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("twice", [False, True])
def test_reload_racing_the_first_send(tmp_path: Path, turns: int, twice: bool) -> None:
    """A reload (or two in a row) made while the first send starts the providers, at
    each point of that start: every runtime's SMPP provider binds at most once, the
    binds of those swapped out are unbound, and nothing is left when the router closes."""

    async def scenario() -> None:
        before = asyncio.all_tasks()
        async with FakeSMSC() as smsc, FakeTwilio() as fake:
            path = tmp_path / "routing.yaml"
            put(path, SmppSpec(1, 2, True).yaml(smsc, fake))
            router = Router.from_yaml(path, metrics=False)
            first = asyncio.ensure_future(
                router.send(Message(to=TO["DE"], text="first", category="otp"))
            )
            for _ in range(turns):
                await asyncio.sleep(0)
            put(path, SmppSpec(1, 8, True).yaml(smsc, fake))
            router.reload(path)
            swaps = 1
            if twice:
                put(path, SmppSpec(2, 8, True).yaml(smsc, fake))
                router.reload(path)
                swaps = 2
            try:
                result = await asyncio.wait_for(first, SEND_LIMIT)
                assert result.ok, result
                final = 2 if twice else 1
                await settled(lambda: smsc.bound_sessions == final, 3.0)
                await asyncio.sleep(0.7)  # past the grace
                assert smsc.bound_sessions == final
                # Each runtime bound at most once: the first, maybe the one in between
                # (when its start began), and the final one.
                assert smsc.binds <= 1 + swaps + (1 if twice else 0), smsc.binds
                second = await router.send(Message(to=TO["DE"], text="2nd", category="otp"))
                assert second.provider == "smsc", second
            finally:
                await router.aclose()
            assert smsc.bound_sessions == 0
            assert smsc.unbinds == smsc.binds
            for _ in range(3):
                await asyncio.sleep(0)
            assert router_tasks(before) == []

    with watched_loop() as (runner, _):
        runner.run(scenario())


@pytest.mark.parametrize("turns", [0, 1, 2, 4, 8])
def test_closing_right_after_two_quick_reloads_leaves_nothing(tmp_path: Path, turns: int) -> None:
    """Two reloads in a row once the router runs, then aclose while the new runtimes'
    providers may still be starting: every bind made is unbound, no task is left."""

    async def scenario() -> None:
        before = asyncio.all_tasks()
        async with FakeSMSC() as smsc, FakeTwilio() as fake:
            path = tmp_path / "routing.yaml"
            put(path, SmppSpec(1, 2, False).yaml(smsc, fake))
            router = Router.from_yaml(path, metrics=False)
            await router.__aenter__()
            try:
                put(path, SmppSpec(1, 8, False).yaml(smsc, fake))
                router.reload(path)
                for _ in range(turns):
                    await asyncio.sleep(0)
                put(path, SmppSpec(2, 8, False).yaml(smsc, fake))
                router.reload(path)
                for _ in range(turns):
                    await asyncio.sleep(0)
            finally:
                await router.aclose()
            await asyncio.sleep(0.05)
            assert smsc.bound_sessions == 0
            assert smsc.unbinds == smsc.binds
            for _ in range(3):
                await asyncio.sleep(0)
            assert router_tasks(before) == []

    with watched_loop() as (runner, _):
        runner.run(scenario())


def test_a_provider_carried_over_is_not_closed_under_the_sends_of_a_later_runtime(
    tmp_path: Path,
) -> None:
    """A -> B carries the unchanged SMPP provider over; B -> C changes it.  The bind
    belongs to A and B both: it must stay up until B's sends are done (B's grace), not
    be unbound when A's grace ends while B's submits are still waiting for answers."""

    async def scenario() -> None:
        async with FakeSMSC() as smsc, FakeTwilio() as fake:
            path = tmp_path / "routing.yaml"
            put(path, SmppSpec(1, 8, False).yaml(smsc, fake))
            async with Router.from_yaml(path, metrics=False) as router:
                put(path, SmppSpec(1, 8, True).yaml(smsc, fake))  # smsc unchanged
                router.reload(path)
                await asyncio.sleep(0.3)  # A's grace (500ms) is more than half gone
                smsc.latency(0.3)
                traffic = Traffic(router)
                traffic.wave(6)  # on B, through the bind carried over
                await settled(lambda: len(smsc.submits) == 6)
                put(path, SmppSpec(1, 4, True).yaml(smsc, fake))  # smsc changed
                router.reload(path)
                results = await traffic.results()
                assert [r.provider for _, r in results] == ["smsc"] * 6, results
                assert all(len(r.attempts) == 1 for _, r in results), results
                await asyncio.sleep(0.6)  # past B's grace: the old bind goes
                assert smsc.bound_sessions == 1
                assert smsc.unbinds == 1
            assert smsc.unbinds == smsc.binds == 2

    with watched_loop() as (runner, _):
        runner.run(scenario())


# -- 4. state in Redis ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_prefix(redis_url: str) -> Iterator[str]:  # noqa: F811 - the fixture above
    """A key prefix of this module's own (each example adds its own part); deleted after."""
    name = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


examples = itertools.count()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=specs().map(good),
    steps=st.lists(specs(), min_size=1, max_size=3),
    pauses=st.lists(st.integers(0, 5), min_size=3, max_size=3),
)
def test_reloads_under_traffic_with_state_in_redis(
    tmp_path: Path,
    redis_url: str,  # noqa: F811 - the fixture
    redis_prefix: str,
    first: Spec,
    steps: list[Spec],
    pauses: list[int],
) -> None:
    """The same contract with breakers, buckets and guards' counts in Redis (a key
    prefix of each example's own): no exception, every send answered, probes by the
    config in force (rate limits and caps still skip or wait as configured)."""
    mine = f"{redis_prefix}{next(examples)}:"
    extra = state_block(redis_url, mine) + "\n"
    with watched_loop() as (runner, _):
        runner.run(
            reload_under_traffic(
                tmp_path / "routing.yaml", first, steps, pauses[: len(steps)], extra
            )
        )
    client = redis.Redis.from_url(redis_url)
    try:  # the state was there: the messages' status records at least
        assert next(client.scan_iter(match=f"{mine}*", count=1000), None) is not None
    finally:
        client.close()
