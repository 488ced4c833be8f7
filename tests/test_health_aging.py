"""Health that ages (issue 12): figures carry the time of their last update, count
less as they age, and a provider whose figures are stale gets a small, bounded
share of traffic to refresh them, so a provider that recovered while it got no
traffic wins its share back.  All on an injected clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from conftest import make_config, twilio_block

from smsroute import ManualClock, Message, Router
from smsroute.config import Match, Rule, ScoreWeights
from smsroute.health import Health
from smsroute.selection import EXPLORE_SHARE, Option, observe, order
from smsroute.testing import FakeTwilio

DE = Message(to="+4915123456789", text="Your code is 123456", category="otp")


def health(clock: ManualClock, half_life: float = 60.0) -> Health:
    return Health(clock=clock, half_life=half_life)


def read(h: Health, now: float) -> Option:
    option = Option("p", None, None, None, "closed", True)
    observe(option, h, h, now)
    return option


# -- one provider's figures -------------------------------------------------------------------


def test_figures_count_half_as_much_after_a_half_life() -> None:
    clock = ManualClock()
    h = health(clock)
    assert h.answers_weight(clock.now()) == 1.0  # no data: nothing to age
    for _ in range(10):
        h.record(False, 0.5)
    assert h.answers_weight(clock.now()) == 1.0
    assert read(h, clock.now()).success_rate == 0.0
    clock.advance(60)
    assert h.answers_weight(clock.now()) == pytest.approx(0.5)
    seen = read(h, clock.now())
    assert seen.success_rate == pytest.approx(0.5)  # halfway back to the benefit of the doubt
    assert seen.stale
    clock.advance(60 * 10)
    assert read(h, clock.now()).success_rate == pytest.approx(1.0, abs=0.001)


def test_the_next_answer_agrees_with_the_aged_reading() -> None:
    clock = ManualClock()
    h = health(clock)
    for _ in range(100):
        h.record(False, 2.0)
    clock.advance(120)  # two half-lives: a quarter of the old failures still count
    assert read(h, clock.now()).success_rate == pytest.approx(0.75)
    h.record(True, 0.1)
    assert h.success_rate == 0.75  # 75 of the old failures forgiven: not back to ~1%
    # The old latency counted a quarter: the new answer carries three quarters.
    assert h.latency == pytest.approx(0.25 * 2.0 + 0.75 * 0.1)
    assert not read(h, clock.now()).stale


def test_a_busy_provider_is_never_aged() -> None:
    clock = ManualClock()
    h = health(clock)
    for i in range(300):
        clock.advance(0.5)
        h.record(i % 4 != 0, 0.1)
    assert h.success_rate == 0.75
    assert h.answers_weight(clock.now()) == 1.0
    assert h.latency == pytest.approx(0.1)


def test_delivery_figures_age_on_their_own_clock() -> None:
    clock = ManualClock()
    h = health(clock)
    for _ in range(20):
        h.record_delivery(False, None)
    clock.advance(60)
    h.record(True, 0.1)  # answers do not refresh the delivery figures
    seen = read(h, clock.now())
    assert seen.delivery_ratio == pytest.approx(0.5)
    assert seen.stale


# -- selection: the exploration share ------------------------------------------------------------


def rule(strategy: str) -> Rule:
    weights = ScoreWeights(price=1.5, success=1.0, latency=1.0)
    return Rule(
        name="r",
        match=Match(),
        providers=("a", "b"),
        strategy=strategy,  # type: ignore[arg-type]
        score_weights=weights,
    )


def test_stale_provider_is_put_first_on_a_bounded_share_of_picks() -> None:
    fresh = Option("fresh", None, 0.1, 1.0, "closed", True)
    stale = Option("stale", None, 2.0, 1.0, "closed", True, stale=True)
    for strategy in ("fastest", "score"):
        rng = random.Random(5)
        firsts = Counter(
            order(rule(strategy), [stale, fresh], rng)[0].provider for _ in range(20000)
        )
        assert 0.03 < firsts["stale"] / 20000 <= EXPLORE_SHARE + 0.005
        # Deterministic given the rng.
        again = random.Random(5)
        assert [order(rule(strategy), [stale, fresh], again)[0].provider for _ in range(500)] == [
            order(rule(strategy), [stale, fresh], r)[0].provider
            for r in [random.Random(5)]
            for _ in range(500)
        ]


def simulate(strategy: str, picks: int) -> list[str]:
    """Two providers, one message a second; ``a`` is slow for the first 100 s,
    then as fast as ``b``; ``a`` is the cheaper (what ``score`` weighs too).
    Which provider each message went to."""
    clock = ManualClock()
    health_of = {"a": health(clock), "b": health(clock)}
    rng = random.Random(11)
    r = rule(strategy)
    chosen = []
    for i in range(picks):
        clock.advance(1.0)
        options = []
        for name in ("a", "b"):
            option = Option(name, 0.01 if name == "a" else 0.02, None, None, "closed", True)
            observe(option, health_of[name], health_of[name], clock.now())
            options.append(option)
        first = order(r, options, rng)[0].provider
        slow = first == "a" and i < 100
        health_of[first].record(True, 1.0 if slow else 0.1)
        chosen.append(first)
    return chosen


@pytest.mark.parametrize("strategy", ["fastest", "score"])
def test_a_provider_that_recovered_regains_its_share(strategy: str) -> None:
    chosen = simulate(strategy, 3000)
    assert chosen[20:100].count("a") <= 4  # slow: it lost its traffic (bar exploring picks)
    assert chosen[-500:].count("a") > 150  # recovered: measured again, back in the running


# -- the router, over sockets --------------------------------------------------------------------


async def test_router_gives_a_recovered_provider_its_traffic_back(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """``score`` with a cheaper ``a``: slow, it loses to ``b``; once fast again and
    measured by an exploring pick, it wins the traffic back."""
    config = make_config(f"""
state: {{health_half_life: 60s}}
providers:
{twilio_block("a", twilio_a, prices="{default: 0.01}")}
{twilio_block("b", twilio_b, prices="{default: 0.02}")}
rules:
  - name: default
    providers: [a, b]
    strategy: score
    score_weights: {{price: 1.5, success: 1, latency: 1}}
""")
    clock = ManualClock()
    # Latencies well above loopback jitter, so that score's latency ratios are stable:
    # b wins while a's measured latency is over 4x its own, so a 25x gap leaves room for
    # b's measurements to be slowed several-fold by a busy machine (CI's two cores).
    twilio_a.latency(0.25)
    twilio_b.latency(0.01)
    async with Router(config, clock=clock, rng=random.Random(3), metrics=False) as router:
        slow = []
        for _ in range(50):
            clock.advance(1)
            slow.append((await router.send(DE)).provider)
        # a is cheaper and is tried first; b, never tried, gets exploring picks,
        # is measured faster, and wins.
        assert slow[-20:] == ["b"] * 20
        twilio_a.heal()
        twilio_a.latency(0.01)
        picks = []
        for _ in range(150):
            clock.advance(10)
            picks.append((await router.send(DE)).provider)
    # a was stale after a minute without traffic: explored, measured fast, and
    # back in first place; b keeps only its exploring picks.
    assert picks[-50:].count("a") >= 40
