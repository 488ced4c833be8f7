"""The typed model of the ``guards`` config: fraud and spend guards, as loaded.

The ``guards`` section holds one :class:`GuardSet` per category (geo permissions,
velocity limits, the anomaly guard) and the ``budgets`` list; a rule may add a
:class:`GuardSet` of its own (its ``guards`` key) and say what happens at a provider's
budget cap (``on_budget``).  :mod:`smsroute.guardload` reads the YAML into these
frozen objects; :mod:`smsroute.guards` evaluates them on every message::

    guards:
      otp:
        countries: {allow: [US, CA, DE, GB]}
        velocity:
          - {per: prefix, digits: 7, max: 20, window: 10m}
          - {per: number, max: 5, window: 1h}
        anomaly: {window: 5m, baseline: 1h, factor: 5, min_count: 50, action: refuse}
      budgets:
        - {scope: provider, name: twilio-main, limit: 500, per: day}

The ``*_KEYS`` sets are the keys each part accepts (``config/schema.json`` is kept in
step by ``tests/test_schema.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

#: ``guards`` holds category names and this key.
BUDGETS_KEY = "budgets"
GUARD_SET_KEYS = frozenset({"countries", "velocity", "anomaly"})
COUNTRIES_KEYS = frozenset({"allow", "deny"})
VELOCITY_KEYS = frozenset({"per", "digits", "max", "window"})
ANOMALY_KEYS = frozenset({"window", "baseline", "factor", "min_count", "action"})
BUDGET_KEYS = frozenset({"scope", "name", "limit", "per"})

VelocityPer = Literal["number", "prefix", "country"]
VELOCITY_PERS: tuple[VelocityPer, ...] = ("number", "prefix", "country")
AnomalyAction = Literal["refuse", "require_override"]
ANOMALY_ACTIONS: tuple[AnomalyAction, ...] = ("refuse", "require_override")
BudgetScope = Literal["provider", "category", "country", "tag"]
BUDGET_SCOPES: tuple[BudgetScope, ...] = ("provider", "category", "country", "tag")
BudgetPeriod = Literal["hour", "day", "month"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("hour", "day", "month")
#: A rule's ``on_budget``: what happens when a provider of its plan reached its budget.
OnBudget = Literal["refuse", "cheapest_under_cap"]
ON_BUDGET: tuple[OnBudget, ...] = ("refuse", "cheapest_under_cap")

#: Slots the anomaly guard's recent window is counted in (the baseline in slots as long).
ANOMALY_SLOTS = 5
#: Longest baseline, in recent windows (it is counted in window/ANOMALY_SLOTS slots).
MAX_BASELINE_WINDOWS = 100
#: Largest ``max`` of a velocity limit (a sliding window keeps up to ``max`` times).
MAX_VELOCITY = 100_000


@attrs.frozen(slots=True)
class Velocity:
    """At most ``max`` messages per sliding ``window`` (seconds) to one number, one
    destination prefix (the first ``digits`` digits of the E.164 number) or one country."""

    per: VelocityPer
    max: int
    window: float
    #: Digits of the prefix (``per: prefix`` only; 0 otherwise).
    digits: int = 0

    def describe(self) -> str:
        """``at most 5 per number per 1h`` (no number or digit of one in it)."""
        what = f"prefix of {self.digits} digits" if self.per == "prefix" else self.per
        return f"at most {self.max} per {what} per {duration_text(self.window)}"


@attrs.frozen(slots=True)
class Anomaly:
    """Refuse (or require the caller's override) once a country's rate over the last
    ``window`` exceeds ``factor`` times its rate over the ``baseline`` before it, with
    at least ``min_count`` messages in the window."""

    window: float = 300.0
    baseline: float = 3600.0
    factor: float = 5.0
    min_count: int = 50
    action: AnomalyAction = "refuse"

    @property
    def slot(self) -> float:
        """Length of one counting slot, in seconds."""
        return self.window / ANOMALY_SLOTS


@attrs.frozen(slots=True)
class GuardSet:
    """The guards of one category (or one rule): geo permissions, velocity, anomaly."""

    #: Only these countries (ISO codes); None: any.
    allow: frozenset[str] | None = None
    #: Never these countries.
    deny: frozenset[str] = frozenset()
    velocity: tuple[Velocity, ...] = ()
    anomaly: Anomaly | None = None

    @property
    def empty(self) -> bool:
        """True when it guards nothing."""
        return self.allow is None and not self.deny and not self.velocity and self.anomaly is None


@attrs.frozen(slots=True)
class Budget:
    """Spend cap of one scope (``provider:twilio-main``, ``category:marketing``,
    ``country:ID``, ``tag:campaign-42``) over one calendar hour, day or month (UTC),
    in the price tables' currency."""

    scope: BudgetScope
    name: str
    limit: float
    per: BudgetPeriod

    @property
    def label(self) -> str:
        """The ``scope`` label of the budget metrics: ``provider:twilio-main``."""
        return f"{self.scope}:{self.name}"


@attrs.frozen(slots=True)
class GuardSettings:
    """The ``guards`` section: a :class:`GuardSet` per category and the budgets."""

    categories: Mapping[str, GuardSet] = attrs.field(factory=dict)
    budgets: tuple[Budget, ...] = ()


def duration_text(seconds: float) -> str:
    """``1h``, ``10m``, ``90s``: a duration as a config would write it."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


__all__ = [
    "Anomaly",
    "Budget",
    "GuardSet",
    "GuardSettings",
    "OnBudget",
    "Velocity",
]
