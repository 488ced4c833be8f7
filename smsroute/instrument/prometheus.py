"""Prometheus metrics: the hook a router installs by default, and the exposition.

The metric names and labels are a contract; dashboards and alerts are built on them.

=============================================  ==================================  =========
metric                                         labels                              type
=============================================  ==================================  =========
``smsroute_attempts_total``                    provider, country, outcome          counter
``smsroute_attempt_duration_seconds``          provider, outcome                   histogram
``smsroute_messages_total``                    category, status                    counter
``smsroute_message_duration_seconds``          category                            histogram
``smsroute_failovers_total``                   from_provider, to_provider, reason  counter
``smsroute_circuit_state``                     provider, scope                     gauge
``smsroute_circuit_transitions_total``         provider, scope, to_state           counter
``smsroute_ratelimit_wait_seconds``            provider                            histogram
``smsroute_ratelimit_skips_total``             provider                            counter
``smsroute_inflight_requests``                 provider                            gauge
``smsroute_segments_total``                    provider, country                   counter
``smsroute_cost_total``                        provider, currency                  counter
``smsroute_delivery_reports_total``            provider, country, status           counter
``smsroute_delivery_latency_seconds``          provider                            histogram
``smsroute_webhook_refusals_total``            provider, kind, reason              counter
``smsroute_config_reloads_total``              result                              counter
``smsroute_state_backend_errors_total``        operation                           counter
``smsroute_rule_provider_info``                rule, provider                      gauge (1)
``smsroute_guard_refusals_total``              guard, category, country            counter
``smsroute_guard_overruns_total``               per, country                        counter
``smsroute_guard_anomaly_tripped``             category, country                   gauge
``smsroute_guard_anomaly_transitions_total``   category, country, to_state         counter
``smsroute_budget_spent``                      scope                               gauge
``smsroute_budget_limit``                      scope                               gauge
``smsroute_info``                              version                             gauge (1)
``smsroute_smpp_binds_up``                     provider                            gauge
``smsroute_smpp_binds_down``                   provider                            gauge
``smsroute_smpp_window_in_use``                provider                            gauge
``smsroute_smpp_window_size``                  provider                            gauge
=============================================  ==================================  =========

Every label value comes from a bounded set: provider, rule and category names
from the config, outcomes and statuses from fixed lists, and ``country`` from
``defaults.metric_countries`` (an ISO code) or ``other``.  No label ever holds
a phone number, a text or a secret.

``smsroute_circuit_state`` is 0 closed, 1 half-open, 2 open; with
``breaker_scope: provider_country`` it is the worst state among that provider's
country breakers.  ``smsroute_rule_provider_info`` says which providers each rule
may use, so an alert can tell when every provider of a rule is open.

The ``smsroute_smpp_*`` gauges are read at scrape time from the adapters of the
config in force (:meth:`PrometheusHook.watch_links`), one series per provider that
keeps connections (``type: smpp``); not in multi-process mode, where a scrape
cannot reach the other workers' binds.

Several routers sharing one registry (the default: prometheus_client's global
``REGISTRY``) share the metrics: creating a second router does not fail.

``Router.send`` is a hot path, so in one process the values live in plain
Python objects that the hook adds to (a fraction of a microsecond each, no
lock: a router's events all come from its event loop's thread) and that a
collector reads at scrape time.  In prometheus_client's multi-process mode
(``PROMETHEUS_MULTIPROC_DIR`` set) they are prometheus_client's own metrics,
which write every change to the shared files.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from smsroute.config import DEFAULT_METRIC_COUNTRIES, BreakerScope, Config
from smsroute.instrument._values import Family, LiveGauge, ValuesCollector
from smsroute.instrument.events import (
    AnomalyTransition,
    AttemptFinished,
    BreakerTransition,
    BudgetSpent,
    ConcurrencySkip,
    ConfigReloaded,
    DeliveryReceived,
    Event,
    Failover,
    GuardOverrun,
    GuardRefused,
    MessageFinished,
    RateLimitWait,
    StateBackendError,
    WebhookRefused,
)
from smsroute.message import DELIVERY_STATUSES, Outcome
from smsroute.version import __version__

__all__ = [
    "ATTEMPT_BUCKETS",
    "DELIVERY_BUCKETS",
    "RATELIMIT_BUCKETS",
    "CollectorRegistry",
    "PrometheusHook",
    "exposition",
]

#: Attempt and message durations: 5 ms to 30 s.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Waits for a provider's rate limit: 1 ms up to a few seconds (``max_rate_wait``).
RATELIMIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Acceptance to delivery receipt: a second to a day.
DELIVERY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)

#: ``operation`` values of ``smsroute_state_backend_errors_total`` (anything else: ``other``).
STATE_OPERATIONS = (
    "sync", "breaker", "ratelimit", "pause", "optouts", "receipts", "status", "guards"
)  # fmt: skip

#: The gauges of providers that keep connections: (name, help, LinkState attribute).
LINK_GAUGES = (
    ("smsroute_smpp_binds_up", "SMPP binds bound now, per provider.", "up"),
    ("smsroute_smpp_binds_down", "SMPP binds not bound now (connecting, refused, lost).", "down"),
    (
        "smsroute_smpp_window_in_use",
        "submit_sm awaiting their submit_sm_resp now, over every bind of the provider.",
        "in_flight",
    ),
    ("smsroute_smpp_window_size", "The window over every bind: window x binds.", "window"),
)


class Links(Protocol):
    """What a provider that keeps connections reports (``smsroute.providers.base.LinkState``)."""

    @property
    def up(self) -> int: ...
    @property
    def down(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def window(self) -> int: ...


#: ``smsroute_circuit_state`` values.
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}

OTHER = "other"


# -- the metrics of one registry -------------------------------------------------------


class _Metrics:
    """The metrics of one registry, shared by every hook that uses it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.shared_files = bool(multiprocess_dir())
        self.families: list[Family] = []
        self.attempts = self.counter(
            "smsroute_attempts",
            "Requests made to providers, by the outcome of each.",
            ["provider", "country", "outcome"],
        )
        self.attempt_duration = self.histogram(
            "smsroute_attempt_duration_seconds",
            "Time from sending a request to a provider to its answer (or timeout).",
            ["provider", "outcome"],
            ATTEMPT_BUCKETS,
        )
        self.messages = self.counter(
            "smsroute_messages",
            "Messages handed to send(), by final status.",
            ["category", "status"],
        )
        self.message_duration = self.histogram(
            "smsroute_message_duration_seconds",
            "Time send() took end to end, every attempt included.",
            ["category"],
            ATTEMPT_BUCKETS,
        )
        self.failovers = self.counter(
            "smsroute_failovers",
            "Moves from one provider to the next within one message; reason is the outcome that caused it.",
            ["from_provider", "to_provider", "reason"],
        )
        self.circuit_state = self.gauge(
            "smsroute_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open (worst over countries for scope provider_country).",
            ["provider", "scope"],
            "livemax",
        )
        self.circuit_transitions = self.counter(
            "smsroute_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["provider", "scope", "to_state"],
        )
        self.ratelimit_wait = self.histogram(
            "smsroute_ratelimit_wait_seconds",
            "Time a send waited for a provider's rate limit before its request.",
            ["provider"],
            RATELIMIT_BUCKETS,
        )
        self.ratelimit_skips = self.counter(
            "smsroute_ratelimit_skips",
            "Times a provider was skipped because its rate limit or Retry-After pause would take too long.",
            ["provider"],
        )
        self.concurrency_skips = self.counter(
            "smsroute_concurrency_skips",
            "Times a provider was skipped because every max_concurrency slot stayed taken for its timeout.",
            ["provider"],
        )
        self.inflight = self.gauge(
            "smsroute_inflight_requests",
            "Requests to a provider awaiting an answer now.",
            ["provider"],
            "livesum",
        )
        self.segments = self.counter(
            "smsroute_segments",
            "SMS segments of accepted messages.",
            ["provider", "country"],
        )
        self.cost = self.counter(
            "smsroute_cost",
            "Price of accepted messages from the configured price tables, in currency units.",
            ["provider", "currency"],
        )
        self.delivery_reports = self.counter(
            "smsroute_delivery_reports",
            "Delivery receipts received, by status.",
            ["provider", "country", "status"],
        )
        self.delivery_latency = self.histogram(
            "smsroute_delivery_latency_seconds",
            "Time from a provider accepting a message to its delivery receipt.",
            ["provider"],
            DELIVERY_BUCKETS,
        )
        self.webhook_refusals = self.counter(
            "smsroute_webhook_refusals",
            "Webhook requests refused (bad signature, malformed, too large, unknown message).",
            ["provider", "kind", "reason"],
        )
        self.config_reloads = self.counter(
            "smsroute_config_reloads",
            "Config reloads, by result (success or error).",
            ["result"],
        )
        self.state_backend_errors = self.counter(
            "smsroute_state_backend_errors",
            "Calls to the shared state backend (Redis) that failed; sending went on with local state.",
            ["operation"],
        )
        self.rule_provider = self.gauge(
            "smsroute_rule_provider_info",
            "1 for each provider a routing rule may use.",
            ["rule", "provider"],
            "max",
        )
        self.guard_refusals = self.counter(
            "smsroute_guard_refusals",
            "Messages refused by a fraud or spend guard (geo, velocity, anomaly, budget) before any provider.",
            ["guard", "category", "country"],
        )
        self.guard_overruns = self.counter(
            "smsroute_guard_overruns",
            "Messages a replica accepted past a velocity limit other replicas had reached "
            "(state.guard_checks: local), by the limit's kind (number, prefix, country).",
            ["per", "country"],
        )
        self.anomaly_tripped = self.gauge(
            "smsroute_guard_anomaly_tripped",
            "1 while the anomaly guard of a category and country is tripped, else 0.",
            ["category", "country"],
            "max",
        )
        self.anomaly_transitions = self.counter(
            "smsroute_guard_anomaly_transitions",
            "Trips and releases of the anomaly guard, by the state entered.",
            ["category", "country", "to_state"],
        )
        self.budget_spent = self.gauge(
            "smsroute_budget_spent",
            "Spend counted against a budget in its current hour, day or month (UTC).",
            ["scope"],
            "max",
        )
        self.budget_limit = self.gauge(
            "smsroute_budget_limit",
            "The configured cap of a budget, in the same currency as smsroute_budget_spent.",
            ["scope"],
            "max",
        )
        self.info = self.gauge("smsroute_info", "smsroute's version; always 1.", ["version"], "max")
        #: Hooks whose router has providers keeping connections (SMPP binds), read at scrape time.
        self.link_hooks: weakref.WeakSet[PrometheusHook] = weakref.WeakSet()
        if not self.shared_files:
            for name, documentation, figure in LINK_GAUGES:
                self.families.append(
                    LiveGauge(name, documentation, ["provider"], self._link_reader(figure))
                )
        if not self.shared_files:
            registry.register(ValuesCollector(self.families))
        self.info.labels(__version__).set(1)
        for result in ("success", "error"):
            self.config_reloads.labels(result)
        #: The hooks of every router on this registry: ``smsroute_circuit_state`` is the
        #: worst breaker of a provider (by name) among them all, so that one router's
        #: closed breaker does not hide another's open one.
        self.breaker_hooks: weakref.WeakSet[PrometheusHook] = weakref.WeakSet()

    def show_circuit(self, labels: tuple[str, str]) -> None:
        """Set ``smsroute_circuit_state`` of (provider, scope) to the worst state any
        router's breakers of it are in; remove the series when no router has it."""
        values = [
            value
            for hook in list(self.breaker_hooks)
            if (states := hook.breakers.get(labels)) is not None
            for value in (*states.values(), 0)
        ]
        if values:
            self.circuit_state.labels(*labels).set(max(values))
        else:
            _remove(self.circuit_state, labels)

    def _link_reader(self, figure: str) -> Callable[[], Iterator[tuple[tuple[str], float]]]:
        def read() -> Iterator[tuple[tuple[str], float]]:
            for hook in list(self.link_hooks):
                for provider, links in hook.links().items():
                    yield (provider,), float(getattr(links, figure))

        return read

    # Each returns an object with prometheus_client's ``labels()`` and ``remove()``:
    # a Family, or in multi-process mode prometheus_client's own metric.

    def counter(self, name: str, documentation: str, labelnames: list[str]) -> Any:
        if self.shared_files:
            return Counter(name, documentation, labelnames, registry=self.registry)
        return self._family("counter", name, documentation, labelnames)

    def gauge(
        self, name: str, documentation: str, labelnames: list[str], multiprocess_mode: str
    ) -> Any:
        if self.shared_files:
            return Gauge(
                name,
                documentation,
                labelnames,
                registry=self.registry,
                multiprocess_mode=multiprocess_mode,  # type: ignore[arg-type]
            )
        return self._family("gauge", name, documentation, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]
    ) -> Any:
        if self.shared_files:
            return Histogram(
                name, documentation, labelnames, buckets=buckets, registry=self.registry
            )
        return self._family("histogram", name, documentation, labelnames, buckets)

    def _family(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: list[str],
        buckets: tuple[float, ...] = (),
    ) -> Family:
        family = Family(kind, name, documentation, labelnames, buckets)
        self.families.append(family)
        return family


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics]
_BY_REGISTRY = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = _Metrics(registry)
    return metrics


class PrometheusHook:
    """Turns router events into the metrics above.  A router installs one by default.

    >>> registry = CollectorRegistry()
    >>> router = Router(config, registry=registry)          # the usual way
    >>> registry.get_sample_value("smsroute_info", {"version": smsroute.__version__})
    1.0

    Built by hand (``Router(config, metrics=False, hooks=[PrometheusHook(registry)])``)
    it works too, without the in-flight gauge and with ``config`` read only once.
    ``config`` is the config, or a callable returning the one in force (re-read after
    every successful reload): it names the providers and rules and the countries
    that keep their own label.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        config: Config | Callable[[], Config] | None = None,
    ) -> None:
        self.registry: CollectorRegistry = registry if registry is not None else REGISTRY
        self._m = _metrics_for(self.registry)
        self._shared_files = bool(self._m.shared_files)
        self._config_source = config
        self._countries: frozenset[str] = DEFAULT_METRIC_COUNTRIES
        self._providers: frozenset[str] | None = None
        self._rule_labels: set[tuple[str, str]] = set()
        self._circuit_labels: set[tuple[str, BreakerScope]] = set()
        #: (provider, scope) -> country (None for a provider-wide breaker) -> state value,
        #: of this hook's router (see ``_Metrics.show_circuit``).
        self.breakers: dict[tuple[str, str], dict[str | None, int]] = {}
        # Label children cached by the event fields they come from: the hot path
        # does one dict lookup per event, then increments.
        self._attempt_children: dict[tuple[str, str, Any], tuple[Any, Any]] = {}
        self._message_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._segment_children: dict[tuple[str, str], Any] = {}
        self._cost_children: dict[tuple[str, str], Any] = {}
        self._inflight_children: dict[str, Any] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            AttemptFinished: self._attempt,
            MessageFinished: self._message,
            Failover: self._failover,
            BreakerTransition: self._breaker,
            RateLimitWait: self._ratelimit,
            ConcurrencySkip: self._concurrency_skip,
            ConfigReloaded: self._reloaded,
            DeliveryReceived: self._delivery,
            WebhookRefused: self._webhook_refused,
            StateBackendError: self._state_backend_error,
            GuardRefused: self._guard_refused,
            GuardOverrun: self._guard_overrun,
            AnomalyTransition: self._anomaly,
            BudgetSpent: self._budget_spent,
        }
        self._budget_labels: set[str] = set()
        self._links: Callable[[], Mapping[str, Links]] | None = None
        if config is not None:
            self.configure(config() if callable(config) else config)

    # -- configuration --------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Take the providers, rules and metric countries of ``config``.

        Series of providers and rules no longer configured are removed; every
        configured provider shows a closed breaker and nothing in flight until
        events say otherwise.  Counters whose labels are known from the config
        start at 0, so that ``rate()`` and ``increase()`` see their first event.
        """
        m = self._m
        self._countries = config.defaults.metric_countries
        self._providers = frozenset(config.providers)
        self._attempt_children.clear()
        self._segment_children.clear()
        self._inflight_children.clear()
        if config.state.backend != "memory":
            for operation in STATE_OPERATIONS:
                m.state_backend_errors.labels(operation)

        rules = {(rule.name, p) for rule in config.rules for p in rule.providers}
        for labels in self._rule_labels - rules:
            _remove(m.rule_provider, labels)
        for labels in rules:
            m.rule_provider.labels(*labels).set(1)
        self._rule_labels = rules

        circuits = {(name, p.breaker_scope) for name, p in config.providers.items()}
        m.breaker_hooks.add(self)
        for labels in self._circuit_labels - circuits:
            self.breakers.pop(labels, None)
            m.show_circuit(labels)
        for labels in circuits:
            self.breakers.setdefault(labels, {})
            m.show_circuit(labels)
        self._circuit_labels = circuits
        for name, p in config.providers.items():
            self.inflight(name)
            m.ratelimit_skips.labels(name)
            for state in CIRCUIT_VALUES:
                m.circuit_transitions.labels(name, p.breaker_scope, state)
        budgets = {b.label: b.limit for b in config.guards.budgets} if config.guards else {}
        for label in self._budget_labels - set(budgets):
            _remove(m.budget_limit, (label,))
            _remove(m.budget_spent, (label,))
        for label, limit in budgets.items():
            m.budget_limit.labels(label).set(limit)
            m.budget_spent.labels(label)
        self._budget_labels = set(budgets)
        for category in config.categories:
            m.message_duration.labels(category)
            for status in ("accepted", "failed"):
                m.messages.labels(category, status)

    def watch_links(self, source: Callable[[], Mapping[str, Links]]) -> None:
        """Read ``source()`` (provider name -> its connections, for providers that keep
        some: SMPP binds) at each scrape into the ``smsroute_smpp_*`` gauges."""
        self._links = source
        self._m.link_hooks.add(self)

    def links(self) -> Mapping[str, Links]:
        """The connections :meth:`watch_links` reads now (empty when it was not called)."""
        source = self._links
        return source() if source is not None else {}

    def country(self, country: str) -> str:
        """The ``country`` label value for an ISO code: itself if configured, else ``other``."""
        return country if country in self._countries else OTHER

    def inflight(self, provider: str) -> Any:
        """The in-flight gauge of ``provider``; the router increments it around each request."""
        child = self._inflight_children.get(provider)
        if child is None:
            child = self._inflight_children[provider] = self._m.inflight.labels(provider)
        return child

    # -- events ---------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        handle = self._handlers.get(type(event))
        if handle is not None:
            handle(event)

    def _attempt(self, e: AttemptFinished) -> None:
        if not e.skipped:  # never sent: counted by smsroute_ratelimit_skips_total
            self.attempt_finished(e.provider, e.country, e.outcome, e.latency)

    def _message(self, e: MessageFinished) -> None:
        self.message_finished(
            e.category, e.status, e.duration, e.provider, e.country, e.segments, e.cost, e.currency
        )

    # The two handlers that run for every message, callable without an event:
    # a router whose only hook is this one calls them directly.  The children
    # are this module's Value and Buckets, updated in place, except in
    # multi-process mode, where they are prometheus_client's own metrics.
    # In place rather than through inc()/observe(): under callgrind the six
    # method calls cost 21k instructions per message (3% of Router.send).

    def attempt_finished(
        self, provider: str, country: str, outcome: Outcome, latency: float
    ) -> None:
        """One provider answered (or timed out) for one message."""
        key = (provider, country, outcome)
        children = self._attempt_children.get(key)
        if children is None:
            value = outcome.value
            children = self._attempt_children[key] = (
                self._m.attempts.labels(provider, self.country(country), value),
                self._m.attempt_duration.labels(provider, value),
            )
        if self._shared_files:
            children[0].inc()
            children[1].observe(latency)
            return
        children[0].value += 1.0
        histogram = children[1]
        histogram.counts[bisect_left(histogram.bounds, latency)] += 1
        histogram.sum += latency

    def message_finished(
        self,
        category: str,
        status: str,
        duration: float,
        provider: str | None,
        country: str,
        segments: int,
        cost: float | None,
        currency: str | None,
    ) -> None:
        """``send()`` returned for one message."""
        key = (category, status)
        children = self._message_children.get(key)
        if children is None:
            children = self._message_children[key] = (
                self._m.messages.labels(category, status),
                self._m.message_duration.labels(category),
            )
        shared = self._shared_files
        if shared:
            children[0].inc()
            children[1].observe(duration)
        else:
            children[0].value += 1.0
            histogram = children[1]
            histogram.counts[bisect_left(histogram.bounds, duration)] += 1
            histogram.sum += duration
        if provider is None:
            return
        where = (provider, country)
        counted = self._segment_children.get(where)
        if counted is None:
            counted = self._segment_children[where] = self._m.segments.labels(
                provider, self.country(country)
            )
        if shared:
            counted.inc(segments)
        else:
            counted.value += segments
        if cost is not None:
            priced = (provider, currency or "unknown")
            spent = self._cost_children.get(priced)
            if spent is None:
                spent = self._cost_children[priced] = self._m.cost.labels(*priced)
            if shared:
                spent.inc(cost)
            else:
                spent.value += cost

    def _failover(self, e: Failover) -> None:
        self._m.failovers.labels(e.from_provider, e.to_provider, e.reason).inc()

    def _breaker(self, e: BreakerTransition) -> None:
        m = self._m
        labels = (e.provider, e.scope)
        self.breakers.setdefault(labels, {})[e.country] = CIRCUIT_VALUES.get(e.to_state, 0)
        m.breaker_hooks.add(self)
        m.show_circuit(labels)
        m.circuit_transitions.labels(e.provider, e.scope, e.to_state).inc()

    def _ratelimit(self, e: RateLimitWait) -> None:
        if e.waited:
            self._m.ratelimit_wait.labels(e.provider).observe(e.seconds)
        else:
            self._m.ratelimit_skips.labels(e.provider).inc()

    def _concurrency_skip(self, e: ConcurrencySkip) -> None:
        self._m.concurrency_skips.labels(e.provider).inc()

    def _reloaded(self, e: ConfigReloaded) -> None:
        self._m.config_reloads.labels(e.result).inc()
        source = self._config_source
        if e.result == "success" and callable(source):
            self.configure(source())

    def _delivery(self, e: DeliveryReceived) -> None:
        provider = self._provider(e.provider)
        status = e.status if e.status in DELIVERY_STATUSES else "unknown"
        self._m.delivery_reports.labels(provider, self.country(e.country), status).inc()
        if e.latency is not None:
            self._m.delivery_latency.labels(provider).observe(e.latency)

    def _state_backend_error(self, e: StateBackendError) -> None:
        operation = e.operation if e.operation in STATE_OPERATIONS else OTHER
        self._m.state_backend_errors.labels(operation).inc()

    def _guard_refused(self, e: GuardRefused) -> None:
        self._m.guard_refusals.labels(e.guard, e.category, self.country(e.country)).inc()

    def _guard_overrun(self, e: GuardOverrun) -> None:
        self._m.guard_overruns.labels(e.per, self.country(e.country)).inc()

    def _anomaly(self, e: AnomalyTransition) -> None:
        country = self.country(e.country)
        self._m.anomaly_tripped.labels(e.category, country).set(
            1.0 if e.to_state == "tripped" else 0.0
        )
        self._m.anomaly_transitions.labels(e.category, country, e.to_state).inc()

    def _budget_spent(self, e: BudgetSpent) -> None:
        self._m.budget_spent.labels(e.scope).set(e.spent)
        self._m.budget_limit.labels(e.scope).set(e.limit)

    def _webhook_refused(self, e: WebhookRefused) -> None:
        # The provider name comes from the request's URL: anyone can make one up.
        kind = e.kind if e.kind in ("status", "inbound") else OTHER
        self._m.webhook_refusals.labels(self._provider(e.provider), kind, e.reason).inc()

    def _provider(self, name: str) -> str:
        providers = self._providers
        return name if providers is None or name in providers else "unknown"


def _remove(metric: Any, labels: Iterable[str]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when prometheus_client runs in multi-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(registry: CollectorRegistry | None, accept: str | None) -> tuple[bytes, str]:
    """``registry`` in the format an ``Accept`` header asks for: (body, content type).

    In multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set, e.g. gunicorn workers)
    the body aggregates every worker's metrics, whichever worker answers.
    """
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry if registry is not None else REGISTRY), content_type
