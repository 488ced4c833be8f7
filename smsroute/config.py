"""The routing config: YAML in, typed and validated objects out.

Everything is checked at load time, every problem is reported with
file:line:column and a field path, and the hot path only ever sees the typed
objects below.  The keys are a contract (see ``config/schema.json``); new
keys may be added, existing ones keep their meaning.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from smsroute import yamlsource
from smsroute.errors import ConfigError, ConfigProblem
from smsroute.numbers import NumberType
from smsroute.units import parse_duration, parse_fraction, parse_rate
from smsroute.yamlsource import Located, config_error, format_path, shown

Strategy = Literal["priority", "weighted", "cheapest", "fastest", "score"]
STRATEGIES: tuple[Strategy, ...] = ("priority", "weighted", "cheapest", "fastest", "score")
OnTimeout = Literal["failover", "stop"]
OnUndelivered = Literal["resend", "ignore"]
BreakerScope = Literal["provider", "provider_country"]

# The keys each section accepts.  tests/test_schema.py keeps config/schema.json in step.
TOP_KEYS = frozenset({"version", "defaults", "providers", "rules", "categories", "state", "outbox"})
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
    }
)
MATCH_KEYS = frozenset({"country", "prefix", "number_type", "category", "sender", "tags"})
SCORE_WEIGHT_KEYS = frozenset({"price", "success", "latency"})
CATEGORY_KEYS = frozenset({"on_timeout"})
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
    }
)
StateBackendName = Literal["memory", "redis"]
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
class ProviderConfig:
    """One provider account as configured.  ``options`` are the adapter's own keys."""

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
class Category:
    """A message category and what a timeout means for it."""

    name: str
    on_timeout: OnTimeout


_DEFAULT_CATEGORIES = {
    "otp": Category("otp", "failover"),
    "transactional": Category("transactional", "failover"),
    "marketing": Category("marketing", "stop"),
}


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
    url: str = "redis://127.0.0.1:6379/0"
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


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    unset: list[ConfigProblem] | None = None,
) -> Config:
    """Read and validate the YAML config at ``path``; raise :class:`ConfigError` on any problem.

    ConfigError is the only exception raised, whatever the file holds (see
    :mod:`smsroute.yamlsource` for the bounds on size, nesting and aliases).
    With ``unset`` (a list), an unset ``${VAR}`` is not an error: its value is a
    placeholder and its problem is appended to ``unset`` (``smsroute check``
    and ``explain`` validate a config without its secrets this way).
    """
    file = str(Path(path))
    text = yamlsource.read_text(path, file)
    return parse_config(text, file=file, environ=environ, unset=unset)


def parse_config(
    text: str,
    *,
    file: str = "<config>",
    environ: Mapping[str, str] | None = None,
    unset: list[ConfigProblem] | None = None,
) -> Config:
    """Validate YAML ``text``.  ``file`` is used in messages and to resolve price files;
    ``unset`` is as for :func:`load_config`."""
    located = yamlsource.load(text, file, environ, unset=unset)
    return _Loader(located).load()


T = TypeVar("T")
_MISSING: Any = object()


class _Loader:
    def __init__(self, located: Located) -> None:
        self.src = located
        self.problems: list[ConfigProblem] = []
        # Declared providers refused for a problem of their own (say, an unknown type):
        # rules naming them are not told "unknown provider" again.
        self.refused_providers: set[str] = set()
        self.base_dir = Path(located.file).parent if located.file != "<config>" else Path.cwd()

    # -- reporting -----------------------------------------------------------------

    def error(self, path: yamlsource.Path, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.src.problem(path, message, at_key=at_key))

    def mapping(
        self,
        value: Any,
        path: yamlsource.Path,
        allowed: frozenset[str],
        *,
        what: str,
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.error(
                    (*path, key),
                    f"unknown key '{key}' in {what}{suggestion} "
                    f"(allowed: {', '.join(sorted(allowed))})",
                    at_key=True,
                )
        return value

    def field(
        self,
        section: Mapping[str, Any],
        path: yamlsource.Path,
        key: str,
        parse: Callable[[Any], T],
        default: T,
    ) -> T:
        if key not in section or section[key] is None:
            return default
        try:
            return parse(section[key])
        except (ValueError, TypeError) as exc:
            self.error((*path, key), str(exc))
            return default

    # -- sections ------------------------------------------------------------------

    def load(self) -> Config:
        root = self.src.value
        if root is None:
            self.error((), "the config is empty: it needs at least 'providers' and 'rules'")
            raise config_error(self.problems)
        top = self.mapping(root, (), TOP_KEYS, what="the config")
        version = self.field(top, (), "version", _int_in(1, 1), 1)
        defaults = self.defaults(top.get("defaults"))
        categories = self.categories(top.get("categories"))
        for name in sorted(defaults.opt_out_categories - set(categories)):
            self.error(
                ("defaults", "opt_out_categories"),
                f"unknown category '{name}' (known: {', '.join(sorted(categories))})",
            )
        providers = self.providers(top.get("providers"), defaults)
        rules = self.rules(top.get("rules"), providers, categories)
        state = self.state(top.get("state"))
        outbox = self.outbox(top.get("outbox"), state) if "outbox" in top else None
        if self.problems:
            raise config_error(self.problems)
        return Config(
            defaults=defaults,
            providers=providers,
            rules=rules,
            categories=categories,
            source=self.src.file,
            version=version,
            state=state,
            outbox=outbox,
        )

    def state(self, value: Any) -> StateSettings:
        path: yamlsource.Path = ("state",)
        s = self.mapping(value, path, STATE_KEYS, what="state")
        base = StateSettings()
        settings = StateSettings(
            backend=self.field(s, path, "backend", _state_backend, base.backend),
            url=self.field(s, path, "url", _redis_url, base.url),
            key_prefix=self.field(s, path, "key_prefix", _key_prefix, base.key_prefix),
            sync_interval=self.field(
                s, path, "sync_interval", _positive_duration, base.sync_interval
            ),
            timeout=self.field(s, path, "timeout", _positive_duration, base.timeout),
            health_window=self.field(
                s, path, "health_window", _positive_duration, base.health_window
            ),
            health_half_life=self.field(
                s, path, "health_half_life", _positive_duration, base.health_half_life
            ),
            receipt_ttl=self.field(s, path, "receipt_ttl", _positive_duration, base.receipt_ttl),
        )
        if settings.sync_interval > 1.0:
            self.error(
                (*path, "sync_interval"),
                "sync_interval must be at most 1s: it bounds how late a replica sees a "
                "breaker another replica opened",
            )
        if settings.health_window < 6 * settings.sync_interval:
            self.error(
                (*path, "health_window"),
                "health_window must be at least 6 times sync_interval "
                f"({6 * settings.sync_interval:g}s)",
            )
        return settings

    def outbox(self, value: Any, state: StateSettings) -> OutboxSettings:
        path: yamlsource.Path = ("outbox",)
        o = self.mapping(value, path, OUTBOX_KEYS, what="outbox")
        bpath: yamlsource.Path = (*path, "backoff")
        b = self.mapping(o.get("backoff"), bpath, BACKOFF_KEYS, what="outbox backoff")
        base = OutboxSettings()

        def nullable(section: Mapping[str, Any], key: str, default: float | None) -> float | None:
            if key in section and section[key] is None:
                return None
            return self.field(section, path, key, _positive_duration, default)

        where = self.field(o, path, "path", _file_path, base.path)
        if where != ":memory:" and not Path(where).is_absolute():
            where = str(self.base_dir / where)
        settings = OutboxSettings(
            backend=self.field(o, path, "backend", _outbox_backend, base.backend),
            path=where,
            lease=self.field(o, path, "lease", _positive_duration, base.lease),
            max_attempts=self.field(o, path, "max_attempts", _int_in(1, 1000), base.max_attempts),
            ttl=nullable(o, "ttl", base.ttl),
            backoff_base=self.field(b, bpath, "base", _positive_duration, base.backoff_base),
            backoff_max=self.field(b, bpath, "max", _positive_duration, base.backoff_max),
            concurrency=self.field(o, path, "concurrency", _int_in(1, 10_000), base.concurrency),
            poll=self.field(o, path, "poll", _positive_duration, base.poll),
            rate_margin=self.field(o, path, "rate_margin", parse_duration, base.rate_margin),
            synchronous=self.field(o, path, "synchronous", _synchronous, base.synchronous),
            retention=nullable(o, "retention", base.retention),
        )
        if settings.lease < 1.0:
            self.error(
                (*path, "lease"),
                "lease must be at least 1s: a worker renews its leases every third of it",
            )
        if settings.backoff_max < settings.backoff_base:
            self.error((*bpath, "max"), "backoff max must be at least backoff base")
        if settings.backend == "redis" and state.backend != "redis":
            self.error(
                (*path, "backend"),
                "outbox backend redis keeps the queue in the Redis of the 'state' section: "
                "add state: {backend: redis, url: redis://...}",
            )
        return settings

    def defaults(self, value: Any) -> Defaults:
        path: yamlsource.Path = ("defaults",)
        d = self.mapping(value, path, DEFAULTS_KEYS, what="defaults")
        base = Defaults()
        return Defaults(
            default_region=self.field(d, path, "default_region", _region, None),
            deadline=self.field(d, path, "deadline", _positive_duration, base.deadline),
            max_attempts=self.field(d, path, "max_attempts", _int_in(1, 100), base.max_attempts),
            max_segments=self.field(d, path, "max_segments", _int_in(1, 255), base.max_segments),
            breaker=self.breaker(d.get("breaker"), (*path, "breaker"), base.breaker),
            breaker_scope=self.field(d, path, "breaker_scope", _breaker_scope, "provider"),
            max_rate_wait=self.field(d, path, "max_rate_wait", parse_duration, base.max_rate_wait),
            webhook_url=self.field(d, path, "webhook_url", _url, None),
            currency=self.field(d, path, "currency", _currency, base.currency),
            metric_countries=self.field(
                d, path, "metric_countries", _region_set, base.metric_countries
            ),
            opt_out_categories=self.field(
                d, path, "opt_out_categories", _name_set("category"), base.opt_out_categories
            ),
            receipt_timeout=(
                None
                if "receipt_timeout" in d and d["receipt_timeout"] is None
                else self.field(
                    d, path, "receipt_timeout", _positive_duration, base.receipt_timeout
                )
            ),
            resend_ttl=self.field(d, path, "resend_ttl", _positive_duration, base.resend_ttl),
        )

    def breaker(self, value: Any, path: yamlsource.Path, base: BreakerSettings) -> BreakerSettings:
        b = self.mapping(value, path, BREAKER_KEYS, what="breaker")
        window, window_seconds = base.window, base.window_seconds
        if b.get("window") is not None:
            raw = b["window"]
            if isinstance(raw, int) and not isinstance(raw, bool):
                if not 1 <= raw <= 1_000_000:
                    self.error(
                        (*path, "window"),
                        f"window must be from 1 to 1,000,000 calls (or a duration), got {shown(raw)}",
                    )
                else:
                    window, window_seconds = raw, None
            else:
                try:
                    window_seconds = _positive_duration(raw)
                except ValueError:
                    self.error(
                        (*path, "window"),
                        f"window is a number of calls (50) or a duration (60s), got {shown(raw)}",
                    )
        consecutive = base.consecutive_failures
        if "consecutive_failures" in b:
            consecutive = self.field(b, path, "consecutive_failures", _int_in(1, 1_000_000), None)
        settings = BreakerSettings(
            window=window,
            window_seconds=window_seconds,
            min_calls=self.field(b, path, "min_calls", _int_in(1, 1_000_000), base.min_calls),
            failure_rate=self.field(b, path, "failure_rate", parse_fraction, base.failure_rate),
            consecutive_failures=consecutive,
            open_for=self.field(b, path, "open_for", _positive_duration, base.open_for),
            max_open_for=self.field(b, path, "max_open_for", _positive_duration, base.max_open_for),
            half_open_probes=self.field(
                b, path, "half_open_probes", _int_in(1, 1000), base.half_open_probes
            ),
            min_delivery_ratio=self.field(
                b, path, "min_delivery_ratio", parse_fraction, base.min_delivery_ratio
            ),
            min_receipts=self.field(
                b, path, "min_receipts", _int_in(1, 1_000_000), base.min_receipts
            ),
        )
        if settings.max_open_for < settings.open_for:
            self.error((*path, "max_open_for"), "max_open_for must be at least open_for")
        return settings

    def categories(self, value: Any) -> dict[str, Category]:
        out = dict(_DEFAULT_CATEGORIES)
        if value is None:
            return out
        path: yamlsource.Path = ("categories",)
        if isinstance(value, list):
            for i, name in enumerate(value):
                if not isinstance(name, str) or not name:
                    self.error((*path, i), f"a category name must be a string, got {shown(name)}")
                    continue
                out.setdefault(name, Category(name, "failover"))
            return out
        cats = self.mapping(
            value,
            path,
            frozenset(value) if isinstance(value, dict) else frozenset(),
            what="categories",
        )
        for name, body in cats.items():
            c = self.mapping(body, (*path, name), CATEGORY_KEYS, what=f"category '{name}'")
            default = out.get(name, Category(name, "failover")).on_timeout
            on_timeout = self.field(c, (*path, name), "on_timeout", _on_timeout, default)
            out[name] = Category(name, on_timeout)
        return out

    def providers(self, value: Any, defaults: Defaults) -> dict[str, ProviderConfig]:
        from smsroute.providers import load_provider_class, provider_types

        path: yamlsource.Path = ("providers",)
        if value is None:
            self.error((), "the config has no 'providers' section: declare at least one provider")
            return {}
        if not isinstance(value, dict) or not value:
            self.error(path, "providers must be a non-empty mapping of name -> settings")
            return {}
        known_types = provider_types()
        out: dict[str, ProviderConfig] = {}
        for name, body in value.items():
            ppath = (*path, name)
            if not isinstance(body, dict):
                self.error(ppath, f"provider '{name}' must be a mapping, got {_kind(body)}")
                continue
            type_name = body.get("type")
            if not isinstance(type_name, str):
                self.error(
                    ppath, f"provider '{name}' needs a 'type' ({', '.join(sorted(known_types))})"
                )
                continue
            if type_name not in known_types:
                hint = difflib.get_close_matches(type_name, sorted(known_types), n=1)
                suggestion = f"did you mean '{hint[0]}'? " if hint else ""
                self.error(
                    (*ppath, "type"),
                    f"unknown provider type '{type_name}': {suggestion}"
                    f"known types: {', '.join(sorted(known_types))} "
                    f"(third-party adapters register under the entry point group "
                    f"'smsroute.providers')",
                )
                continue
            try:
                cls = load_provider_class(type_name)
            except Exception as exc:  # an installed third-party adapter is broken
                self.error((*ppath, "type"), f"cannot load provider type '{type_name}': {exc}")
                continue
            allowed = PROVIDER_COMMON_KEYS | cls.required_options | cls.optional_options
            self.mapping(body, ppath, allowed, what=f"provider '{name}' (type {type_name})")
            for option in sorted(cls.required_options):
                if body.get(option) in (None, ""):
                    self.error(
                        ppath,
                        f"provider '{name}' (type {type_name}) needs '{option}'",
                    )
            options = {
                k: v for k, v in body.items() if k in cls.required_options | cls.optional_options
            }
            try:
                option_problems = cls.check_options(body)
            except Exception as exc:  # an adapter's check meeting a value it did not expect
                option_problems = [
                    (
                        "type",
                        f"the '{type_name}' adapter failed checking provider '{name}' "
                        f"({type(exc).__name__}): check its options' values and types",
                    )
                ]
            for option, problem in option_problems:
                if not isinstance(body.get(option), yamlsource.Placeholder):
                    self.error((*ppath, option), problem)
            receipts_at = body.get("status_callback") or defaults.webhook_url
            for option, problem in cls.check_webhook_options(body, receipts_at):
                self.error((*ppath, option), problem)
            currency = self.field(body, ppath, "currency", _currency, defaults.currency)
            out[name] = ProviderConfig(
                name=name,
                type=type_name,
                base_url=self.field(body, ppath, "base_url", _url, None),
                timeout=self.field(body, ppath, "timeout", _positive_duration, 5.0),
                rate_limit=self.field(body, ppath, "rate_limit", parse_rate, None),
                burst=self.field(body, ppath, "burst", _int_in(1, 1_000_000), None),
                max_concurrency=self.field(
                    body, ppath, "max_concurrency", _int_in(1, 100_000), None
                ),
                prices=self.prices(body.get("prices"), (*ppath, "prices"), currency),
                sender=self.field(body, ppath, "from", _sender, None),
                breaker=self.breaker(body.get("breaker"), (*ppath, "breaker"), defaults.breaker),
                breaker_scope=self.field(
                    body, ppath, "breaker_scope", _breaker_scope, defaults.breaker_scope
                ),
                status_callback=self.field(body, ppath, "status_callback", _url, None),
                options=options,
            )
        self.refused_providers = {str(name) for name in value if name not in out}
        return out

    def prices(self, value: Any, path: yamlsource.Path, currency: str) -> PriceTable:
        if value is None:
            return PriceTable(currency=currency)
        if isinstance(value, str):
            return self.price_file(value, path, currency)
        if not isinstance(value, dict):
            self.error(
                path, "prices must be a mapping {COUNTRY: price, default: price} or a file path"
            )
            return PriceTable(currency=currency)
        return self.price_mapping(value, path, currency, self.src)

    def price_mapping(
        self, value: dict[str, Any], path: yamlsource.Path, currency: str, src: Located
    ) -> PriceTable:
        prices: dict[str, float] = {}
        default: float | None = None
        for key, raw in value.items():
            if key == "currency":
                try:
                    currency = _currency(raw)
                except ValueError as exc:
                    self.problems.append(src.problem((*path, key), str(exc)))
                continue
            try:
                price = _price(raw)
            except ValueError as exc:
                self.problems.append(src.problem((*path, key), str(exc)))
                continue
            if key == "default":
                default = price
            elif isinstance(key, str) and len(key) == 2 and key.isalpha() and key.isupper():
                prices[key] = price
            else:
                self.problems.append(
                    src.problem(
                        (*path, key),
                        f"price keys are ISO country codes like DE or 'default', got {shown(key)}",
                        at_key=True,
                    )
                )
        return PriceTable(prices=prices, default=default, currency=currency)

    def price_file(self, ref: str, path: yamlsource.Path, currency: str) -> PriceTable:
        file = Path(ref)
        if not file.is_absolute():
            file = self.base_dir / file
            try:
                if not file.exists():
                    file = Path.cwd() / ref
            except (OSError, ValueError):  # a name too long, a NUL byte: read_bytes says
                pass
        try:
            data = yamlsource.read_bytes(file)
        except yamlsource.ReadFailure as exc:
            self.error(path, f"cannot read price file {shown(ref)}: {exc}")
            return PriceTable(currency=currency)
        try:
            located = yamlsource.load(yamlsource.decode(data, str(file)), str(file))
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return PriceTable(currency=currency)
        value = located.value
        if isinstance(value, dict) and isinstance(value.get("prices"), dict):
            if "currency" in value:
                try:
                    currency = _currency(value["currency"])
                except ValueError as e:
                    self.problems.append(located.problem(("currency",), str(e)))
            return self.price_mapping(value["prices"], ("prices",), currency, located)
        if isinstance(value, dict):
            return self.price_mapping(value, (), currency, located)
        self.problems.append(located.problem((), "a price file must be a mapping"))
        return PriceTable(currency=currency)

    def rules(
        self,
        value: Any,
        providers: Mapping[str, ProviderConfig],
        categories: Mapping[str, Category],
    ) -> tuple[Rule, ...]:
        path: yamlsource.Path = ("rules",)
        if value is None:
            self.error((), "the config has no 'rules' section: add at least a catch-all rule")
            return ()
        if not isinstance(value, list) or not value:
            self.error(path, "rules must be a non-empty list")
            return ()
        out: list[Rule] = []
        names: set[str] = set()
        for i, body in enumerate(value):
            rpath = (*path, i)
            r = self.mapping(body, rpath, RULE_KEYS, what="a rule")
            if not isinstance(body, dict):
                continue
            name = r.get("name", f"rule-{i + 1}")
            if not isinstance(name, str) or not name:
                self.error((*rpath, "name"), "a rule's name must be a non-empty string")
                name = f"rule-{i + 1}"
            if name in names:
                self.error((*rpath, "name"), f"rule name '{name}' is used twice")
            names.add(name)
            provider_names = self.rule_providers(
                r.get("providers"), (*rpath, "providers"), providers
            )
            strategy: Strategy = self.field(r, rpath, "strategy", _strategy, "priority")
            weights = self.weights(r.get("weights"), (*rpath, "weights"), provider_names)
            written = r.get("weights")
            # (weights written but all refused: each refusal is reported already)
            if (
                strategy == "weighted"
                and not weights
                and not (isinstance(written, dict) and written)
            ):
                self.error(
                    rpath,
                    f"rule '{name}' uses strategy 'weighted' but gives no 'weights' "
                    "(e.g. weights: {provider-a: 70, provider-b: 30})",
                )
            sw = self.mapping(
                r.get("score_weights"),
                (*rpath, "score_weights"),
                SCORE_WEIGHT_KEYS,
                what="score_weights",
            )
            swp = (*rpath, "score_weights")
            out.append(
                Rule(
                    name=name,
                    match=self.match(r.get("match"), (*rpath, "match"), categories),
                    providers=provider_names,
                    strategy=strategy,
                    weights=weights,
                    on_timeout=self.field(r, rpath, "on_timeout", _on_timeout, None),
                    max_attempts=self.field(r, rpath, "max_attempts", _int_in(1, 100), None),
                    deadline=self.field(r, rpath, "deadline", _positive_duration, None),
                    score_weights=ScoreWeights(
                        price=self.field(sw, swp, "price", _non_negative, 1.0),
                        success=self.field(sw, swp, "success", _non_negative, 1.0),
                        latency=self.field(sw, swp, "latency", _non_negative, 1.0),
                    ),
                    latency_buffer=self.field(r, rpath, "latency_buffer", parse_fraction, 0.2),
                    on_undelivered=self.field(
                        r, rpath, "on_undelivered", _on_undelivered, "ignore"
                    ),
                )
            )
        if out and not any(rule.match.is_catch_all for rule in out):
            self.error(
                path,
                "no catch-all rule: the last rule should have no 'match' so every message "
                "has a route (e.g. '- name: default\\n  providers: [...]')",
            )
        else:
            for i, rule in enumerate(out[:-1]):
                if rule.match.is_catch_all:
                    self.error(
                        (*path, i),
                        f"rule '{rule.name}' matches every message, so the rules after it "
                        "can never match: move it to the end",
                    )
        return tuple(out)

    def rule_providers(
        self, value: Any, path: yamlsource.Path, providers: Mapping[str, ProviderConfig]
    ) -> tuple[str, ...]:
        if value is None:
            self.error(path, "a rule needs 'providers': a list of provider names")
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.error(path, "providers must be a non-empty list of provider names")
            return ()
        out: list[str] = []
        for j, name in enumerate(value):
            if not isinstance(name, str):
                self.error((*path, j), f"a provider name must be a string, got {shown(name)}")
                continue
            if providers and name not in providers and name not in self.refused_providers:
                hint = difflib.get_close_matches(name, sorted(providers), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.error(
                    (*path, j),
                    f"unknown provider '{name}'{suggestion} "
                    f"(declared: {', '.join(sorted(providers))})",
                )
                continue
            if name in out:
                self.error((*path, j), f"provider '{name}' is listed twice")
                continue
            out.append(name)
        return tuple(out)

    def weights(
        self, value: Any, path: yamlsource.Path, provider_names: tuple[str, ...]
    ) -> dict[str, float]:
        if value is None:
            return {}
        w = self.mapping(value, path, frozenset(provider_names), what="weights")
        out: dict[str, float] = {}
        for name, raw in w.items():
            if name not in provider_names:
                continue
            try:
                out[name] = _weight(raw)
            except ValueError as exc:
                self.error((*path, name), str(exc))
        if out and not any(out.values()):
            self.error(path, "at least one weight must be positive")
        return out

    def match(self, value: Any, path: yamlsource.Path, categories: Mapping[str, Category]) -> Match:
        m = self.mapping(value, path, MATCH_KEYS, what="match")

        def strings(key: str, check: Callable[[str], str]) -> list[str] | None:
            raw = m.get(key)
            if raw is None:
                return None
            items = [raw] if isinstance(raw, str | int) else raw
            if not isinstance(items, list) or not items:
                self.error((*path, key), f"{key} must be a value or a non-empty list of values")
                return None
            out: list[str] = []
            for j, item in enumerate(items):
                where = (*path, key, j) if isinstance(raw, list) else (*path, key)
                try:
                    out.append(check(item))
                except (ValueError, TypeError) as exc:
                    self.error(where, str(exc))
            return out

        def category(name: Any) -> str:
            if not isinstance(name, str):
                raise ValueError(f"a category must be a name, got {shown(name)}")
            if name not in categories:
                hint = difflib.get_close_matches(str(name), sorted(categories), n=1)
                suggestion = f"did you mean '{hint[0]}'? " if hint else ""
                raise ValueError(
                    f"unknown category '{name}': {suggestion}declare it under 'categories' "
                    f"(known: {', '.join(sorted(categories))})"
                )
            return str(name)

        countries = strings("country", _region)
        prefixes = strings("prefix", _prefix)
        number_types = strings("number_type", _number_type)
        cats = strings("category", category)
        senders = strings("sender", _nonempty("sender"))
        tags = strings("tags", _nonempty("tag"))
        return Match(
            countries=frozenset(countries) if countries is not None else None,
            prefixes=tuple(prefixes) if prefixes is not None else None,
            number_types=(
                frozenset(NumberType(t) for t in number_types) if number_types is not None else None
            ),
            categories=frozenset(cats) if cats is not None else None,
            senders=frozenset(senders) if senders is not None else None,
            tags=frozenset(tags) if tags is not None else None,
        )


# -- value parsers: each raises ValueError with the sentence a user reads ------------


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number from {low} to {high}, got {shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    return parse


#: Highest price of one segment accepted, in the provider's currency.
MAX_PRICE = 1e9
#: Highest rule weight or score weight accepted (weights are relative).
MAX_WEIGHT = 1e6


def _number_in(what: str, high: float) -> Callable[[Any], float]:
    """A finite number from 0 to ``high`` (``.nan``, ``.inf`` and huge numbers refused)."""

    def parse(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= high  # False for nan
        ):
            raise ValueError(
                f"{what} must be a non-negative number of at most {high:,.0f}, got {shown(value)}"
            )
        return float(value)

    return parse


_price = _number_in("a price", MAX_PRICE)
_weight = _number_in("a weight", MAX_WEIGHT)
_non_negative = _number_in("a score weight", MAX_WEIGHT)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration greater than zero, got {shown(value)}")
    return seconds


def _region(value: Any) -> str:
    import phonenumbers

    if not isinstance(value, str) or value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"expected an ISO 3166 country code like US or DE, got {shown(value)}")
    return value.upper()


def _region_set(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError(
            f"expected a list of ISO 3166 country codes like [US, DE], got {shown(value)}"
        )
    return frozenset(_region(item) for item in value)


def _prefix(value: Any) -> str:
    # YAML reads an unquoted +4915 as the integer 4915: put the plus back.
    text = f"+{value}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    text = text.strip()
    digits = text[1:]
    if not text.startswith("+") or not (digits.isascii() and digits.isdigit()) or len(digits) > 15:
        raise ValueError(f"expected an E.164 prefix like +4915, got {shown(value)}")
    return text


def _number_type(value: Any) -> str:
    names = [t.value for t in NumberType]
    if value not in names:
        hint = difflib.get_close_matches(str(value), names, n=1)
        suggestion = f"did you mean '{hint[0]}'? " if hint else ""
        raise ValueError(
            f"unknown number_type {shown(value)}: {suggestion}known: {', '.join(names)}"
        )
    return str(value)


def _nonempty(what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"a {what} must be a non-empty string, got {shown(value)}")
        return value

    return parse


def _file_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a database path must be a non-empty string, got {shown(value)}")
    if "\0" in value:
        raise ValueError("a database path cannot contain a NUL byte (\\0): remove it")
    return value


def _name_set(what: str) -> Callable[[Any], frozenset[str]]:
    def parse(value: Any) -> frozenset[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ValueError(f"expected a list of {what} names, got {shown(value)}")
        return frozenset(items)

    return parse


def _choice(options: tuple[str, ...], what: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value not in options:
            hint = difflib.get_close_matches(str(value), options, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            raise ValueError(
                f"unknown {what} {shown(value)}: {suggestion}choose one of {', '.join(options)}"
            )
        return value

    return parse


_strategy: Callable[[Any], Strategy] = _choice(STRATEGIES, "strategy")
_on_timeout: Callable[[Any], OnTimeout] = _choice(("failover", "stop"), "on_timeout")
_on_undelivered: Callable[[Any], OnUndelivered] = _choice(("resend", "ignore"), "on_undelivered")
_outbox_backend: Callable[[Any], OutboxBackend] = _choice(("sqlite", "redis"), "outbox backend")
_synchronous: Callable[[Any], Synchronous] = _choice(("normal", "full"), "synchronous")
_breaker_scope: Callable[[Any], BreakerScope] = _choice(
    ("provider", "provider_country"), "breaker_scope"
)


_state_backend: Callable[[Any], StateBackendName] = _choice(("memory", "redis"), "state backend")


def _redis_url(value: Any) -> str:
    if isinstance(value, yamlsource.Placeholder):
        return value
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "expected a Redis URL like redis://127.0.0.1:6379/0 (or rediss://, unix://), "
            f"got {shown(value)}"
        )
    return value


def _key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(
            f"expected a key prefix without spaces like 'smsroute:', got {shown(value)}"
        )
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {shown(value)}")
    return value


def _currency(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise ValueError(f"expected an ISO 4217 currency code like USD, got {shown(value)}")
    return value.upper()


def _sender(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"'from' must be a phone number, short code or sender ID, got {shown(value)}"
        )
    return value


__all__ = [
    "BreakerSettings",
    "Category",
    "Config",
    "Defaults",
    "Match",
    "OutboxSettings",
    "PriceTable",
    "ProviderConfig",
    "Rule",
    "ScoreWeights",
    "StateSettings",
    "format_path",
    "load_config",
    "parse_config",
]
