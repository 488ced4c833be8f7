"""Strategies: how a rule's providers are ordered into a plan."""

from __future__ import annotations

import random
from collections import Counter

from smsroute.config import Match, Rule, ScoreWeights
from smsroute.selection import Option, order


def opt(
    name: str,
    price: float | None = None,
    latency: float | None = None,
    success: float | None = None,
    available: bool = True,
) -> Option:
    return Option(name, price, latency, success, "closed", available)


def rule(strategy: str, **kw: object) -> Rule:
    return Rule(name="r", match=Match(), providers=("a", "b", "c"), strategy=strategy, **kw)  # type: ignore[arg-type]


def names(options: list[Option]) -> list[str]:
    return [o.provider for o in options]


def test_priority_keeps_the_listed_order() -> None:
    got = order(rule("priority"), [opt("a"), opt("b"), opt("c")], random.Random(1))
    assert names(got) == ["a", "b", "c"]


def test_unavailable_providers_are_left_out() -> None:
    got = order(rule("priority"), [opt("a", available=False), opt("b"), opt("c")], random.Random(1))
    assert names(got) == ["b", "c"]


def test_cheapest_orders_by_price_with_unknown_prices_last() -> None:
    got = order(
        rule("cheapest"), [opt("a", None), opt("b", 0.09), opt("c", 0.03)], random.Random(1)
    )
    assert names(got) == ["c", "b", "a"]


def test_weighted_first_pick_follows_the_weights() -> None:
    r = rule("weighted", weights={"a": 70.0, "b": 30.0, "c": 0.0})
    rng = random.Random(7)
    firsts = Counter(order(r, [opt("a"), opt("b"), opt("c")], rng)[0].provider for _ in range(5000))
    assert firsts["c"] == 0
    assert 0.66 < firsts["a"] / 5000 < 0.74


def test_weighted_rest_is_by_weight() -> None:
    r = rule("weighted", weights={"a": 10.0, "b": 30.0, "c": 60.0})
    for seed in range(20):
        got = names(order(r, [opt("a"), opt("b"), opt("c")], random.Random(seed)))
        rest = got[1:]
        weights = [r.weights[n] for n in rest]
        assert weights == sorted(weights, reverse=True)


def test_fastest_spreads_among_providers_within_the_buffer() -> None:
    r = rule("fastest", latency_buffer=0.2)
    options = [opt("a", latency=0.100), opt("b", latency=0.110), opt("c", latency=0.500)]
    rng = random.Random(3)
    firsts = Counter(order(r, options, rng)[0].provider for _ in range(2000))
    assert firsts["c"] == 0
    assert firsts["a"] > 800
    assert firsts["b"] > 800


def test_fastest_puts_slow_provider_last() -> None:
    r = rule("fastest", latency_buffer=0.2)
    got = order(
        r, [opt("c", latency=0.9), opt("a", latency=0.1), opt("b", latency=0.5)], random.Random(1)
    )
    assert names(got) == ["a", "b", "c"]


def test_fastest_tries_a_provider_with_no_data_first() -> None:
    r = rule("fastest")
    got = order(r, [opt("a", latency=0.1), opt("new")], random.Random(1))
    assert got[0].provider == "new"


def test_score_weighs_price_success_and_latency() -> None:
    r = rule("score", score_weights=ScoreWeights(price=1.0, success=3.0, latency=1.0))
    options = [
        opt("cheap-flaky", price=0.01, latency=0.1, success=0.5),
        opt("dear-solid", price=0.02, latency=0.1, success=1.0),
    ]
    assert names(order(r, options, random.Random(1))) == ["dear-solid", "cheap-flaky"]
    r2 = rule("score", score_weights=ScoreWeights(price=5.0, success=1.0, latency=0.0))
    assert names(order(r2, options, random.Random(1))) == ["cheap-flaky", "dear-solid"]
