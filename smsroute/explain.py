"""What :meth:`Router.explain` tells: which rule matches a message and in what
order its providers would be tried, and why the others would be skipped.

Read-only: it plans as :class:`~smsroute.dispatch.Dispatcher` would, with
every price and health figure filled in, and sends nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs

from smsroute.breaker import BreakerState
from smsroute.clock import wall_clock
from smsroute.dispatch import Dispatcher
from smsroute.guards import GuardStatus
from smsroute.message import Culprit, Encoding, Message
from smsroute.numbers import NumberType, mask
from smsroute.selection import Candidate, bests, score


@attrs.frozen(slots=True)
class RoutePlan:
    """What :meth:`Router.explain` tells: the rule, and the providers in the order tried.

    ``candidates`` lists the providers that would be tried first, in order,
    then those skipped with ``skipped`` saying why.  ``last_resort`` is true
    when every breaker is open and the soonest to reopen is tried anyway.

    ``culprits`` names the characters that make the text UCS-2, with their
    positions (not in the repr); ``transliterated`` says ``encoding: transliterate``
    changed the text (``encoding`` and ``segments`` are then those of what is sent).
    ``quiet_until`` is set when the message is inside its category's quiet hours
    now: the first moment (UTC) it could go; ``quiet_never`` when there is no such
    hour in every time zone of the number.
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
    culprits: tuple[Culprit, ...] = attrs.field(default=(), repr=False)
    transliterated: bool = False
    quiet_until: datetime.datetime | None = None
    quiet_never: bool = False
    #: Each fraud and spend guard of this message, its count now, and whether it refuses.
    guards: tuple[GuardStatus, ...] = ()
    #: The guard that would refuse the message (``geo``, ``velocity``, ``anomaly``,
    #: ``budget``), or None.
    refused_by: str | None = None
    #: The number opted out and the category is one of ``opt_out_categories``: send
    #: refuses it (``reason="opted_out"``) before anything else is checked.
    opted_out: bool = False

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
    optouts = dispatcher.optouts
    opted_out = bool(
        optouts
        and message.category in rt.config.defaults.opt_out_categories
        and p.destination.e164 in optouts
    )
    ordered, skipped, last_resort = dispatcher.plan(rt, p, full=True)
    opens = dispatcher.quiet_opens(rt, message, p)
    quiet_never = opens == float("inf")
    quiet_until = (
        None
        if opens is None or quiet_never
        else datetime.datetime.fromtimestamp(opens, datetime.UTC)
    )
    planned: Sequence[str] = [o.provider for o in ordered]
    guards: tuple[GuardStatus, ...] = ()
    if rt.guards:
        guards, planned = rt.guards.explain_plan(
            dispatcher.state.guard_counts(),
            message,
            p.destination.e164,
            p.destination.country,
            p.rule,
            wall_clock(dispatcher.clock).now(),
            planned,
        )
    position = {name: i for i, name in enumerate(planned)}
    everyone = [*ordered, *skipped]
    best_price, best_latency = bests(everyone)
    now = dispatcher.clock.now()
    # What the first attempt may wait for a token (send: max_rate_wait, cut to the deadline).
    max_wait = min(rt.config.defaults.max_rate_wait, p.rule.deadline or rt.config.defaults.deadline)
    candidates: list[Candidate] = []
    # Why each provider is not tried, in the order send finds it: the plan (breakers), the
    # budgets (guards), the senders (before any provider is called), then at its turn the
    # provider's bucket (a Retry-After pause of any length, or no token within max_wait).
    for o in everyone:
        why: str | None = None
        pick = rt.senders.choose(
            p.rule, rt.config.providers[o.provider], p.destination, message.sender, peek=True
        )
        if o in skipped:
            if o.breaker == BreakerState.OPEN.value and o.reopen_at is not None:
                why = f"breaker open, half-opens in {max(0.0, o.reopen_at - now):.1f}s"
            else:
                why = "breaker half-open with all probes in flight"
        elif o.provider not in position:
            why = "at its budget cap: dropped from the plan (guards)"
        elif pick.refused is not None:
            why = f"no usable sender: {pick.refused}"
        else:
            bucket = dispatcher.state.bucket(rt.config.providers[o.provider])
            pause = bucket.paused_for()
            wait = bucket.wait_time()
            if pause > 0.0:
                why = f"throttled by the provider, paused for {pause:.1f}s more"
            elif wait > max_wait:
                why = f"throttled by its rate limit: no token for {wait:.1f}s (max wait {max_wait:g}s)"
        links = rt.providers[o.provider].links()
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
                sender=pick.sender,
                sender_why=pick.why if pick.note is None else f"{pick.why}; {pick.note}",
                links=links.summary() if links is not None else None,
            )
        )
    last = len(position)
    candidates.sort(key=lambda c: (c.skipped is not None, position.get(c.provider, last)))
    return RoutePlan(
        rule=p.rule.name,
        strategy=p.rule.strategy,
        candidates=tuple(candidates),
        country=p.destination.country,
        number_type=p.destination.number_type,
        encoding=p.info.encoding,
        segments=p.info.segments,
        to=mask(p.destination.e164),
        last_resort=last_resort,
        culprits=p.info.culprits,
        transliterated=p.text is not message.text,
        quiet_until=quiet_until,
        quiet_never=quiet_never,
        guards=guards,
        refused_by=next((g.guard for g in guards if g.refuses), None),
        opted_out=opted_out,
    )
