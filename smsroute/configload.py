"""Loading a routing config: YAML in, a typed and validated :class:`~smsroute.config.Config` out.

:func:`load_config` reads a file, :func:`parse_config` a text; both raise
:class:`~smsroute.errors.ConfigError` listing every problem with file:line:column and a
field path.  `_Loader` walks the sections with the parsers of
:mod:`smsroute.configcheck` and asks the adapter registry (:mod:`smsroute.providers`)
which options each provider type takes, so this module sits above the adapters, while
the types it builds (:mod:`smsroute.config`) sit below them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from smsroute import configcheck as check
from smsroute import quietload, yamlsource
from smsroute.config import (
    BACKOFF_KEYS,
    BREAKER_KEYS,
    CATEGORY_KEYS,
    DEFAULT_CATEGORIES,
    DEFAULTS_KEYS,
    MATCH_KEYS,
    OUTBOX_KEYS,
    PROVIDER_COMMON_KEYS,
    RULE_KEYS,
    SCORE_WEIGHT_KEYS,
    STATE_KEYS,
    TOP_KEYS,
    BreakerSettings,
    Category,
    Config,
    Defaults,
    Match,
    OutboxSettings,
    ProviderConfig,
    Rule,
    ScoreWeights,
    StateSettings,
    Strategy,
)
from smsroute.configcheck import Checker
from smsroute.errors import ConfigProblem
from smsroute.guardload import guard_set, guards_section, on_budget
from smsroute.numbers import NumberType
from smsroute.providers import load_provider_class, provider_types
from smsroute.providers.base import Provider
from smsroute.senderconfig import read_from, rule_from
from smsroute.units import parse_duration, parse_fraction, parse_rate
from smsroute.yamlsource import Located, config_error, shown


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    unset: list[ConfigProblem] | None = None,
    warnings: list[ConfigProblem] | None = None,
) -> Config:
    """Read and validate the YAML config at ``path``; raise :class:`ConfigError` on any problem.

    ConfigError is the only exception raised, whatever the file holds (see
    :mod:`smsroute.yamlsource` for the bounds on size, nesting and aliases).
    With ``unset`` (a list), an unset ``${VAR}`` is not an error: its value is a
    placeholder and its problem is appended to ``unset`` (``smsroute check``
    and ``explain`` validate a config without its secrets this way).  With
    ``warnings`` (a list), what is valid but likely unwanted is appended to it (a
    provider whose webhooks would be accepted unverified).
    """
    file = str(Path(path))
    text = yamlsource.read_text(path, file)
    return parse_config(text, file=file, environ=environ, unset=unset, warnings=warnings)


def parse_config(
    text: str,
    *,
    file: str = "<config>",
    environ: Mapping[str, str] | None = None,
    unset: list[ConfigProblem] | None = None,
    warnings: list[ConfigProblem] | None = None,
) -> Config:
    """Validate YAML ``text``.  ``file`` is used in messages and to resolve price files;
    ``unset`` and ``warnings`` are as for :func:`load_config`."""
    located = yamlsource.load(text, file, environ, unset=unset)
    return _Loader(located, warnings).load()


class _Loader(Checker):
    """One pass over a config's sections: every problem is collected, then raised at once."""

    def __init__(self, located: Located, warnings: list[ConfigProblem] | None = None) -> None:
        super().__init__(located)
        #: Where what is valid but likely unwanted goes (None: nowhere).
        self.warnings = warnings
        # Declared providers refused for a problem of their own (say, an unknown type):
        # rules naming them are not told "unknown provider" again.
        self.refused_providers: set[str] = set()

    def unverified(
        self, cls: type[Provider], body: Mapping[str, Any], ppath: yamlsource.Path
    ) -> None:
        """Warn when the provider's webhooks would be accepted without verification."""
        assert self.warnings is not None
        try:
            hint = cls.unverified_webhooks(body)
        except Exception:  # an adapter's check meeting a value it did not expect: the
            return  # options' own check reports the value
        if hint is not None:
            self.warnings.append(
                self.src.problem(
                    ppath,
                    "its webhooks are accepted without verification: anyone who can reach "
                    "its status and inbound URLs can change its messages' status and opt "
                    f"numbers out or back in; {hint}",
                    at_key=True,
                )
            )

    # -- sections ------------------------------------------------------------------

    def load(self) -> Config:
        root = self.src.value
        if root is None:
            self.error((), "the config is empty: it needs at least 'providers' and 'rules'")
            raise config_error(self.problems)
        top = self.mapping(root, (), TOP_KEYS, what="the config")
        version = self.field(top, (), "version", check.int_in(1, 1), 1)
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
        guards = (
            guards_section(self, top["guards"], categories, providers)
            if top.get("guards") is not None
            else None
        )
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
            guards=guards,
        )

    def state(self, value: Any) -> StateSettings:
        path: yamlsource.Path = ("state",)
        s = self.mapping(value, path, STATE_KEYS, what="state")
        base = StateSettings()
        settings = StateSettings(
            backend=self.field(s, path, "backend", check.state_backend, base.backend),
            url=self.field(s, path, "url", check.redis_url, base.url),
            key_prefix=self.field(s, path, "key_prefix", check.key_prefix, base.key_prefix),
            sync_interval=self.field(
                s, path, "sync_interval", check.positive_duration, base.sync_interval
            ),
            timeout=self.field(s, path, "timeout", check.positive_duration, base.timeout),
            health_window=self.field(
                s, path, "health_window", check.positive_duration, base.health_window
            ),
            health_half_life=self.field(
                s, path, "health_half_life", check.positive_duration, base.health_half_life
            ),
            receipt_ttl=self.field(
                s, path, "receipt_ttl", check.positive_duration, base.receipt_ttl
            ),
            guard_checks=self.field(s, path, "guard_checks", check.guard_checks, base.guard_checks),
            hash_key=self.field(s, path, "hash_key", check.hash_key, base.hash_key),
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
            return self.field(section, path, key, check.positive_duration, default)

        where = self.field(o, path, "path", check.file_path, base.path)
        if where != ":memory:" and not Path(where).is_absolute():
            where = str(self.base_dir / where)
        settings = OutboxSettings(
            backend=self.field(o, path, "backend", check.outbox_backend, base.backend),
            path=where,
            lease=self.field(o, path, "lease", check.positive_duration, base.lease),
            max_attempts=self.field(
                o, path, "max_attempts", check.int_in(1, 1000), base.max_attempts
            ),
            ttl=nullable(o, "ttl", base.ttl),
            backoff_base=self.field(b, bpath, "base", check.positive_duration, base.backoff_base),
            backoff_max=self.field(b, bpath, "max", check.positive_duration, base.backoff_max),
            concurrency=self.field(
                o, path, "concurrency", check.int_in(1, 10_000), base.concurrency
            ),
            poll=self.field(o, path, "poll", check.positive_duration, base.poll),
            rate_margin=self.field(o, path, "rate_margin", parse_duration, base.rate_margin),
            synchronous=self.field(o, path, "synchronous", check.synchronous, base.synchronous),
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
            default_region=self.field(d, path, "default_region", check.region, None),
            deadline=self.field(d, path, "deadline", check.positive_duration, base.deadline),
            max_attempts=self.field(
                d, path, "max_attempts", check.int_in(1, 100), base.max_attempts
            ),
            max_segments=self.field(
                d, path, "max_segments", check.int_in(1, 255), base.max_segments
            ),
            breaker=self.breaker(d.get("breaker"), (*path, "breaker"), base.breaker),
            breaker_scope=self.field(d, path, "breaker_scope", check.breaker_scope, "provider"),
            max_rate_wait=self.field(d, path, "max_rate_wait", parse_duration, base.max_rate_wait),
            webhook_url=self.field(d, path, "webhook_url", check.url, None),
            currency=self.field(d, path, "currency", check.currency_code, base.currency),
            metric_countries=self.field(
                d, path, "metric_countries", check.region_set, base.metric_countries
            ),
            opt_out_categories=self.field(
                d, path, "opt_out_categories", check.name_set("category"), base.opt_out_categories
            ),
            receipt_timeout=(
                None
                if "receipt_timeout" in d and d["receipt_timeout"] is None
                else self.field(
                    d, path, "receipt_timeout", check.positive_duration, base.receipt_timeout
                )
            ),
            resend_ttl=self.field(d, path, "resend_ttl", check.positive_duration, base.resend_ttl),
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
                    window_seconds = check.positive_duration(raw)
                except ValueError:
                    self.error(
                        (*path, "window"),
                        f"window is a number of calls (50) or a duration (60s), got {shown(raw)}",
                    )
        consecutive = base.consecutive_failures
        if "consecutive_failures" in b:
            consecutive = self.field(
                b, path, "consecutive_failures", check.int_in(1, 1_000_000), None
            )
        settings = BreakerSettings(
            window=window,
            window_seconds=window_seconds,
            min_calls=self.field(b, path, "min_calls", check.int_in(1, 1_000_000), base.min_calls),
            failure_rate=self.field(b, path, "failure_rate", parse_fraction, base.failure_rate),
            consecutive_failures=consecutive,
            open_for=self.field(b, path, "open_for", check.positive_duration, base.open_for),
            max_open_for=self.field(
                b, path, "max_open_for", check.positive_duration, base.max_open_for
            ),
            half_open_probes=self.field(
                b, path, "half_open_probes", check.int_in(1, 1000), base.half_open_probes
            ),
            min_delivery_ratio=self.field(
                b, path, "min_delivery_ratio", parse_fraction, base.min_delivery_ratio
            ),
            min_receipts=self.field(
                b, path, "min_receipts", check.int_in(1, 1_000_000), base.min_receipts
            ),
        )
        if settings.max_open_for < settings.open_for:
            self.error((*path, "max_open_for"), "max_open_for must be at least open_for")
        return settings

    def categories(self, value: Any) -> dict[str, Category]:
        out = dict(DEFAULT_CATEGORIES)
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
            on_timeout = self.field(c, (*path, name), "on_timeout", check.on_timeout, default)
            out[name] = Category(
                name,
                on_timeout,
                quiet_hours=quietload.quiet_hours(
                    self, c.get("quiet_hours"), (*path, name, "quiet_hours")
                ),
                encoding=quietload.encoding_mode(self, c, (*path, name), name == "otp", "auto"),
            )
        return out

    def providers(self, value: Any, defaults: Defaults) -> dict[str, ProviderConfig]:
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
                self.error(ppath, f"provider '{name}' must be a mapping, got {check.kind(body)}")
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
            if cls.file_options:
                body = self.with_files(body, cls.file_options)
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
            if receipts_at is not None and self.warnings is not None:
                self.unverified(cls, body, ppath)
            currency = self.field(body, ppath, "currency", check.currency_code, defaults.currency)
            sender, senders = read_from(self, body, ppath)
            out[name] = ProviderConfig(
                name=name,
                type=type_name,
                base_url=self.field(body, ppath, "base_url", check.url, None),
                timeout=self.field(body, ppath, "timeout", check.positive_duration, 5.0),
                rate_limit=self.field(body, ppath, "rate_limit", parse_rate, None),
                burst=self.field(body, ppath, "burst", check.int_in(1, 1_000_000), None),
                max_concurrency=self.field(
                    body, ppath, "max_concurrency", check.int_in(1, 100_000), None
                ),
                prices=self.prices(body.get("prices"), (*ppath, "prices"), currency),
                sender=sender,
                breaker=self.breaker(body.get("breaker"), (*ppath, "breaker"), defaults.breaker),
                breaker_scope=self.field(
                    body, ppath, "breaker_scope", check.breaker_scope, defaults.breaker_scope
                ),
                status_callback=self.field(body, ppath, "status_callback", check.url, None),
                options=options,
                senders=senders,
            )
        self.refused_providers = {str(name) for name in value if name not in out}
        return out

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
            strategy: Strategy = self.field(r, rpath, "strategy", check.strategy, "priority")
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
            match = self.match(r.get("match"), (*rpath, "match"), categories)
            out.append(
                Rule(
                    name=name,
                    match=match,
                    providers=provider_names,
                    strategy=strategy,
                    weights=weights,
                    on_timeout=self.field(r, rpath, "on_timeout", check.on_timeout, None),
                    max_attempts=self.field(r, rpath, "max_attempts", check.int_in(1, 100), None),
                    deadline=self.field(r, rpath, "deadline", check.positive_duration, None),
                    score_weights=ScoreWeights(
                        price=self.field(sw, swp, "price", check.non_negative, 1.0),
                        success=self.field(sw, swp, "success", check.non_negative, 1.0),
                        latency=self.field(sw, swp, "latency", check.non_negative, 1.0),
                    ),
                    latency_buffer=self.field(r, rpath, "latency_buffer", parse_fraction, 0.2),
                    on_undelivered=self.field(
                        r, rpath, "on_undelivered", check.on_undelivered, "ignore"
                    ),
                    encoding=quietload.rule_encoding(self, r, rpath),
                    guards=guard_set(self, r.get("guards"), (*rpath, "guards"), "a rule's guards"),
                    on_budget=self.field(r, rpath, "on_budget", on_budget, "refuse"),
                    senders=rule_from(self, r, rpath, match.countries),
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
                out[name] = check.weight(raw)
            except ValueError as exc:
                self.error((*path, name), str(exc))
        if out and not any(out.values()):
            self.error(path, "at least one weight must be positive")
        return out

    def match(self, value: Any, path: yamlsource.Path, categories: Mapping[str, Category]) -> Match:
        m = self.mapping(value, path, MATCH_KEYS, what="match")

        def strings(key: str, parse: Callable[[Any], str]) -> list[str] | None:
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
                    out.append(parse(item))
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

        countries = strings("country", check.region)
        prefixes = strings("prefix", check.prefix)
        number_types = strings("number_type", check.number_type)
        cats = strings("category", category)
        senders = strings("sender", check.nonempty("sender"))
        tags = strings("tags", check.nonempty("tag"))
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


__all__ = ["load_config", "parse_config"]
