"""``router.explain(message)`` predicts what ``router.send(message)`` does.

Hypothesis draws a config (2 to 4 fake Twilio accounts with prices per country, rules
matching by country, category and tags under every strategy, ``from`` maps, quiet
hours, guards, budgets, rate limits, max_attempts), a state reached the way production
reaches it (breakers opened by 503s, a Retry-After pause, a rate limit spent, numbers
that opted out, messages already sent that bring guards and budgets near their limits,
time passed) and a message; then asks ``explain`` and sends, with every fake healthy,
and checks the prediction against what ``send`` did:

* a refusal explain predicts (opted out, quiet hours, a guard, no usable sender, an
  invalid message) is the one send returns, with no attempt;
* otherwise the first provider explain would try is the first send calls, a provider
  explain says is skipped (breaker, rate limit, sender) is never called, a provider
  send skips for its rate limit is one explain said is throttled, and the sender the
  fake received is the one explain showed.

Only the structured :class:`RoutePlan` is read, never the CLI's text.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from smsroute import InvalidMessage, InvalidNumber, ManualClock, Message, Router, parse_config
from smsroute.explain import RoutePlan
from smsroute.message import SendResult
from smsroute.testing import FakeTwilio

#: One number per country: US refuses alphanumeric senders and wants local numbers.
NUMBERS = {
    "DE": "+4915123456789",
    "FR": "+33612345678",
    "US": "+12025550123",
    "GB": "+447911123456",
}
COUNTRIES = sorted(NUMBERS)
CATEGORIES = ("otp", "transactional", "marketing")
TAGS = ("vip", "bulk")
STRATEGIES = ("priority", "cheapest", "weighted", "fastest", "score")
#: 2026-01-15 10:00 UTC, a Thursday: quiet hours below are drawn around it.
START = 1768471200.0

#: What a provider is given as its sender: None (the account's messaging service), a plain
#: string (sent unchecked), or ``from`` maps the capability table checks per country.
SENDER_KINDS: dict[str, Any] = {
    "none": None,
    "plain": "+15005550006",
    "alnum_fallback": {"default": "ACME", "fallback": "+12025550100"},
    "alnum_gb_fallback": {"default": "ACME", "fallback": "+447911000000"},
    "de_alnum": {"DE": "ACME", "default": "+12025550100"},
    "german_number": {"default": "+4915100000000"},
}


def sub(draw: st.DrawFn, items: tuple[str, ...] | list[str], min_size: int = 0) -> list[str]:
    return draw(st.lists(st.sampled_from(items), unique=True, min_size=min_size))


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 4))
    names = [f"p{i}" for i in range(n)]
    price = st.sampled_from([0.01, 0.02, 0.03, 0.05])
    providers: dict[str, Any] = {}
    for name in names:
        prices = {c: draw(price) for c in sub(draw, COUNTRIES)}
        if draw(st.booleans()):
            prices["default"] = draw(price)
        p: dict[str, Any] = {"type": "twilio", "prices": prices}
        sender = SENDER_KINDS[draw(st.sampled_from(sorted(SENDER_KINDS)))]
        if sender is None:
            p["messaging_service_sid"] = "MG" + "0" * 32
        else:
            p["from"] = sender
        if draw(st.booleans()):
            p["rate_limit"] = "1/m"  # one token a minute: one message spends it
            p["burst"] = 1
        providers[name] = p

    def rule(rule_name: str, match: dict[str, Any] | None) -> dict[str, Any]:
        chosen = draw(st.permutations(names))[: draw(st.integers(1, n))]
        r: dict[str, Any] = {
            "name": rule_name,
            "providers": chosen,
            "strategy": draw(st.sampled_from(STRATEGIES)),
        }
        if match:
            r["match"] = match
        if r["strategy"] == "weighted":
            r["weights"] = {pn: draw(st.sampled_from([0, 1, 3])) for pn in chosen}
            r["weights"][chosen[0]] = draw(st.sampled_from([1, 3]))  # one must be positive
        if draw(st.booleans()):
            r["max_attempts"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            r["on_budget"] = "cheapest_under_cap"
        return r

    rules = []
    for i in range(draw(st.integers(0, 3))):
        match: dict[str, Any] = {}
        if draw(st.booleans()):
            match["country"] = sub(draw, COUNTRIES, 1)
        if draw(st.booleans()):
            match["category"] = sub(draw, CATEGORIES, 1)
        if draw(st.booleans()):
            match["tags"] = sub(draw, TAGS, 1)
        if match:
            rules.append(rule(f"r{i}", match))
    rules.append(rule("catch-all", None))
    # Each provider's own rule, for the messages that put it in its drawn state.
    setup_rules = [
        {"name": f"setup-{pn}", "match": {"tags": [f"setup-{pn}"]}, "providers": [pn]}
        for pn in names
    ]

    categories: dict[str, Any] = {"setup": {}}
    for cat in ("transactional", "marketing"):
        if draw(st.booleans()):
            start, end = draw(st.sampled_from([(9, 12), (21, 8), (11, 10), (0, 6), (8, 20)]))
            tz = draw(st.sampled_from(["recipient", "Europe/Berlin", "America/New_York"]))
            categories[cat] = {
                "quiet_hours": {"from": f"{start:02d}:00", "to": f"{end:02d}:00", "timezone": tz}
            }

    guards: dict[str, Any] = {}
    for cat in CATEGORIES:
        g: dict[str, Any] = {}
        if draw(st.booleans()):
            key = draw(st.sampled_from(["allow", "deny"]))
            g["countries"] = {key: sub(draw, COUNTRIES, 1)}
        if draw(st.booleans()):
            per = draw(st.sampled_from(["number", "country"]))
            g["velocity"] = [{"per": per, "max": draw(st.integers(1, 3)), "window": "1h"}]
        if g:
            guards[cat] = g
    budgets = []
    for pn in sub(draw, names):
        budgets.append({"scope": "provider", "name": pn, "limit": draw(price), "per": "day"})
    for cat in sub(draw, list(CATEGORIES)):
        budgets.append({"scope": "category", "name": cat, "limit": draw(price), "per": "day"})
    if budgets:
        guards["budgets"] = budgets

    config: dict[str, Any] = {
        "defaults": {
            "default_region": "DE",
            "max_attempts": draw(st.integers(1, 3)),
            "max_rate_wait": "1s",
            "breaker": {
                "consecutive_failures": 1,
                "min_calls": 1000,
                "open_for": "30s",
                "half_open_probes": 1,
            },
        },
        "providers": providers,
        "categories": categories,
        "rules": setup_rules + rules,
    }
    if guards:
        config["guards"] = guards

    state = {
        # What each provider went through, by sends through it alone: "open", a 503 (one
        # opens its breaker); ("throttled", s), a 429 with Retry-After s; ("spent", k), k
        # messages accepted (its rate limit and budget spent); or nothing.
        "providers": {
            pn: draw(
                st.sampled_from(
                    [
                        None,
                        None,
                        "open",
                        "open+throttled",
                        ("throttled", 0.5),
                        ("throttled", 5.0),
                        ("spent", 1),
                        ("spent", 2),
                    ]
                )
            )
            for pn in names
        },
        "opted_out": sub(draw, COUNTRIES),
        # Messages like the one explained, sent first (guards near their limits).
        "before": draw(st.integers(0, 3)),
        "advance": draw(st.sampled_from([0.0, 0.2, 31.0])),
        "hour": draw(st.sampled_from([0, 7, 10, 13, 22])),
    }
    country = draw(st.sampled_from(COUNTRIES))
    message = {
        "to": draw(st.sampled_from([NUMBERS[country]] * 8 + ["+4912"])),
        "text": draw(
            st.sampled_from(
                ["Your code is 123456", "Grüße aus Köln \u2019bis bald\u2019", "x" * 200, ""]
            )
        ),
        "category": draw(st.sampled_from(CATEGORIES)),
        "tags": tuple(sub(draw, TAGS)),
        "sender": draw(st.sampled_from([None, None, "ACME", "+15005550006", ""])),
    }
    return {"config": config, "state": state, "message": message, "seed": draw(st.integers(0, 9))}


def refusal_of(result: SendResult) -> str | None:
    """What refused ``result`` before any provider was called, as a kind; None if none did."""
    reason = result.reason or ""
    if result.attempts or result.ok:
        return None
    if reason == "opted_out":
        return "opted_out"
    if reason.startswith("quiet hours"):
        return "quiet"
    if reason.startswith("refused by guard "):
        return "guard:" + reason.split()[3].rstrip(":")
    if reason.startswith("no usable sender"):
        return "sender"
    return None


def predicted_refusal(plan: RoutePlan) -> str | None:
    """The refusal explain predicts, in send's order of checks (docs/architecture.md)."""
    if plan.opted_out:
        return "opted_out"
    if plan.quiet_until is not None or plan.quiet_never:
        return "quiet"
    if plan.refused_by is not None:
        return f"guard:{plan.refused_by}"
    # Breakers are planned first, then providers at their budget cap dropped; a provider
    # left in the plan without a usable sender is dropped before any is called: when none
    # is left, the send is refused for it.
    planned = [
        c
        for c in plan.candidates
        if not (c.skipped or "").startswith(("breaker", "at its budget cap"))
    ]
    if planned and all((c.skipped or "").startswith("no usable sender") for c in planned):
        return "sender"
    return None


def config_text(config: dict[str, Any], fakes: list[FakeTwilio]) -> str:
    for name, fake in zip(config["providers"], fakes, strict=False):
        p = config["providers"][name]
        p.update(base_url=fake.url, account_sid=fake.account_sid, auth_token=fake.auth_token)
    return json.dumps(config)  # JSON is YAML


async def setup_state(
    router: Router, clock: ManualClock, state: dict[str, Any], fakes: dict[str, FakeTwilio]
) -> None:
    def setup(name: str) -> Message:
        return Message(to=NUMBERS["DE"], text="setup", category="setup", tags=(f"setup-{name}",))

    drawn = state["providers"]
    # Spending first: a minute between two sends refills a rate limit of 1/m, and must
    # not age the breakers and pauses set next.
    for name in fakes:
        if isinstance(drawn[name], tuple) and drawn[name][0] == "spent":
            for i in range(drawn[name][1]):
                if i:
                    clock.advance(61)
                await router.send(setup(name))  # refused once at its budget cap: fine
    for name, fake in fakes.items():
        if drawn[name] in ("open", "open+throttled"):
            fake.fail(503, times=1)
            assert not (await router.send(setup(name))).ok
        if drawn[name] == "open+throttled":  # called anyway, as the last resort of its rule
            fake.throttle(retry_after=5.0, times=1)
            assert not (await router.send(setup(name))).ok
        elif isinstance(drawn[name], tuple) and drawn[name][0] == "throttled":
            fake.throttle(retry_after=drawn[name][1], times=1)
            assert not (await router.send(setup(name))).ok
        fake.heal()  # healthy from now on (a rate limit may have kept a fault unused)
    for country in state["opted_out"]:
        router.optouts.add(NUMBERS[country])


async def check_one(scenario: dict[str, Any]) -> None:
    state = scenario["state"]
    names = list(scenario["config"]["providers"])
    fakes = [FakeTwilio() for _ in names]
    for fake in fakes:
        await fake.start()
    try:
        config = parse_config(config_text(scenario["config"], fakes))
        clock = ManualClock(START - 10 * 3600 + state["hour"] * 3600)
        # The rng of weighted and fastest picks (and of exploring stale providers under
        # fastest and score): explain draws from it, so send is given the same state
        # back: the same draws, the same order.
        rng = random.Random(scenario["seed"])
        async with Router(config, clock=clock, sleep=clock.sleep, rng=rng, metrics=False) as router:
            await setup_state(router, clock, state, dict(zip(names, fakes, strict=True)))
            m = scenario["message"]
            message = Message(**m)
            for _ in range(state["before"]):
                try:
                    await router.send(message)
                except (InvalidNumber, InvalidMessage):
                    break
            clock.advance(state["advance"])
            before = {name: fake.requests for name, fake in zip(names, fakes, strict=True)}
            rng_state = rng.getstate()
            try:
                plan = router.explain(message)
            except (InvalidNumber, InvalidMessage) as exc:
                with pytest.raises(type(exc)):
                    await router.send(message)
                return
            rng.setstate(rng_state)
            result = await router.send(message)
        assert_predicted(plan, result)
        called = [a.provider for a in result.attempts if not (a.detail or "").startswith("skipped")]
        for name, fake in zip(names, fakes, strict=True):  # the fakes agree with the attempts
            assert fake.requests - before[name] == called.count(name)
        if result.ok:
            fake = fakes[names.index(result.provider or "")]
            first = next(c for c in plan.candidates if c.provider == result.provider)
            sent_from = fake.messages[-1].fields.get("From")  # None: the messaging service's
            assert sent_from == first.sender, (first, fake.messages[-1])
    finally:
        for fake in fakes:
            await fake.stop()


def assert_predicted(plan: RoutePlan, result: SendResult) -> None:
    said = predicted_refusal(plan)
    did = refusal_of(result)
    event(f"refused: {said}" if said else f"sent, strategy {plan.strategy}")
    for c in plan.candidates:
        if c.skipped:
            event("skipped: " + c.skipped.split(":")[0].split(",")[0])
    assert said == did, (said, did, result.reason, plan)
    if said is not None:
        return
    skipped = {c.provider: c.skipped for c in plan.candidates if c.skipped is not None}
    called = [a for a in result.attempts if not (a.detail or "").startswith("skipped")]
    for a in result.attempts:
        if (a.detail or "").startswith("skipped: rate limit"):
            assert (skipped.get(a.provider) or "").startswith("throttled"), (a, plan)
        assert a.provider not in skipped or a not in called, (a, plan)
    if not plan.providers:
        assert not called, (result, plan)
        return
    assert called, (result.reason, plan)
    assert called[0].provider == plan.providers[0], (result.attempts, plan)
    assert result.last_resort == plan.last_resort
    assert result.ok  # every fake is healthy: the first provider called accepts


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_explain_predicts_send(scenario: dict[str, Any]) -> None:
    asyncio.run(check_one(scenario))


# -- each disagreement found, pinned -------------------------------------------------------


def two_providers(**extra: Any) -> dict[str, Any]:
    """p0 then p1 under priority (p0 dearer), a rule per provider for setting state."""
    config: dict[str, Any] = {
        "defaults": {"breaker": {"consecutive_failures": 1, "min_calls": 1000}},
        "providers": {
            "p0": {"type": "twilio", "from": "+15005550006", "prices": {"default": 0.02}},
            "p1": {"type": "twilio", "from": "+15005550006", "prices": {"default": 0.01}},
        },
        "categories": {"setup": {}},
        "rules": [
            {"name": "setup-p0", "match": {"tags": ["setup-p0"]}, "providers": ["p0"]},
            {"name": "setup-p1", "match": {"tags": ["setup-p1"]}, "providers": ["p1"]},
            {"name": "main", "providers": ["p0", "p1"]},
        ],
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name].update(value)
        else:
            config[section] = value
    return config


SETUP_P0 = Message(to=NUMBERS["DE"], text="setup", category="setup", tags=("setup-p0",))
HELLO = Message(to=NUMBERS["DE"], text="hello")


async def pinned(config: dict[str, Any]) -> tuple[Router, list[FakeTwilio], ManualClock]:
    fakes = [FakeTwilio() for _ in config["providers"]]
    for fake in fakes:
        await fake.start()
    clock = ManualClock(START)
    router = Router(
        parse_config(config_text(config, fakes)), clock=clock, sleep=clock.sleep, metrics=False
    )
    await router.__aenter__()
    return router, fakes, clock


async def unpinned(router: Router, fakes: list[FakeTwilio]) -> None:
    await router.aclose()
    for fake in fakes:
        await fake.stop()


async def test_explain_says_an_opted_out_number_is_refused() -> None:
    router, fakes, _ = await pinned(two_providers())
    try:
        router.optouts.add(NUMBERS["DE"])
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.opted_out
        assert not router.explain(Message(to=NUMBERS["DE"], text="hi", category="otp")).opted_out
        assert result.reason == "opted_out"
    finally:
        await unpinned(router, fakes)


async def test_a_retry_after_pause_shorter_than_max_rate_wait_is_a_skip() -> None:
    # Send never waits out a Retry-After pause (TokenBucket.reserve: paused -> None);
    # explain said a pause of up to max_rate_wait (1s) would be waited for.
    router, fakes, _ = await pinned(two_providers())
    try:
        fakes[0].throttle(retry_after=0.5, times=1)
        await router.send(SETUP_P0)
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.providers == ("p1",)
        assert (plan.candidates[1].provider, plan.candidates[1].skipped) == (
            "p0",
            "throttled by the provider, paused for 0.5s more",
        )
        assert [(a.provider, a.outcome.value) for a in result.attempts] == [
            ("p0", "throttled"),
            ("p1", "accepted"),
        ]
    finally:
        await unpinned(router, fakes)


async def test_a_spent_rate_limit_is_a_skip() -> None:
    router, fakes, _ = await pinned(two_providers(providers__p0={"rate_limit": "1/m", "burst": 1}))
    try:
        assert (await router.send(SETUP_P0)).ok  # the one token of the minute
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.providers == ("p1",)
        assert (plan.candidates[1].skipped or "").startswith("throttled by its rate limit")
        assert [a.provider for a in result.attempts] == ["p0", "p1"]
        assert result.provider == "p1"
    finally:
        await unpinned(router, fakes)


def budget(on_budget: str) -> dict[str, Any]:
    config = two_providers(
        guards={"budgets": [{"scope": "provider", "name": "p0", "limit": 0.02, "per": "day"}]}
    )
    config["rules"][2]["on_budget"] = on_budget
    return config


async def test_the_first_provider_at_its_budget_cap_refuses_under_on_budget_refuse() -> None:
    router, fakes, _ = await pinned(budget("refuse"))
    try:
        assert (await router.send(SETUP_P0)).ok  # spends p0's 0.02
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.refused_by == "budget"
        assert [g.refuses for g in plan.guards] == [True]
        assert (result.reason or "").startswith("refused by guard budget: provider:p0")
        assert fakes[1].requests == 0
    finally:
        await unpinned(router, fakes)


async def test_a_provider_at_its_cap_leaves_the_plan_under_cheapest_under_cap() -> None:
    config = budget("cheapest_under_cap")
    config["providers"]["p2"] = {"type": "twilio", "from": "+15005550006", "prices": {"DE": 0.005}}
    config["rules"][2]["providers"] = ["p0", "p1", "p2"]
    router, fakes, _ = await pinned(config)
    try:
        assert (await router.send(SETUP_P0)).ok
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.refused_by is None
        assert plan.providers == ("p2", "p1")  # under their cap, cheapest first
        assert plan.candidates[2].provider == "p0"
        assert (plan.candidates[2].skipped or "").startswith("at its budget cap")
        assert result.provider == "p2"
    finally:
        await unpinned(router, fakes)


async def test_no_usable_sender_is_told_before_a_throttled_provider() -> None:
    # Send drops the providers without a usable sender before it calls any, so a
    # provider also paused by a Retry-After is never reached: no usable sender it is.
    config = two_providers()
    for p in config["providers"].values():  # no sender of their own: ACME cannot go to the US
        del p["from"]
        p["messaging_service_sid"] = "MG" + "0" * 32
    router, fakes, _ = await pinned(config)
    try:
        fakes[0].throttle(retry_after=5, times=1)
        await router.send(SETUP_P0)
        message = Message(to=NUMBERS["US"], text="hello", sender="ACME")
        plan = router.explain(message)
        result = await router.send(message)
        assert [(c.skipped or "")[:16] for c in plan.candidates] == ["no usable sender"] * 2
        assert predicted_refusal(plan) == refusal_of(result) == "sender"
    finally:
        await unpinned(router, fakes)


async def test_a_throttled_last_resort_is_a_skip() -> None:
    router, fakes, _ = await pinned(two_providers())
    try:
        fakes[0].fail(503, times=1)
        fakes[1].fail(503, times=1)
        await router.send(SETUP_P0)
        await router.send(Message(to=NUMBERS["DE"], text="s", category="setup", tags=("setup-p1",)))
        fakes[0].throttle(retry_after=5, times=1)
        await router.send(SETUP_P0)  # p0's last resort: a 429
        plan = router.explain(HELLO)
        result = await router.send(HELLO)
        assert plan.last_resort
        assert plan.providers == ()
        assert [(a.provider, a.outcome.value) for a in result.attempts] == [("p0", "throttled")]
    finally:
        await unpinned(router, fakes)
