"""Fraud and spend guards: whether a message may go, decided before any provider is called.

:class:`Guards` is built by the :class:`~smsroute.runtime.Runtime` from the config's
``guards`` section and the rules' ``guards`` keys (:mod:`smsroute.guardconfig`), and
asked once per message by :meth:`Dispatcher.send`, after the opt-out check and before
the plan:

* **geo**: a country outside the category's (or rule's) ``allow`` list, or in its
  ``deny`` list, is refused;
* **velocity**: at most ``max`` messages per sliding ``window`` to one number, one
  destination prefix or one country;
* **anomaly**: a country whose recent rate exceeds ``factor`` times its baseline is
  refused (or needs the caller's override: :data:`ANOMALY_OVERRIDE`) until it falls
  back; the trip and the release are events, metrics and log lines;
* **budget**: a category, country or tag budget at its cap refuses; a provider at its
  cap is dropped from the plan, and the rule's ``on_budget`` says whether the message
  is then refused (``refuse``, the default, when the provider the rule would use first
  is at its cap) or goes to the cheapest provider still under its cap
  (``cheapest_under_cap``).  Spend is the price table's cost (per segment x segments) of
  each accepted message, counted per calendar hour, day or month (UTC).

The counts live in the state backend (:mod:`smsroute.guardcounts`): this process's
memory, or Redis for every replica.  A refusal is a failed :class:`SendResult` whose
``reason`` names the guard and its limit, never a number or its digits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs

from smsroute.config import Config, Rule
from smsroute.guardconfig import Budget, GuardSet, Velocity, duration_text
from smsroute.guardcounts import MemoryGuardCounts
from smsroute.guardquery import (
    AT_CAP,
    SPEND_KEPT,
    AnomalyQuery,
    GuardAnswer,
    GuardCounts,
    GuardQuery,
    Lane,
    SharedGuardCounts,
    SpendKey,
)
from smsroute.instrument.events import AnomalyTransition, BudgetSpent, Event
from smsroute.message import Message

log = logging.getLogger("smsroute.guards")

#: The ``Message.metadata`` key of the caller's override of the anomaly guard.
OVERRIDE_KEY: Final = "smsroute.override"


class GuardOverride:
    """The type of :data:`ANOMALY_OVERRIDE` (one instance: compared by identity)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "smsroute.ANOMALY_OVERRIDE"


#: Put under ``metadata["smsroute.override"]`` to send through a tripped anomaly guard
#: whose action is ``require_override``.  It is an object, not a value: nothing read from
#: JSON, a form, a queue or the outbox can equal it, so only the caller's own code can
#: set it (and the outbox refuses a message that carries it).
ANOMALY_OVERRIDE: Final = GuardOverride()

Emit = Callable[[Event], None]


@attrs.frozen(slots=True)
class Refusal:
    """Why the guards refused a message: ``guard`` is ``geo``, ``velocity``, ``anomaly``
    or ``budget``; ``reason`` is the sentence :attr:`SendResult.reason` carries."""

    guard: str
    reason: str


#: No provider at its cap.
NOTHING: Final[frozenset[str]] = frozenset()
#: What :meth:`Guards.check_now` answers (this very object) when a message passed every
#: guard with no provider at its cap.
PASSED: Final[tuple[Refusal | None, frozenset[str]]] = (None, NOTHING)


@attrs.frozen(slots=True)
class GuardStatus:
    """One guard as :meth:`Router.explain` shows it: what it allows, the count now,
    and whether it would refuse this message."""

    guard: str
    limit: str
    count: float | None = None
    refuses: bool = False


class _Plan:
    """What checking a message of one category under one rule needs, worked out once."""

    __slots__ = (
        "always_blocks",
        "anomaly",
        "anomaly_queries",
        "anomaly_scope",
        "anomaly_set",
        "caps_possible",
        "geo",
        "limits",
        "providers",
        "sets",
        "velocity",
    )

    def __init__(self, guards: Guards, category: str, rule: Rule) -> None:
        self.sets = guards.sets(category, rule)
        self.geo = any(gs.allow is not None or gs.deny for _, gs in self.sets)
        #: (key prefix, 0 number / 1 prefix / 2 country, prefix end, window, max).
        self.velocity: list[tuple[str, int, int, float, int]] = []
        self.limits: list[Velocity] = []
        self.anomaly_set: tuple[str, GuardSet] | None = None
        for scope, gs in self.sets:
            for v in gs.velocity:
                kind = ("number", "prefix", "country").index(v.per)
                prefix = f"v|{scope}|{v.per}{v.digits}|{v.window:g}|"
                self.velocity.append((prefix, kind, 1 + v.digits, v.window, v.max))
                self.limits.append(v)
            if gs.anomaly is not None:
                self.anomaly_set = (scope, gs)  # the rule's, when both have one
        self.anomaly = self.anomaly_set[1].anomaly if self.anomaly_set else None
        self.anomaly_scope = self.anomaly_set[0] if self.anomaly_set else ""
        self.always_blocks = self.anomaly is not None and self.anomaly.action == "refuse"
        self.anomaly_queries: dict[tuple[str, bool], AnomalyQuery] = {}
        self.caps_possible = bool(guards.cap_budgets)
        self.providers = guards.provider_budgets(rule)

    def anomaly_for(self, message: Message, country: str) -> AnomalyQuery | None:
        """The anomaly query of ``message`` to ``country`` (blocking unless the caller
        overrides it and the action allows that), or None without an anomaly guard."""
        if self.anomaly is None:
            return None
        blocks = self.always_blocks or message.metadata.get(OVERRIDE_KEY) is not ANOMALY_OVERRIDE
        return self.anomaly_queries.get((country, blocks)) or self.anomaly_query(country, blocks)

    def anomaly_query(self, country: str, blocks: bool) -> AnomalyQuery:
        a = self.anomaly
        assert a is not None
        scope = self.anomaly_scope
        query = self.anomaly_queries[(country, blocks)] = AnomalyQuery(
            f"a|{scope}|{a.window:g}|{a.baseline:g}|{country}",
            f"a|{scope}|since",
            a.window,
            a.baseline,
            a.factor,
            a.min_count,
            blocks,
        )
        return query


class Guards:
    """The guards of one runtime.  Built only when some guard is configured."""

    def __init__(self, config: Config) -> None:
        settings = config.guards
        self.categories: dict[str, GuardSet] = dict(settings.categories) if settings else {}
        budgets = settings.budgets if settings else ()
        self.budgets: tuple[Budget, ...] = budgets
        self.currency = config.defaults.currency
        self._providers = {b.name: b for b in budgets if b.scope == "provider"}
        self._category = {b.name: b for b in budgets if b.scope == "category"}
        self._country = {b.name: b for b in budgets if b.scope == "country"}
        self._tag = {b.name: b for b in budgets if b.scope == "tag"}
        #: id of a budget (kept alive by the config) -> its spend key, cached per period.
        self._keys: dict[int, SpendKey] = {id(b): SpendKey(b) for b in budgets}
        #: (category, rule name) -> what the check of such a message needs, worked out once.
        self._plans: dict[tuple[str, str], _Plan] = {}
        #: (rule name, category, country) -> the fast path's query of such messages.
        self._lanes: dict[tuple[str, str, str], Lane] = {}
        #: (category, country, provider) -> the spend keys of the budgets (not of tags)
        #: an accepted message of the category to the country at the provider falls under.
        self._spending: dict[tuple[str, str, str], tuple[SpendKey, ...]] = {}
        self._prices = {name: p.prices for name, p in config.providers.items()}
        self._currencies = {name: p.prices.currency for name, p in config.providers.items()}

    @staticmethod
    def needed(config: Config) -> bool:
        """Whether ``config`` configures any guard (else the runtime has none)."""
        settings = config.guards
        if settings is not None and (settings.categories or settings.budgets):
            return True
        return any(rule.guards is not None and not rule.guards.empty for rule in config.rules)

    # -- the query -----------------------------------------------------------------------

    def sets(self, category: str, rule: Rule) -> list[tuple[str, GuardSet]]:
        """(scope, guard set) of a category and of a rule that apply to a message."""
        out = []
        cat = self.categories.get(category)
        if cat is not None:
            out.append((f"c:{category}", cat))
        if rule.guards is not None and not rule.guards.empty:
            out.append((f"r:{rule.name}", rule.guards))
        return out

    def _geo(self, sets: list[tuple[str, GuardSet]], category: str, country: str) -> str | None:
        for scope, gs in sets:
            where = f"category '{category}'" if scope[0] == "c" else f"rule '{scope[2:]}'"
            if gs.allow is not None and country not in gs.allow:
                return f"{country} is not among the countries allowed for {where}"
            if country in gs.deny:
                return f"{country} is among the countries denied for {where}"
        return None

    def _plan(self, category: str, rule: Rule) -> _Plan:
        plan = self._plans.get((category, rule.name))
        if plan is None:
            plan = self._plans[(category, rule.name)] = _Plan(self, category, rule)
        return plan

    def _key(self, budget: Budget, now: float) -> tuple[str, float]:
        """(the spend key of ``budget``'s current period, seconds to keep it)."""
        sk = self._keys[id(budget)]
        return sk.at(now), sk.ttl(now)

    def _caps(self, message: Message, country: str) -> list[Budget]:
        caps = []
        b = self._category.get(message.category)
        if b is not None:
            caps.append(b)
        b = self._country.get(country)
        if b is not None:
            caps.append(b)
        if self._tag:
            for tag in message.tags:
                b = self._tag.get(tag)
                if b is not None:
                    caps.append(b)
        return caps

    def _query(
        self,
        plan: _Plan,
        message: Message,
        e164: str,
        country: str,
        member: str,
        now: float,
        caps: list[Budget],
        providers: list[Budget],
    ) -> GuardQuery:
        """The query of one message."""
        anomaly = plan.anomaly_for(message, country)
        velocity = [
            (key, e164 if kind == 0 else e164[1:digits] if kind == 1 else country, window, most)
            for key, kind, digits, window, most in plan.velocity
        ]
        return GuardQuery(
            now,
            member,
            [(self._key(b, now)[0], b.limit * AT_CAP) for b in caps],
            [self._key(b, now)[0] for b in providers],
            anomaly,
            velocity,
        )

    def _lane(self, category: str, rule: Rule, country: str) -> Lane:
        """The fast path's query of messages of ``category`` under ``rule`` to ``country``
        (budgets of their category and country, not of tags: those take the general path)."""
        plan = self._plan(category, rule)
        why = self._geo(plan.sets, category, country) if plan.geo else None
        caps = [b for b in (self._category.get(category), self._country.get(country)) if b]
        anomaly = None
        if plan.anomaly is not None:
            anomaly = plan.anomaly_queries.get((country, True)) or plan.anomaly_query(country, True)
        lane = self._lanes[(rule.name, category, country)] = Lane(
            country,
            None if why is None else f"refused by guard geo: {why}",
            tuple(self._keys[id(b)] for b in [*caps, *plan.providers]),
            len(caps),
            anomaly,
            plan.velocity,
        )
        lane.overridable = plan.anomaly is not None and not plan.always_blocks
        return lane

    @property
    def cap_budgets(self) -> bool:
        """Whether any category, country or tag budget exists."""
        return bool(self._category or self._country or self._tag)

    def provider_budgets(self, rule: Rule) -> list[Budget]:
        """The budgets of the providers of ``rule``."""
        if not self._providers:
            return []
        return [b for name in rule.providers if (b := self._providers.get(name)) is not None]

    # -- the check -----------------------------------------------------------------------

    def check_now(
        self,
        counts: GuardCounts,
        message: Message,
        e164: str,
        country: str,
        rule: Rule,
        member: str,
        now: float,
        emit: Emit | None,
    ) -> tuple[Refusal | None, frozenset[str]] | Lane:
        """:meth:`check` without waiting, when the counts are in this process's memory;
        the message's lane when they are shared and it counts there (then :meth:`ask`).

        A message that passes, with no provider at its cap and no anomaly trip or
        release, costs lookups and arithmetic (:meth:`MemoryGuardCounts.fast`); any other
        takes the general path, with the same counts."""
        category = message.category
        lane = self._lanes.get((rule.name, category, country))
        if lane is None:
            lane = self._lane(category, rule, country)
        if lane.geo is not None:
            return Refusal("geo", lane.geo), NOTHING
        local = lane.counts
        if local is not counts:  # the lane's first message in these counts, or Redis
            if not isinstance(counts, MemoryGuardCounts):  # shared: ask() unless idle
                if (
                    lane.budgets
                    or lane.anomaly is not None
                    or lane.velocity
                    or (self._tag and not self._tag.keys().isdisjoint(message.tags))
                ):
                    return lane
                return PASSED
            local = counts
        assert local is not None
        if (not self._tag or self._tag.keys().isdisjoint(message.tags)) and local.fast(
            lane, e164, now
        ):
            if local.recorder is not None:  # guard_checks: local, counted in Redis too
                local.recorder.record(lane, e164, member, now, True)
            return PASSED
        plan = self._plan(category, rule)
        caps = self._caps(message, country) if plan.caps_possible else []
        query = self._query(plan, message, e164, country, member, now, caps, plan.providers)
        answer = local.evaluate(query, True)
        return self._decide(counts, query.anomaly, answer, plan, caps, category, country, emit)

    async def check(
        self,
        counts: GuardCounts,
        message: Message,
        e164: str,
        country: str,
        rule: Rule,
        member: str,
        now: float,
        emit: Emit | None,
    ) -> tuple[Refusal | None, frozenset[str]]:
        """(the refusal or None, the providers of the rule at their budget cap)."""
        category = message.category
        plan = self._plan(category, rule)
        if plan.geo:
            why = self._geo(plan.sets, category, country)
            if why is not None:
                return Refusal("geo", f"refused by guard geo: {why}"), NOTHING
        caps = self._caps(message, country) if plan.caps_possible else []
        providers = plan.providers
        if not caps and not providers and not plan.velocity and plan.anomaly is None:
            return None, NOTHING
        query = self._query(plan, message, e164, country, member, now, caps, providers)
        answer = await counts.check(query)
        return self._decide(counts, query.anomaly, answer, plan, caps, category, country, emit)

    def ask(
        self,
        counts: SharedGuardCounts,
        lane: Lane,
        message: Message,
        e164: str,
        rule: Rule,
        member: str,
        now: float,
    ) -> Awaitable[GuardAnswer]:
        """After :meth:`check_now` gave the message's ``lane`` (the counts are shared, in
        Redis): the check's answer, to come with the next batch; then :meth:`answered`.
        A message of its lane asks without a query; one with a tag budget or the
        caller's override of the anomaly guard sends its own."""
        if (self._tag and not self._tag.keys().isdisjoint(message.tags)) or (
            lane.overridable and message.metadata.get(OVERRIDE_KEY) is ANOMALY_OVERRIDE
        ):
            plan = self._plan(message.category, rule)
            country = lane.country
            caps = self._caps(message, country) if plan.caps_possible else []
            query = self._query(plan, message, e164, country, member, now, caps, plan.providers)
            return counts.check(query)
        return counts.ask(lane, e164, member, now)

    def give_back(
        self,
        counts: GuardCounts,
        message: Message,
        e164: str,
        country: str,
        rule: Rule,
        member: str,
        now: float,
    ) -> None:
        """The send of a message the guards passed at ``now`` was cancelled before any
        provider was called: it leaves the velocity windows (a message never sent must
        not count towards a limit)."""
        lane = self._lanes.get((rule.name, message.category, country))
        if lane is not None and lane.velocity:
            counts.give_back(lane, e164, member, now)

    def answered(
        self,
        counts: GuardCounts,
        message: Message,
        country: str,
        rule: Rule,
        answer: GuardAnswer,
        emit: Emit | None,
    ) -> tuple[Refusal | None, frozenset[str]]:
        """What the ``answer`` to :meth:`ask` means (as :meth:`check` says it)."""
        over = answer.over  # a lane's plain pass: its providers at their cap worked out
        if over is not None and answer.refused is None and not counts.tripped:
            return (None, over) if over else PASSED
        category = message.category
        plan = self._plan(category, rule)
        a = plan.anomaly_for(message, country)
        if (
            answer.refused is None
            and not answer.tripped
            and (a is None or not counts.tripped.get(a.key, False))
        ):
            return None, self._over(answer, plan)
        caps = self._caps(message, country) if plan.caps_possible else []
        return self._decide(counts, a, answer, plan, caps, category, country, emit)

    @staticmethod
    def _over(answer: GuardAnswer, plan: _Plan) -> frozenset[str]:
        """The providers at their cap by ``answer``'s spends (worked out once per answer)."""
        over = answer.over
        if over is None:
            over = answer.over = frozenset(
                b.name
                for b, spent in zip(plan.providers, answer.spends, strict=True)
                if spent >= b.limit * AT_CAP
            )
        return over

    def _decide(
        self,
        counts: GuardCounts,
        anomaly: AnomalyQuery | None,
        answer: GuardAnswer,
        plan: _Plan,
        caps: list[Budget],
        category: str,
        country: str,
        emit: Emit | None,
    ) -> tuple[Refusal | None, frozenset[str]]:
        """What the counts' ``answer`` means: the refusal, or the providers at their cap."""
        anomaly_set = plan.anomaly_set
        if anomaly is not None and answer.refused != "budget" and anomaly_set is not None:
            self._transition(counts, anomaly, answer, category, country, emit)
        if answer.refused is not None:
            refusal = self._refusal(answer, caps, plan.limits, anomaly_set, category, country)
            return refusal, NOTHING
        return None, self._over(answer, plan)

    def _refusal(
        self,
        answer: GuardAnswer,
        caps: list[Budget],
        limits: list[Velocity],
        anomaly_set: tuple[str, GuardSet] | None,
        category: str,
        country: str,
    ) -> Refusal:
        if answer.refused == "budget":
            b = caps[answer.index]
            return Refusal(
                "budget", f"refused by guard budget: {self._spent_text(b, answer.count)}"
            )
        if answer.refused == "velocity":
            v = limits[answer.index]
            return Refusal(
                "velocity",
                f"refused by guard velocity: {v.describe()} for category '{category}' "
                f"({int(answer.count)} in the window)",
            )
        assert anomaly_set is not None
        assert anomaly_set[1].anomaly is not None
        a = anomaly_set[1].anomaly
        override = (
            "; the caller may override it (metadata smsroute.override)"
            if a.action == "require_override"
            else ""
        )
        return Refusal(
            "anomaly",
            f"refused by guard anomaly: {answer.recent} {category} messages to {country} in "
            f"the last {duration_text(a.window)}, over {a.factor:g}x its baseline "
            f"({answer.base} in the {duration_text(a.baseline)} before)"
            f"{override}",
        )

    def _spent_text(self, b: Budget, spent: float) -> str:
        currency = self._currencies.get(b.name, self.currency) if b.scope == "provider" else (
            next(iter(set(self._currencies.values())), self.currency)
        )  # fmt: skip
        return f"{b.label} spent {spent:.4g} of {b.limit:g} {currency} this {b.per} (UTC)"

    def _transition(
        self,
        counts: GuardCounts,
        a: AnomalyQuery,
        answer: GuardAnswer,
        category: str,
        country: str,
        emit: Emit | None,
    ) -> None:
        tripped = answer.tripped
        if counts.tripped.get(a.key, False) is tripped:
            return
        if tripped:
            counts.tripped[a.key] = True
        else:  # only tripped keys are kept: none, and a passed answer needs no look
            del counts.tripped[a.key]
        to_state = "tripped" if tripped else "released"
        if tripped:
            log.warning(
                "anomaly guard tripped: %s messages to %s ran at %d in the last %gs against "
                "%d in the %gs before (factor %g): further ones are refused until it falls back",
                category, country, answer.recent, a.window, answer.base, a.baseline, a.factor,
            )  # fmt: skip
        else:
            log.warning(
                "anomaly guard released: %s messages to %s are back to %d in the last %gs "
                "(baseline %d in %gs)",
                category, country, answer.recent, a.window, answer.base, a.baseline,
            )  # fmt: skip
        if emit is not None:
            emit(AnomalyTransition(category, country, to_state, answer.recent, answer.base))

    # -- budgets around the plan -----------------------------------------------------------

    def within_budget(
        self, names: Sequence[str], over: frozenset[str], rule: Rule, country: str
    ) -> Sequence[str] | Refusal:
        """The plan without the providers at their cap, as the rule's ``on_budget`` says."""
        under = [n for n in names if n not in over]
        if rule.on_budget == "cheapest_under_cap" and under:

            def price(name: str) -> float:
                per_segment = self._prices[name].price_for(country)
                return float("inf") if per_segment is None else per_segment

            return sorted(under, key=price)
        if rule.on_budget == "refuse" and names and names[0] not in over:
            return under
        capped = names[0] if names and names[0] in over else sorted(over)[0]
        b = self._providers[capped]
        return Refusal(
            "budget",
            f"refused by guard budget: {b.label} reached its cap of {b.limit:g} "
            f"{self._currencies.get(capped, self.currency)} this {b.per} (UTC), and rule "
            f"'{rule.name}' says on_budget: {rule.on_budget}",
        )

    def spent(
        self,
        counts: GuardCounts,
        message: Message,
        country: str,
        provider: str,
        cost: float | None,
        now: float,
        emit: Emit | None,
    ) -> None:
        """Count an accepted message's ``cost`` against every budget it falls under."""
        if not cost or not self.budgets:
            return
        keys = self._spending.get((message.category, country, provider))
        if keys is None:
            budgets = (
                self._category.get(message.category),
                self._country.get(country),
                self._providers.get(provider),
            )
            keys = self._spending[(message.category, country, provider)] = tuple(
                self._keys[id(b)] for b in budgets if b is not None
            )
        if self._tag and message.tags:
            keys += tuple(self._keys[id(b)] for t in message.tags if (b := self._tag.get(t)))
        if not keys:
            return
        if isinstance(counts, MemoryGuardCounts):  # inline (MemoryGuardCounts.spend)
            spent = counts.spent
            # entry: [spend, expiry, its part recorded in Redis or learnt from it]
            for sk in keys:
                if not sk.start <= now < sk.end:  # a new period: the spends of past ones go
                    sk.at(now)
                    counts.sweep(now)
                entry = spent.get(sk.key)
                if entry is None:
                    entry = spent[sk.key] = [0.0, sk.end + SPEND_KEPT, 0.0]
                total = entry[0] = entry[0] + cost
                if not sk.lo <= total < sk.hi:  # another percent of the limit, or its cap
                    self._crossed(sk, total, provider, emit, counts.capped)
            recorder = counts.recorder
            if recorder is not None and recorder.asleep:
                recorder.wake(now)
            return
        for sk in keys:
            if not sk.start <= now < sk.end:
                sk.at(now)
        totals = counts.spend(keys, cost, now)
        for sk, total in zip(keys, totals, strict=True):
            if not sk.lo <= total < sk.hi:
                self._crossed(sk, total, provider, emit, None)

    def _crossed(
        self, sk: SpendKey, total: float, provider: str, emit: Emit | None, capped: set[str] | None
    ) -> None:
        """A spend of ``total`` on ``sk`` left the band [lo, hi) kept on ``sk``: at the
        cap, its key goes into ``capped`` (the memory counts' set, see
        :attr:`MemoryGuardCounts.capped`); a BudgetSpent event when it is another percent
        of the limit than the last one told this period.

        The band never reaches the cap (a spend in it is under the cap, whichever counts
        it is from), and is empty once the cap is reached: every later spend comes here."""
        b = sk.budget
        if not math.isfinite(total):  # a spend read from data smsroute did not write
            if total > 0 and capped is not None:  # +inf: at its cap, as evaluate() says
                capped.add(sk.key)
            sk.lo = sk.hi = 0.0  # no percent to tell, no band
            return
        percent = int(total * 100 / b.limit)
        if total >= sk.limit:
            if capped is not None:
                capped.add(sk.key)
            sk.lo = sk.hi = 0.0
        else:
            sk.lo, sk.hi = percent * b.limit / 100, min((percent + 1) * b.limit / 100, sk.limit)
        if percent != sk.told and emit is not None:
            sk.told = percent
            currency = self._currencies[provider] if b.scope == "provider" else self.currency
            emit(BudgetSpent(b.label, total, b.limit, currency))

    # -- explain ---------------------------------------------------------------------------

    def explain(
        self, counts: GuardCounts, message: Message, e164: str, country: str, rule: Rule, now: float
    ) -> tuple[GuardStatus, ...]:
        """Each guard of this message with its count now, and which would refuse it
        (a provider's budget never: see :meth:`explain_plan`)."""
        return self.explain_plan(counts, message, e164, country, rule, now, ())[0]

    def explain_plan(
        self,
        counts: GuardCounts,
        message: Message,
        e164: str,
        country: str,
        rule: Rule,
        now: float,
        names: Sequence[str],
    ) -> tuple[tuple[GuardStatus, ...], Sequence[str]]:
        """:meth:`explain`, and ``names`` (the providers in the order the strategy gives)
        as the send leaves them: without the providers at their budget cap, by the rule's
        ``on_budget`` (:meth:`within_budget`; when that refuses, the budget of the provider
        it names refuses, and ``names`` come back as given)."""
        category = message.category
        sets = self.sets(category, rule)
        out: list[GuardStatus] = []
        why = self._geo(sets, category, country)
        for _, gs in sets:
            if gs.allow is not None or gs.deny:
                text = (
                    f"allow {', '.join(sorted(gs.allow))}" if gs.allow is not None
                    else f"deny {', '.join(sorted(gs.deny))}"
                )  # fmt: skip
                out.append(GuardStatus("geo", text, None, why is not None))
        caps = self._caps(message, country)
        providers = self.provider_budgets(rule)
        plan = _Plan(self, category, rule)
        query = self._query(plan, message, e164, country, "explain", now, [], [*caps, *providers])
        limits, anomaly_set = plan.limits, plan.anomaly_set
        answer = counts.peek(query)
        refused = why is None
        over: dict[str, int] = {}  # provider at its cap -> the index of its budget's status
        for b, spent in zip([*caps, *providers], answer.spends, strict=True):
            refuses = refused and b.scope != "provider" and spent >= b.limit * AT_CAP
            refused = refused and not refuses
            if b.scope == "provider" and spent >= b.limit * AT_CAP:
                over[b.name] = len(out)
            out.append(GuardStatus("budget", self._spent_text(b, spent), spent, refuses))
        if anomaly_set is not None and anomaly_set[1].anomaly is not None:
            a = anomaly_set[1].anomaly
            refuses = refused and answer.refused == "anomaly"
            refused = refused and not refuses
            out.append(
                GuardStatus(
                    "anomaly",
                    f"{category} to {country}: at most {a.factor:g}x the baseline over "
                    f"{a.window:g}s (baseline {answer.base} in {a.baseline:g}s"
                    f"{', tripped' if answer.tripped else ''})",
                    answer.recent,
                    refuses,
                )
            )
        for i, v in enumerate(limits):
            count = answer.counts[i] - (0 if answer.refused == "velocity" and i == answer.index else 1) if i < len(answer.counts) else None  # fmt: skip
            refuses = refused and answer.refused == "velocity" and i == answer.index
            refused = refused and not refuses
            out.append(GuardStatus("velocity", v.describe(), count, refuses))
        if refused and over and names:  # passed every other guard: the plan meets the budgets
            kept = self.within_budget(names, frozenset(over), rule, country)
            if not isinstance(kept, Refusal):
                return tuple(out), kept
            capped = names[0] if names and names[0] in over else sorted(over)[0]
            out[over[capped]] = attrs.evolve(out[over[capped]], refuses=True)
        return tuple(out), names


__all__ = ["ANOMALY_OVERRIDE", "OVERRIDE_KEY", "GuardStatus", "Guards", "Refusal"]
