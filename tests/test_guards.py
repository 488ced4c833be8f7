"""Fraud and spend guards (issue 19), with the state in memory and an injected clock.

Each guard is driven by a :class:`ManualClock` read as UTC epoch seconds (the guards'
wall clock): geo permissions, sliding velocity windows, the anomaly guard's trip and
release, budgets and their calendar rollover.  Every refusal is checked to reach no
provider: the fakes count the requests they receive.
"""

from __future__ import annotations

import calendar
import logging
import textwrap
from collections.abc import AsyncIterator

import pytest
from conftest import twilio_block
from prometheus_client import CollectorRegistry

from smsroute import (
    ANOMALY_OVERRIDE,
    AnomalyTransition,
    BudgetSpent,
    Event,
    GuardRefused,
    ManualClock,
    Message,
    Router,
    parse_config,
)
from smsroute.testing import FakeTwilio

#: 2026-01-31 23:00:00 UTC: an hour before a new day and a new month.
JAN31_2300 = float(calendar.timegm((2026, 1, 31, 23, 0, 0)))

DE = "+4915123456{:03d}"
US = "+1650253{:04d}"


def routing(a: FakeTwilio, b: FakeTwilio, guards: str, rules: str | None = None) -> str:
    rules = (
        rules
        or """
        rules:
          - name: default
            providers: [a, b]
    """
    )
    return (
        "providers:\n"
        + twilio_block("a", a, prices="{DE: 0.08, US: 0.01, default: 0.05}")
        + "\n"
        + twilio_block("b", b, prices="{DE: 0.06, US: 0.02, default: 0.05}")
        + "\n"
        + textwrap.dedent(rules)
        + textwrap.dedent(guards)
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTwilio, FakeTwilio]]:
    async with FakeTwilio() as a, FakeTwilio() as b:
        yield a, b


def make_router(
    yaml_text: str, clock: ManualClock, *hooks: Recorder
) -> tuple[Router, CollectorRegistry]:
    registry = CollectorRegistry()
    router = Router(parse_config(yaml_text), clock=clock, hooks=hooks, registry=registry)
    return router, registry


def otp(number: str, **kw: object) -> Message:
    return Message(to=number, text="Your code is 123456", category="otp", **kw)  # type: ignore[arg-type]


# -- geo -------------------------------------------------------------------------------


async def test_a_country_not_allowed_is_refused_before_any_provider(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    rec = Recorder()
    router, registry = make_router(
        routing(a, b, "guards:\n  otp:\n    countries: {allow: [DE, GB]}\n"),
        ManualClock(JAN31_2300),
        rec,
    )
    async with router:
        refused = await router.send(otp(US.format(1)))
        sent = await router.send(otp(DE.format(1)))
        other = await router.send(Message(to=US.format(2), text="hi"))  # transactional
    assert refused.status == "failed"
    assert refused.reason is not None
    assert "guard geo" in refused.reason
    assert "US" in refused.reason
    assert "650253" not in refused.reason
    assert refused.attempts == ()
    assert sent.status == "accepted"
    assert other.status == "accepted"
    assert a.requests == 2
    assert b.requests == 0
    assert [(e.guard, e.category, e.country) for e in rec.of(GuardRefused)] == [  # type: ignore[attr-defined]
        ("geo", "otp", "US")
    ]
    labels = {"guard": "geo", "category": "otp", "country": "US"}
    assert registry.get_sample_value("smsroute_guard_refusals_total", labels) == 1.0


async def test_a_denied_country_is_refused_by_a_rules_guards(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    rules = """
        rules:
          - name: marketing
            match: {category: marketing}
            providers: [b]
            guards: {countries: {deny: [US]}}
          - name: default
            providers: [a, b]
    """
    router, _ = make_router(routing(a, b, "", rules), ManualClock(JAN31_2300))
    async with router:
        refused = await router.send(Message(to=US.format(1), text="Sale", category="marketing"))
        fine = await router.send(Message(to=US.format(1), text="Receipt"))
    assert refused.reason is not None
    assert "denied" in refused.reason
    assert "rule 'marketing'" in refused.reason
    assert fine.status == "accepted"
    assert a.requests == 1
    assert b.requests == 0


# -- velocity ----------------------------------------------------------------------------


async def test_velocity_per_number_is_a_sliding_window(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300)
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    router, _ = make_router(routing(a, b, guards), clock)
    async with router:
        statuses = []
        for minutes in (0, 30, 45, 59):  # two sent; then refused within the hour
            clock.set(JAN31_2300 + minutes * 60)
            statuses.append((await router.send(otp(DE.format(1)))).status)
        other = await router.send(otp(DE.format(2)))  # another number has its own window
        clock.set(JAN31_2300 + 61 * 60)  # the first send left the window: one more fits
        statuses.append((await router.send(otp(DE.format(1)))).status)
        late = await router.send(otp(DE.format(1)))
        clock.set(JAN31_2300 + 91 * 60)  # the second left too
        statuses.append((await router.send(otp(DE.format(1)))).status)
    assert statuses == ["accepted", "accepted", "failed", "failed", "accepted", "accepted"]
    assert other.status == "accepted"
    assert late.reason == (
        "refused by guard velocity: at most 2 per number per 1h for category 'otp' "
        "(2 in the window)"
    )
    assert a.requests == 5  # the refused ones never reached a provider


async def test_velocity_per_prefix_and_per_country(fakes: tuple[FakeTwilio, FakeTwilio]) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300)
    guards = """
        guards:
          otp:
            velocity:
              - {per: prefix, digits: 7, max: 3, window: 10m}
              - {per: country, max: 5, window: 1m}
    """
    router, _ = make_router(routing(a, b, guards), clock)
    async with router:
        # +49151234xxxx: one 7-digit prefix (4915123) for every DE number here.
        first = [(await router.send(otp(DE.format(i)))).status for i in range(4)]
        other_prefix = await router.send(otp("+4917012345678"))
        clock.advance(11 * 60)
        second = [(await router.send(otp(DE.format(10 + i)))).status for i in range(3)]
        other = await router.send(otp("+4917012345679"))
        fifth = await router.send(otp("+4916012345670"))
        country = await router.send(otp("+4916012345678"))
    assert first == ["accepted", "accepted", "accepted", "failed"]
    assert other_prefix.status == "accepted"
    assert second == ["accepted", "accepted", "accepted"]
    assert other.status == fifth.status == "accepted"  # 5 DE messages in the last minute
    assert country.reason is not None
    assert "at most 5 per country per 1m" in country.reason
    assert "4916" not in country.reason


# -- anomaly -----------------------------------------------------------------------------


ANOMALY = """
    guards:
      otp:
        anomaly: {{window: 5m, baseline: 1h, factor: 5, min_count: 10, action: {action}}}
"""


async def warm_baseline(router: Router, clock: ManualClock, start: float) -> None:
    """One DE otp every 5 minutes for an hour: the baseline (and the guard armed)."""
    for i in range(12):
        clock.set(start + i * 300)
        assert (await router.send(otp(DE.format(i)))).status == "accepted"


async def test_anomaly_trips_on_a_burst_and_releases_when_it_ends(
    fakes: tuple[FakeTwilio, FakeTwilio], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300)
    rec = Recorder()
    router, registry = make_router(routing(a, b, ANOMALY.format(action="refuse")), clock, rec)
    caplog.set_level(logging.WARNING, "smsroute.guards")
    async with router:
        await warm_baseline(router, clock, JAN31_2300)
        clock.set(JAN31_2300 + 65 * 60)
        burst = [(await router.send(otp(DE.format(100 + i)))).status for i in range(12)]
        us = await router.send(otp(US.format(1)))  # another country: its own rate
        tripped = registry.get_sample_value(
            "smsroute_guard_anomaly_tripped", {"category": "otp", "country": "DE"}
        )
        plan = router.explain(otp(DE.format(200)))
        clock.set(JAN31_2300 + 75 * 60)  # the burst left the window
        after = await router.send(otp(DE.format(300)))
    # 11 passed messages over the hour before: 5x that rate is ~4.6 per 5 minutes, and
    # min_count is 10: the 10th request of the burst trips the guard.
    assert burst == ["accepted"] * 9 + ["failed"] * 3
    assert us.status == "accepted"
    assert tripped == 1.0
    assert plan.refused_by == "anomaly"
    assert after.status == "accepted"
    transitions = [(e.country, e.to_state) for e in rec.of(AnomalyTransition)]  # type: ignore[attr-defined]
    assert transitions == [("DE", "tripped"), ("DE", "released")]
    assert (
        registry.get_sample_value(
            "smsroute_guard_anomaly_tripped", {"category": "otp", "country": "DE"}
        )
        == 0.0
    )
    assert (
        registry.get_sample_value(
            "smsroute_guard_anomaly_transitions_total",
            {"category": "otp", "country": "DE", "to_state": "tripped"},
        )
        == 1.0
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "smsroute.guards"]
    assert len(logged) == 2
    assert "tripped" in logged[0]
    assert "released" in logged[1]
    assert not any("49151" in line for line in logged)
    assert a.requests == 12 + 9 + 1 + 1


async def test_a_new_deployment_does_not_trip_before_it_has_a_baseline(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300)
    router, _ = make_router(routing(a, b, ANOMALY.format(action="refuse")), clock)
    async with router:
        burst = [(await router.send(otp(DE.format(i)))).status for i in range(30)]
    assert burst == ["accepted"] * 30


async def test_require_override_lets_only_the_callers_override_through(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300)
    router, _ = make_router(routing(a, b, ANOMALY.format(action="require_override")), clock)
    async with router:
        await warm_baseline(router, clock, JAN31_2300)
        clock.set(JAN31_2300 + 65 * 60)
        for i in range(9):
            await router.send(otp(DE.format(100 + i)))
        refused = await router.send(otp(DE.format(120)))
        # What data can carry (a string, JSON) is not the override.
        forged = await router.send(
            otp(DE.format(121), metadata={"smsroute.override": "smsroute.ANOMALY_OVERRIDE"})
        )
        overridden = await router.send(
            otp(DE.format(122), metadata={"smsroute.override": ANOMALY_OVERRIDE})
        )
    assert refused.status == "failed"
    assert refused.reason is not None
    assert "may override" in refused.reason
    assert forged.status == "failed"
    assert overridden.status == "accepted"


# -- budgets -----------------------------------------------------------------------------


BUDGET = """
    guards:
      budgets:
        - {{scope: provider, name: a, limit: 0.2, per: {per}}}
"""


async def test_a_provider_at_its_cap_refuses_under_on_budget_refuse_until_the_day_ends(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    clock = ManualClock(JAN31_2300 + 3540)  # 23:59 UTC
    rec = Recorder()
    router, registry = make_router(routing(a, b, BUDGET.format(per="day")), clock, rec)
    async with router:
        # 0.08 a message to DE at provider a: 0.08, 0.16, 0.24 spent, then at the cap.
        sent = [(await router.send(otp(DE.format(i)))).status for i in range(4)]
        capped = await router.send(otp(DE.format(9)))
        spent = registry.get_sample_value("smsroute_budget_spent", {"scope": "provider:a"})
        limit = registry.get_sample_value("smsroute_budget_limit", {"scope": "provider:a"})
        clock.set(JAN31_2300 + 3600)  # 00:00 UTC, February 1st: a new day
        next_day = await router.send(otp(DE.format(10)))
    assert sent == ["accepted", "accepted", "accepted", "failed"]
    assert capped.reason is not None
    assert "guard budget" in capped.reason
    assert "provider:a" in capped.reason
    assert "on_budget: refuse" in capped.reason
    assert spent == pytest.approx(0.24)
    assert limit == 0.2
    assert next_day.status == "accepted"
    assert a.requests == 4
    assert b.requests == 0
    assert [round(e.spent, 2) for e in rec.of(BudgetSpent)] == [0.08, 0.16, 0.24, 0.08]  # type: ignore[attr-defined]


async def test_cheapest_under_cap_moves_to_the_other_provider(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    rules = """
        rules:
          - name: default
            providers: [a, b]
            on_budget: cheapest_under_cap
    """
    clock = ManualClock(JAN31_2300)
    router, _ = make_router(routing(a, b, BUDGET.format(per="hour"), rules), clock)
    async with router:
        results = [await router.send(otp(DE.format(i))) for i in range(5)]
    assert [r.provider for r in results] == ["a", "a", "a", "b", "b"]


async def test_month_budget_rolls_over_at_the_months_end(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    guards = """
        guards:
          budgets:
            - {scope: category, name: marketing, limit: 0.05, per: month}
            - {scope: tag, name: campaign-42, limit: 0.02, per: hour}
    """
    clock = ManualClock(JAN31_2300)
    router, _ = make_router(routing(a, b, guards), clock)
    sale = Message(to=US.format(1), text="Sale", category="marketing")
    async with router:
        jan = [(await router.send(sale)).status for _ in range(6)]  # 0.01 each at a
        refused = await router.send(sale)
        clock.set(JAN31_2300 + 3600)  # February
        feb = await router.send(sale)
        tagged = [
            (await router.send(Message(to=US.format(2), text="x", tags=("campaign-42",)))).status
            for _ in range(3)
        ]
    assert jan == ["accepted"] * 5 + ["failed"]
    assert refused.reason is not None
    assert "category:marketing spent 0.05 of 0.05 USD this month" in refused.reason
    assert feb.status == "accepted"
    assert tagged == ["accepted", "accepted", "failed"]
    assert a.requests == 5 + 1 + 2


# -- explain -----------------------------------------------------------------------------


async def test_explain_names_the_guard_that_would_refuse_and_its_counts(
    fakes: tuple[FakeTwilio, FakeTwilio],
) -> None:
    a, b = fakes
    guards = """
        guards:
          otp:
            countries: {allow: [DE]}
            velocity:
              - {per: number, max: 2, window: 1h}
    """
    clock = ManualClock(JAN31_2300)
    router, _ = make_router(routing(a, b, guards), clock)
    async with router:
        before = router.explain(otp(DE.format(1)))
        await router.send(otp(DE.format(1)))
        await router.send(otp(DE.format(1)))
        after = router.explain(otp(DE.format(1)))
        abroad = router.explain(otp(US.format(1)))
    assert before.refused_by is None
    assert [(g.guard, g.count, g.refuses) for g in before.guards] == [
        ("geo", None, False),
        ("velocity", 0, False),
    ]
    assert after.refused_by == "velocity"
    assert [(g.guard, g.count, g.refuses) for g in after.guards][1] == ("velocity", 2, True)
    assert abroad.refused_by == "geo"
    assert a.requests == 2
