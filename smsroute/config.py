"""The routing config's typed model: the frozen objects a loaded config is made of.

:class:`Config` and its parts (:class:`Defaults`, :class:`ProviderConfig`,
:class:`Rule`, :class:`Match`, :class:`BreakerSettings`, :class:`StateSettings`,
:class:`OutboxSettings`, ...) are what the router, the adapters and the state read;
the hot path only ever sees these.  The ``*_KEYS`` sets are the keys each section
accepts: a contract (see ``config/schema.json``, kept in step by
``tests/test_schema.py``); new keys may be added, existing ones keep their meaning.

Loading and checking a YAML config is :mod:`smsroute.configload` (:func:`load_config`,
:func:`parse_config`), with the value parsers of :mod:`smsroute.configcheck`.  The loader
asks the adapters which options they take, and the adapters import these types, so
this module imports neither.  ``from smsroute.config import load_config`` (or
``parse_config``) still works: the module-level :func:`__getattr__` below imports the
loader on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

# ConfigError and ConfigProblem are re-exported for code that imported them from here.
from smsroute.errors import ConfigError as ConfigError
from smsroute.errors import ConfigProblem as ConfigProblem
from smsroute.guardconfig import GuardSet, GuardSettings, OnBudget
from smsroute.numbers import NumberType
from smsroute.redact import redact
from smsroute.yamlsource import format_path

Strategy = Literal["priority", "weighted", "cheapest", "fastest", "score"]
STRATEGIES: tuple[Strategy, ...] = ("priority", "weighted", "cheapest", "fastest", "score")
OnTimeout = Literal["failover", "stop"]
OnUndelivered = Literal["resend", "ignore"]
BreakerScope = Literal["provider", "provider_country"]

# The keys each section accepts.  tests/test_schema.py keeps config/schema.json in step.
TOP_KEYS = frozenset(
    {"version", "defaults", "providers", "rules", "categories", "state", "outbox", "guards"}
)
DEFAULTS_KEYS = frozenset(
    {
        "default_region",
        "deadline",
        "max_attempts",
        "max_segments",
        "breaker",
        "breaker_scope",
        "max_rate_wait",
        "webhook_url",
        "currency",
        "metric_countries",
        "opt_out_categories",
        "receipt_timeout",
        "resend_ttl",
    }
)
BREAKER_KEYS = frozenset(
    {
        "window",
        "min_calls",
        "failure_rate",
        "consecutive_failures",
        "open_for",
        "max_open_for",
        "half_open_probes",
        "min_delivery_ratio",
        "min_receipts",
    }
)
PROVIDER_COMMON_KEYS = frozenset(
    {
        "type",
        "base_url",
        "timeout",
        "rate_limit",
        "burst",
        "max_concurrency",
        "prices",
        "currency",
        "from",
        "breaker",
        "breaker_scope",
        "status_callback",
    }
)
RULE_KEYS = frozenset(
    {
        "name",
        "match",
        "strategy",
        "providers",
        "weights",
        "on_timeout",
        "max_attempts",
        "deadline",
        "score_weights",
        "latency_buffer",
        "on_undelivered",
        "from",
        "encoding",
        "guards",
        "on_budget",
    }
)
MATCH_KEYS = frozenset({"country", "prefix", "number_type", "category", "sender", "tags"})
SCORE_WEIGHT_KEYS = frozenset({"price", "success", "latency"})
CATEGORY_KEYS = frozenset({"on_timeout", "quiet_hours", "encoding"})
QUIET_HOURS_KEYS = frozenset({"from", "to", "timezone"})
#: ``encoding`` of a rule or category: ``auto`` (GSM-7 when the text fits, else UCS-2)
#: or ``transliterate`` (look-alikes replaced by GSM-7 characters first; never for otp).
EncodingMode = Literal["auto", "transliterate"]
STATE_KEYS = frozenset(
    {
        "backend",
        "url",
        "key_prefix",
        "sync_interval",
        "timeout",
        "health_window",
        "health_half_life",
        "receipt_ttl",
        "guard_checks",
        "hash_key",
    }
)
StateBackendName = Literal["memory", "redis"]
GuardChecks = Literal["exact", "local"]
OUTBOX_KEYS = frozenset(
    {
        "backend",
        "path",
        "lease",
        "max_attempts",
        "ttl",
        "backoff",
        "concurrency",
        "poll",
        "rate_margin",
        "synchronous",
        "retention",
    }
)
BACKOFF_KEYS = frozenset({"base", "max"})
OutboxBackend = Literal["sqlite", "redis"]
Synchronous = Literal["normal", "full"]


@attrs.frozen(slots=True)
class BreakerSettings:
    """How a circuit breaker trips and recovers (see :mod:`smsroute.breaker`).

    ``window`` is a count of calls when ``window_seconds`` is None, otherwise
    the window is the last ``window_seconds`` of calls.
    """

    window: int = 50
    window_seconds: float | None = None
    min_calls: int = 10
    failure_rate: float = 0.5
    consecutive_failures: int | None = 5
    open_for: float = 30.0
    max_open_for: float = 300.0
    half_open_probes: int = 2
    #: Open when fewer than this share of final receipts say delivered (None: off).
    min_delivery_ratio: float | None = None
    #: Final receipts needed in the window before min_delivery_ratio applies.
    min_receipts: int = 20


@attrs.frozen(slots=True)
class PriceTable:
    """Price per segment by destination country (ISO code), with a default."""

    prices: Mapping[str, float] = attrs.field(factory=dict)
    default: float | None = None
    currency: str = "USD"

    def price_for(self, country: str) -> float | None:
        """Price of one segment to ``country``, or None when unknown."""
        return self.prices.get(country, self.default)


@attrs.frozen(slots=True)
class SenderPool:
    """Senders taken in turn (round robin, per process) or, ``sticky``, one per recipient:
    rendezvous hashing of the number with each member (see :mod:`smsroute.senders`)."""

    members: tuple[str, ...]
    sticky: bool = False


#: One value of a ``from`` map: a sender, or a pool of them.
SenderChoice = str | SenderPool


@attrs.frozen(slots=True)
class SenderMap:
    """``from`` written as a map by country and number type (see :mod:`smsroute.senders`)::

        from:
          US: {pool: ["+14155550100", "+16285550100"], sticky: true}
          CA: "+16135550100"
          GB: ACME
          IN: {mobile: ACMEIN, default: "+919000000000"}
          default: ACME
          fallback: "+14155550100"     # where the chosen sender cannot be used

    ``entries`` are keyed by (country, number type), the type None for the whole country.
    """

    entries: Mapping[tuple[str, NumberType | None], SenderChoice] = attrs.field(factory=dict)
    default: SenderChoice | None = None
    fallback: SenderChoice | None = None


@attrs.frozen(slots=True)
class ProviderConfig:
    """One provider account as configured.  ``options`` are the adapter's own keys.

    ``sender`` is ``from`` written as a string (sent as written, to every country);
    ``senders`` is ``from`` written as a map (checked against the country table)."""

    name: str
    type: str
    base_url: str | None = None
    timeout: float = 5.0
    rate_limit: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None
    prices: PriceTable = attrs.field(factory=PriceTable)
    sender: str | None = None
    breaker: BreakerSettings = attrs.field(factory=BreakerSettings)
    breaker_scope: BreakerScope = "provider"
    status_callback: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    senders: SenderMap | None = None


@attrs.frozen(slots=True)
class Match:
    """What a rule matches.  Each field given narrows the match; within a field,
    any listed value matches (for ``tags``: the message carries any of them)."""

    countries: frozenset[str] | None = None
    prefixes: tuple[str, ...] | None = None
    number_types: frozenset[NumberType] | None = None
    categories: frozenset[str] | None = None
    senders: frozenset[str] | None = None
    tags: frozenset[str] | None = None

    @property
    def is_catch_all(self) -> bool:
        """True when the rule matches every message."""
        return all(
            v is None
            for v in (
                self.countries,
                self.prefixes,
                self.number_types,
                self.categories,
                self.senders,
                self.tags,
            )
        )


@attrs.frozen(slots=True)
class ScoreWeights:
    """Weights of the ``score`` strategy; they need not sum to one."""

    price: float = 1.0
    success: float = 1.0
    latency: float = 1.0


@attrs.frozen(slots=True)
class Rule:
    """One routing rule: a match, and how to order its providers into a plan."""

    name: str
    match: Match
    providers: tuple[str, ...]
    strategy: Strategy = "priority"
    weights: Mapping[str, float] = attrs.field(factory=dict)
    on_timeout: OnTimeout | None = None
    max_attempts: int | None = None
    deadline: float | None = None
    score_weights: ScoreWeights = attrs.field(factory=ScoreWeights)
    latency_buffer: float = 0.2
    on_undelivered: OnUndelivered = "ignore"
    #: ``transliterate`` or ``auto`` overrides the category's ``encoding``; None: the category's.
    encoding: EncodingMode | None = None
    #: Guards of this rule, applied on top of its category's (see :mod:`smsroute.guards`).
    guards: GuardSet | None = None
    #: When a provider of the plan reached its budget: refuse, or the cheapest under its cap.
    on_budget: OnBudget = "refuse"
    #: ``from`` of this rule (wins over its providers'); None: the providers' own.
    senders: SenderMap | None = None


#: Countries that get their own ``country`` label value in metrics; the rest are
#: ``other``.  Roughly the 30 largest A2P SMS markets: keeps the label bounded
#: (30 countries x providers x outcomes) while naming where most traffic goes.
DEFAULT_METRIC_COUNTRIES = frozenset(
    {
        "US", "GB", "DE", "FR", "IT", "ES", "NL", "PL", "SE", "CH",
        "AT", "BE", "TR", "RU", "IN", "ID", "PH", "CN", "JP", "KR",
        "AU", "CA", "MX", "BR", "AR", "CO", "NG", "ZA", "AE", "SA",
    }
)  # fmt: skip


@attrs.frozen(slots=True)
class Defaults:
    """Settings that apply to every message unless a rule or provider overrides them."""

    default_region: str | None = None
    deadline: float = 10.0
    max_attempts: int = 3
    max_segments: int = 10
    breaker: BreakerSettings = attrs.field(factory=BreakerSettings)
    breaker_scope: BreakerScope = "provider"
    max_rate_wait: float = 1.0
    webhook_url: str | None = None
    currency: str = "USD"
    #: ISO codes with their own ``country`` label in metrics; others are ``other``.
    metric_countries: frozenset[str] = DEFAULT_METRIC_COUNTRIES
    #: Categories refused to numbers that opted out (STOP); otp still goes through.
    opt_out_categories: frozenset[str] = frozenset({"marketing", "transactional"})
    #: An accepted message with no final receipt after this long counts as not delivered.
    receipt_timeout: float | None = 600.0
    #: How long after acceptance a failed delivery may still be resent (on_undelivered).
    resend_ttl: float = 3600.0


@attrs.frozen(slots=True)
class QuietHours:
    """A category's quiet hours: no message goes between ``start`` and ``end`` local time.

    ``start`` and ``end`` are minutes after midnight (``from: "21:00"`` is 1260); the
    window wraps midnight when ``start > end``.  ``timezone`` is ``recipient`` (every
    time zone the number may be in, from phonenumbers' data: the window must be over
    in all of them) or an IANA name such as ``Europe/Berlin``.  See :mod:`smsroute.quiet`.
    """

    start: int
    end: int
    timezone: str = "recipient"


@attrs.frozen(slots=True)
class Category:
    """A message category: what a timeout means for it, its quiet hours, its encoding."""

    name: str
    on_timeout: OnTimeout
    #: None: messages of this category may go at any hour.
    quiet_hours: QuietHours | None = None
    #: ``transliterate``: look-alike characters become GSM-7 ones before sending.
    encoding: EncodingMode = "auto"


#: The categories every config has; its ``categories`` section may add others or
#: change their ``on_timeout``.
DEFAULT_CATEGORIES: Mapping[str, Category] = MappingProxyType(
    {
        "otp": Category("otp", "failover"),
        "transactional": Category("transactional", "failover"),
        "marketing": Category("marketing", "stop"),
    }
)


@attrs.frozen(slots=True)
class StateSettings:
    """Where breaker, health and rate-limit state lives (see :mod:`smsroute.state`).

    ``memory`` (the default) keeps it in this process.  ``redis`` shares it with
    every replica using the same ``url`` and ``key_prefix``::

        state:
          backend: redis
          url: ${REDIS_URL}          # redis://[:password@]host:6379/0
          key_prefix: "smsroute:"    # several configs can share one Redis
          sync_interval: 250ms       # bounds how stale a replica's view of a breaker is
    """

    backend: StateBackendName = "memory"
    #: Its password never shows in the settings' repr (nor the config's).
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", repr=lambda u: repr(redact(u)))
    key_prefix: str = "smsroute:"
    #: How often a replica refreshes shared breakers and flushes its health counters.
    sync_interval: float = 0.25
    #: A Redis command slower than this counts as Redis being down.
    timeout: float = 0.5
    #: Health (success, latency, delivery) is merged over this much recent time.
    health_window: float = 60.0
    #: Health figures not refreshed for this long count half as much (see smsroute.health).
    health_half_life: float = 300.0
    #: How long a processed delivery receipt is remembered, so a retry is dropped.
    receipt_ttl: float = 48 * 3600.0
    #: With Redis: ``exact``, every guard check waits for Redis (limits exact across
    #: replicas); ``local``, each replica decides from its own counts at once and
    #: learns every replica's within a round trip (see smsroute.state.guards_mirror).
    guard_checks: GuardChecks = "exact"
    #: A secret the guards' keys in Redis hash numbers and prefixes with (keyed BLAKE2b);
    #: None: unkeyed, and anyone who reads the keys can find a number by hashing its range.
    #: The same on every replica.  Never shown in the repr.
    hash_key: str | None = attrs.field(
        default=None, repr=lambda k: "None" if k is None else "'***'"
    )


@attrs.frozen(slots=True)
class OutboxSettings:
    """The durable outbox behind ``Router.enqueue`` (see :mod:`smsroute.outbox`).

    Without an ``outbox`` section the defaults below apply::

        outbox:
          path: smsroute-outbox.db     # relative to the config file's folder
          lease: 30s                   # a dead worker's messages come back after this
          max_attempts: 10             # sends of one message (each may try several providers)
          ttl: 24h                     # how long after it is due a message may still go
          backoff: {base: 1s, max: 5m} # full jitter: uniform(0, min(max, base * 2**(tries-1)))

    ``backend: redis`` keeps the queue in the Redis of the ``state`` section
    (which must then say ``backend: redis``), under its ``key_prefix``: every
    replica enqueues to and works off one queue; ``path`` is not used.
    """

    backend: OutboxBackend = "sqlite"
    path: str = "smsroute-outbox.db"
    lease: float = 30.0
    max_attempts: int = 10
    #: None: a message never expires.
    ttl: float | None = 24 * 3600.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    #: Messages a worker leases and works on at once.
    concurrency: int = 16
    #: How often an idle worker looks for messages enqueued by other processes.
    poll: float = 1.0
    #: Added to each rate window the worker counts its sends in, for network jitter.
    rate_margin: float = 0.05
    #: SQLite's ``synchronous``: normal survives a killed process, full a power cut too.
    synchronous: Synchronous = "normal"
    #: Sent messages (and their idempotency keys) are forgotten after this; None: kept.
    retention: float | None = 7 * 24 * 3600.0


@attrs.frozen(slots=True)
class Config:
    """A whole validated config.  Build one with :func:`load_config` or :func:`parse_config`."""

    defaults: Defaults
    providers: Mapping[str, ProviderConfig]
    rules: tuple[Rule, ...]
    categories: Mapping[str, Category]
    source: str = "<config>"
    version: int = 1
    state: StateSettings = attrs.field(factory=StateSettings)
    #: None when the config has no ``outbox`` section (the outbox then uses the defaults).
    outbox: OutboxSettings | None = None
    #: None when no ``guards`` section (rules may still have guards of their own).
    guards: GuardSettings | None = None


#: Names this module provided when it held the loader too: served by ``__getattr__``.
_LOADER_NAMES = frozenset({"load_config", "parse_config"})


def __getattr__(name: str) -> Any:
    """``load_config`` and ``parse_config``, for imports written when the loader lived here.

    They are imported from :mod:`smsroute.configload` on first use, through
    ``importlib`` rather than an import statement: the loader sits above the adapters,
    which import this module, so a static import would close an import cycle (and break
    the layering ``lint-imports`` checks).  New code imports them from
    :mod:`smsroute.configload`, or from :mod:`smsroute`.
    """
    if name in _LOADER_NAMES:
        return getattr(importlib.import_module("smsroute.configload"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BreakerSettings",
    "Category",
    "Config",
    "Defaults",
    "EncodingMode",
    "Match",
    "OutboxSettings",
    "PriceTable",
    "ProviderConfig",
    "QuietHours",
    "Rule",
    "ScoreWeights",
    "SenderMap",
    "SenderPool",
    "StateSettings",
    "format_path",
    "load_config",  # noqa: F822 (served by __getattr__)
    "parse_config",  # noqa: F822 (served by __getattr__)
]
