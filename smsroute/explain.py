"""What :meth:`Router.explain` tells: which rule matches a message and in what
order its providers would be tried, and why the others would be skipped.

Read-only: it plans as :class:`~smsroute.dispatch.Dispatcher` would, with
every price and health figure filled in, and sends nothing.
"""

from __future__ import annotations

import attrs

from smsroute.breaker import BreakerState
from smsroute.dispatch import Dispatcher
from smsroute.message import Encoding, Message
from smsroute.numbers import NumberType, mask
from smsroute.selection import Candidate, bests, score


@attrs.frozen(slots=True)
class RoutePlan:
    """What :meth:`Router.explain` tells: the rule, and the providers in the order tried.

    ``candidates`` lists the providers that would be tried first, in order,
    then those skipped with ``skipped`` saying why.  ``last_resort`` is true
    when every breaker is open and the soonest to reopen is tried anyway.
    """

    rule: str
    strategy: str
    candidates: tuple[Candidate, ...]
    country: str
    number_type: NumberType
    encoding: Encoding
    segments: int
    to: str
    last_resort: bool = False

    @property
    def providers(self) -> tuple[str, ...]:
        """Names of the providers that would be tried, in order."""
        return tuple(c.provider for c in self.candidates if c.skipped is None)


def explain(dispatcher: Dispatcher, message: Message) -> RoutePlan:
    """Which rule matches ``message`` and in what order ``dispatcher`` would try providers.

    No I/O and no side effects on breakers or limits; raises
    :class:`InvalidNumber` or :class:`InvalidMessage` as :meth:`send` would.
    """
    rt = dispatcher.runtime
    p = rt.prepare(message)
    ordered, skipped, last_resort = dispatcher.plan(rt, p, full=True)
    everyone = [*ordered, *skipped]
    best_price, best_latency = bests(everyone)
    now = dispatcher.clock.now()
    max_wait = rt.config.defaults.max_rate_wait
    candidates: list[Candidate] = []
    for o in everyone:
        why: str | None = None
        if o in skipped:
            if o.breaker == BreakerState.OPEN.value and o.reopen_at is not None:
                why = f"breaker open, half-opens in {max(0.0, o.reopen_at - now):.1f}s"
            else:
                why = "breaker half-open with all probes in flight"
        else:
            pause = dispatcher.state.bucket(rt.config.providers[o.provider]).paused_for()
            if pause > max_wait:
                why = f"throttled by the provider, paused for {pause:.1f}s more"
        if last_resort and o is ordered[0]:
            why = None
        candidates.append(
            Candidate(
                provider=o.provider,
                price=o.price,
                breaker=o.breaker,
                score=round(score(p.rule, o, best_price, best_latency), 4),
                skipped=why,
                latency=o.latency,
                success_rate=o.success_rate,
                delivery_ratio=o.delivery_ratio,
            )
        )
    return RoutePlan(
        rule=p.rule.name,
        strategy=p.rule.strategy,
        candidates=tuple(sorted(candidates, key=lambda c: c.skipped is not None)),
        country=p.destination.country,
        number_type=p.destination.number_type,
        encoding=p.info.encoding,
        segments=p.info.segments,
        to=mask(p.destination.e164),
        last_resort=last_resort,
    )
