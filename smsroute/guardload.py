"""Reading the ``guards`` section (and a rule's ``guards`` and ``on_budget``) of a config.

:func:`guards_section` and :func:`guard_set` walk the YAML with a
:class:`~smsroute.configcheck.Checker`, so every problem is recorded with its
file:line:column and field path and the loader raises them together as one
:class:`~smsroute.errors.ConfigError`.  What they build is
:mod:`smsroute.guardconfig`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from smsroute import configcheck as check
from smsroute import yamlsource
from smsroute.config import Category, ProviderConfig
from smsroute.configcheck import Checker
from smsroute.guardconfig import (
    ANOMALY_ACTIONS,
    ANOMALY_KEYS,
    BUDGET_KEYS,
    BUDGET_PERIODS,
    BUDGET_SCOPES,
    BUDGETS_KEY,
    COUNTRIES_KEYS,
    GUARD_SET_KEYS,
    MAX_BASELINE_WINDOWS,
    MAX_VELOCITY,
    ON_BUDGET,
    VELOCITY_KEYS,
    VELOCITY_PERS,
    Anomaly,
    AnomalyAction,
    Budget,
    BudgetPeriod,
    BudgetScope,
    GuardSet,
    GuardSettings,
    OnBudget,
    Velocity,
    VelocityPer,
)
from smsroute.yamlsource import shown

T = TypeVar("T")

#: Longest velocity window: 31 days.
MAX_WINDOW = 31 * 86400.0
#: Highest budget limit accepted, in currency units.
MAX_LIMIT = 1e12
#: Highest anomaly factor.
MAX_FACTOR = 1e6


def _choice(options: tuple[T, ...], what: str) -> Callable[[Any], T]:
    def parse(value: Any) -> T:
        if value not in options:
            names = [str(o) for o in options]
            hint = difflib.get_close_matches(str(value), names, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            raise ValueError(
                f"unknown {what} {shown(value)}: {suggestion}choose one of {', '.join(names)}"
            )
        return value  # type: ignore[no-any-return]

    return parse


on_budget: Callable[[Any], OnBudget] = _choice(ON_BUDGET, "on_budget")
_per: Callable[[Any], VelocityPer] = _choice(VELOCITY_PERS, "velocity 'per'")
_action: Callable[[Any], AnomalyAction] = _choice(ANOMALY_ACTIONS, "anomaly action")
_scope: Callable[[Any], BudgetScope] = _choice(BUDGET_SCOPES, "budget scope")
_period: Callable[[Any], BudgetPeriod] = _choice(BUDGET_PERIODS, "budget period ('per')")


def _window(value: Any) -> float:
    seconds = check.positive_duration(value)
    if seconds < 1.0 or seconds > MAX_WINDOW:
        raise ValueError(f"a window must be from 1s to 31 days, got {shown(value)}")
    return seconds


def _number(low: float, high: float, what: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low < value <= high  # False for nan
        ):
            raise ValueError(
                f"{what} must be a number above {low:g} and at most {high:,.0f}, got {shown(value)}"
            )
        return float(value)

    return parse


_factor = _number(1.0, MAX_FACTOR, "factor")
_limit = _number(0.0, MAX_LIMIT, "a budget limit")


def _name(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"a budget needs a name (a non-empty string), got {shown(value)}")
    return str(value)


def guard_set(c: Checker, value: Any, path: yamlsource.Path, what: str) -> GuardSet | None:
    """The guards of one category or rule (None when ``value`` is None)."""
    if value is None:
        return None
    g = c.mapping(value, path, GUARD_SET_KEYS, what=what)
    cpath = (*path, "countries")
    countries = c.mapping(g.get("countries"), cpath, COUNTRIES_KEYS, what="countries")
    allow = c.field(countries, cpath, "allow", check.region_set, None)
    deny: frozenset[str] = c.field(countries, cpath, "deny", check.region_set, frozenset())
    if "allow" in countries and "deny" in countries:
        c.error(cpath, "give 'allow' or 'deny', not both: a country not allowed is refused")
    return GuardSet(
        allow=allow,
        deny=deny,
        velocity=_velocities(c, g.get("velocity"), (*path, "velocity")),
        anomaly=_anomaly(c, g.get("anomaly"), (*path, "anomaly")) if "anomaly" in g else None,
    )


def _velocities(c: Checker, value: Any, path: yamlsource.Path) -> tuple[Velocity, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.error(path, f"velocity must be a list of limits, got {check.kind(value)}")
        return ()
    out: list[Velocity] = []
    for i, body in enumerate(value):
        vpath = (*path, i)
        if not isinstance(body, dict):
            c.error(vpath, "a velocity limit is a mapping like {per: number, max: 5, window: 1h}")
            continue
        v = c.mapping(body, vpath, VELOCITY_KEYS, what="a velocity limit")
        problems = len(c.problems)
        for key in ("per", "max", "window"):
            if v.get(key) is None:
                c.error(vpath, f"a velocity limit needs '{key}'")
        per: VelocityPer = c.field(v, vpath, "per", _per, "number")
        digits = c.field(v, vpath, "digits", check.int_in(1, 15), 0)
        if per == "prefix" and "digits" not in v:
            c.error(vpath, "a velocity limit per prefix needs 'digits' (6 to 8 is usual)")
        elif per != "prefix" and "digits" in v:
            c.error((*vpath, "digits"), "'digits' is for velocity limits per prefix only")
        limit = Velocity(
            per=per,
            max=c.field(v, vpath, "max", check.int_in(1, MAX_VELOCITY), 1),
            window=c.field(v, vpath, "window", _window, 60.0),
            digits=digits if per == "prefix" else 0,
        )
        if len(c.problems) == problems:
            out.append(limit)
    return tuple(out)


def _anomaly(c: Checker, value: Any, path: yamlsource.Path) -> Anomaly | None:
    if not isinstance(value, dict):
        c.error(path, f"anomaly must be a mapping like {{window: 5m, baseline: 1h, factor: 5}}, "
                f"got {check.kind(value)}")  # fmt: skip
        return None
    a = c.mapping(value, path, ANOMALY_KEYS, what="anomaly")
    base = Anomaly()
    anomaly = Anomaly(
        window=c.field(a, path, "window", _window, base.window),
        baseline=c.field(a, path, "baseline", _window, base.baseline),
        factor=c.field(a, path, "factor", _factor, base.factor),
        min_count=c.field(a, path, "min_count", check.int_in(1, 1_000_000_000), base.min_count),
        action=c.field(a, path, "action", _action, base.action),
    )
    if anomaly.window < 5.0:
        c.error((*path, "window"), "the anomaly window must be at least 5s")
    if not anomaly.window <= anomaly.baseline <= MAX_BASELINE_WINDOWS * anomaly.window:
        c.error(
            (*path, "baseline"),
            f"baseline must be from 1 to {MAX_BASELINE_WINDOWS} times the window "
            f"({anomaly.window:g}s): it is counted in slots a fifth of the window long",
        )
    return anomaly


def guards_section(
    c: Checker,
    value: Any,
    categories: Mapping[str, Category],
    providers: Mapping[str, ProviderConfig],
) -> GuardSettings:
    """The top-level ``guards`` section: a guard set per category, and ``budgets``."""
    path: yamlsource.Path = ("guards",)
    allowed = frozenset({*categories, BUDGETS_KEY})
    g = c.mapping(value, path, allowed, what="guards (category names and 'budgets')")
    sets: dict[str, GuardSet] = {}
    for name, body in g.items():
        if name == BUDGETS_KEY or name not in categories:
            continue
        guards = guard_set(c, body, (*path, name), f"the guards of category '{name}'")
        if guards is not None and not guards.empty:
            sets[name] = guards
    budgets = _budgets(c, g.get(BUDGETS_KEY), (*path, BUDGETS_KEY), categories, providers)
    return GuardSettings(categories=sets, budgets=budgets)


def _budgets(
    c: Checker,
    value: Any,
    path: yamlsource.Path,
    categories: Mapping[str, Category],
    providers: Mapping[str, ProviderConfig],
) -> tuple[Budget, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.error(path, f"budgets must be a list, got {check.kind(value)}")
        return ()
    currencies = {p.prices.currency for p in providers.values()}
    out: list[Budget] = []
    seen: set[tuple[str, str]] = set()
    for i, body in enumerate(value):
        bpath = (*path, i)
        if not isinstance(body, dict):
            c.error(bpath, "a budget is a mapping like {scope: provider, name: x, limit: 500, "
                    "per: day}")  # fmt: skip
            continue
        b = c.mapping(body, bpath, BUDGET_KEYS, what="a budget")
        problems = len(c.problems)
        for key in ("scope", "name", "limit", "per"):
            if b.get(key) is None:
                c.error(bpath, f"a budget needs '{key}'")
        scope: BudgetScope = c.field(b, bpath, "scope", _scope, "provider")
        name = c.field(b, bpath, "name", _name, "")
        if scope == "country" and name:
            name = c.field(b, bpath, "name", check.region, name)
        elif scope == "provider" and name and providers and name not in providers:
            c.error((*bpath, "name"), f"unknown provider '{name}' "
                    f"(declared: {', '.join(sorted(providers))})")  # fmt: skip
        elif scope == "category" and name and name not in categories:
            c.error((*bpath, "name"), f"unknown category '{name}' "
                    f"(known: {', '.join(sorted(categories))})")  # fmt: skip
        if scope != "provider" and len(currencies) > 1:
            c.error(
                (*bpath, "scope"),
                f"a {scope} budget adds up the prices of every provider, but they are in "
                f"several currencies ({', '.join(sorted(currencies))}): use provider budgets",
            )
        budget = Budget(
            scope=scope,
            name=name,
            limit=c.field(b, bpath, "limit", _limit, 1.0),
            per=c.field(b, bpath, "per", _period, "day"),
        )
        if (scope, name) in seen:
            c.error(bpath, f"a second budget for {budget.label}: one budget per scope and name")
        seen.add((scope, name))
        if len(c.problems) == problems:
            out.append(budget)
    return tuple(out)


__all__ = ["guard_set", "guards_section", "on_budget"]
