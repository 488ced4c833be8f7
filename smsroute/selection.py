"""Strategies that order a rule's providers into a plan.

    priority   as listed
    weighted   first pick at random by weight, the rest by weight
    cheapest   price per segment to the destination x segments; unknown prices last
    fastest    lowest recent latency (plus time to deliver, stretched by the share
               of receipts that said undelivered), picked at random among those
               within ``latency_buffer`` of the best (so the fastest is not flooded)
    score      weighted sum of price, success rate (times delivery ratio) and
               speed, each scaled to [0, 1]

Providers whose breaker refuses calls are skipped; when every provider is
refused, the one that reopens soonest is kept as a last resort.

Health ages (see :mod:`smsroute.health`): :func:`observe` reads a provider's
figures as of now, and under ``fastest`` and ``score`` a provider whose figures
are stale (a half-life old: it has not been picked lately) is put first on
:data:`EXPLORE_SHARE` of picks, drawn from the same rng, so a provider that
recovered while it got no traffic is measured again and can win its share back.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from smsroute.config import Rule
from smsroute.health import Health

#: Largest share of picks that put a stale provider first under fastest and score.
EXPLORE_SHARE = 0.05


@attrs.frozen(slots=True)
class Candidate:
    """One provider in a plan, as :meth:`Router.explain` shows it.

    ``price`` is what this message would cost there (price per segment x
    segments), or None when unknown.  ``score`` is the composite score in
    [0, 1] (higher is better) from the rule's ``score_weights``.  ``skipped``
    says why the provider will not be tried, or is None.  ``sender`` is what it
    would send from (None: the account's default) and ``sender_why`` why: a
    ``from`` map entry, a sticky pool member, a fallback and its reason...
    ``links`` is the state of the connections of a provider that keeps some
    (``type: smpp``: ``"2/2 binds up, window 0/20"``), None for HTTP providers.
    """

    provider: str
    price: float | None
    breaker: str
    score: float
    skipped: str | None = None
    latency: float | None = None
    success_rate: float | None = None
    delivery_ratio: float | None = None
    sender: str | None = None
    sender_why: str | None = None
    links: str | None = None


@attrs.define(slots=True)  # built per provider per message: mutable is cheaper to build
class Option:
    """What a strategy knows of one provider."""

    provider: str
    price: float | None
    latency: float | None
    success_rate: float | None
    breaker: str
    available: bool
    reopen_at: float | None = None
    delivery_ratio: float | None = None
    time_to_deliver: float | None = None
    #: Its health figures are a half-life old (see :data:`EXPLORE_SHARE`).
    stale: bool = False

    @property
    def speed(self) -> float | None:
        """Seconds to deliver as ``fastest`` sees it: API latency plus time to
        deliver, stretched by undelivered receipts (none delivered: 100x)."""
        if self.latency is None and self.time_to_deliver is None:
            return None
        seconds = (self.latency or 0.0) + (self.time_to_deliver or 0.0)
        ratio = 1.0 if self.delivery_ratio is None else self.delivery_ratio
        return seconds / max(ratio, 0.01)


def observe(option: Option, health: Health, delivery: Health, now: float) -> None:
    """Fill ``option``'s latency and success rate from ``health`` and its delivery
    figures from ``delivery`` (towards the message's country), as of ``now``:
    rates aged toward 100% by their weight, ``stale`` set when a half-life old
    or when the provider never answered."""
    weight = health.answers_weight(now)
    option.latency = health.latency
    rate = health.success_rate
    if rate is None:  # never answered: as stale as it gets (score would never try it)
        option.success_rate = None
        option.stale = True
    elif weight == 1.0:
        option.success_rate = rate
    else:
        option.success_rate = 1.0 - (1.0 - rate) * weight
        option.stale = weight <= 0.5
    weight = delivery.deliveries_weight(now)
    option.time_to_deliver = delivery.time_to_deliver
    ratio = delivery.delivery_ratio
    if weight == 1.0 or ratio is None:
        option.delivery_ratio = ratio
    else:
        option.delivery_ratio = 1.0 - (1.0 - ratio) * weight
        if weight <= 0.5:
            option.stale = True


def score(
    rule: Rule, option: Option, best_price: float | None, best_latency: float | None
) -> float:
    """Composite score in [0, 1] of ``option`` against the best price and latency on offer."""
    w = rule.score_weights
    total = w.price + w.success + w.latency
    if total <= 0:
        return 0.0
    if option.price is None:
        price_part = 0.0
    elif not option.price or not best_price:
        price_part = 1.0 if not option.price else 0.0
    else:
        price_part = best_price / option.price
    success_part = 1.0 if option.success_rate is None else option.success_rate
    if option.delivery_ratio is not None:
        success_part *= option.delivery_ratio
    speed = option.speed
    if speed is None or not best_latency:
        latency_part = 1.0
    else:
        latency_part = min(1.0, best_latency / speed) if speed else 1.0
    return (w.price * price_part + w.success * success_part + w.latency * latency_part) / total


def order(rule: Rule, options: Sequence[Option], rng: random.Random) -> list[Option]:
    """The available options in the order ``rule.strategy`` tries them."""
    ready = [o for o in options if o.available]
    if len(ready) <= 1:
        return ready
    strategy = rule.strategy
    if strategy == "priority":
        return ready
    if strategy == "cheapest":
        if len(ready) == 2:  # the common pair: one comparison, no key function or tuples
            a, b = ready
            if b.price is not None and (a.price is None or b.price < a.price):
                return [b, a]
            return ready
        return sorted(ready, key=lambda o: (o.price is None, o.price or 0.0))
    if strategy == "weighted":
        return _weighted(rule, ready, rng)
    if strategy == "fastest":
        return _explore(_fastest(rule, ready, rng), rng)
    best_price, best_latency = bests(ready)
    return _explore(sorted(ready, key=lambda o: -score(rule, o, best_price, best_latency)), rng)


def _explore(ordered: list[Option], rng: random.Random) -> list[Option]:
    """On :data:`EXPLORE_SHARE` of picks, put a stale provider (not already first) first."""
    stale = 0
    for o in ordered:
        if o.stale:
            stale += 1
    if not stale or (stale == 1 and ordered[0].stale) or rng.random() >= EXPLORE_SHARE:
        return ordered
    candidates = [o for o in ordered[1:] if o.stale]
    first = candidates[rng.randrange(len(candidates))] if len(candidates) > 1 else candidates[0]
    ordered.remove(first)
    ordered.insert(0, first)
    return ordered


def bests(options: Sequence[Option]) -> tuple[float | None, float | None]:
    """The lowest known price and speed among ``options`` (what scores are scaled by)."""
    prices = [o.price for o in options if o.price is not None]
    latencies = [s for o in options if (s := o.speed) is not None]
    return (min(prices) if prices else None, min(latencies) if latencies else None)


def _weighted(rule: Rule, ready: list[Option], rng: random.Random) -> list[Option]:
    weights = [rule.weights.get(o.provider, 0.0) for o in ready]
    total = sum(weights)
    if total <= 0:
        return ready
    point = rng.random() * total
    first = len(ready) - 1
    for i, w in enumerate(weights):
        point -= w
        if point < 0 and w > 0:
            first = i
            break
    rest = sorted(
        (o for i, o in enumerate(ready) if i != first),
        key=lambda o: -rule.weights.get(o.provider, 0.0),
    )
    return [ready[first], *rest]


def _fastest(rule: Rule, ready: list[Option], rng: random.Random) -> list[Option]:
    # No data yet reads as fastest: a new or recovered provider gets traffic to measure.
    def latency(o: Option) -> float:
        speed = o.speed
        return 0.0 if speed is None else speed

    by_latency = sorted(ready, key=latency)
    limit = latency(by_latency[0]) * (1.0 + rule.latency_buffer)
    near = [o for o in by_latency if latency(o) <= limit]
    first = near[rng.randrange(len(near))] if len(near) > 1 else by_latency[0]
    return [first, *(o for o in by_latency if o is not first)]
