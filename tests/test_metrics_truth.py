"""What Grafana shows is true: under arbitrary traffic, every metric the router exports
equals what the sends' own results say happened.

Hypothesis draws a config (two or three fake Twilio providers, rate limits,
``max_concurrency``, prices, a breaker, a category in quiet hours, guards that refuse
some messages) and traffic (faults at the fakes, opted-out numbers, bad numbers,
concurrent batches).  From the :class:`SendResult` of every send it computes what each
metric must read, and compares with the registry, series by series: no series missing,
none extra.  Each example runs twice over: with the Prometheus hook as the only hook
(the direct fast path, no event built) and with one more hook (every event built and
handed to the hook), since the two paths must agree.

The last tests read the shipped Grafana dashboard and alert rules: every metric and
label they name exists in a registry after such traffic (test_prometheus_integration.py
proves them against a real Prometheus, but only where promtool and prometheus are
installed; this check runs everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import textwrap
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from smsroute import (
    AttemptFinished,
    Event,
    InvalidNumber,
    Message,
    MessageFinished,
    Outcome,
    Router,
    SendResult,
    parse_config,
)
from smsroute.config import DEFAULT_METRIC_COUNTRIES
from smsroute.instrument.prometheus import CIRCUIT_VALUES
from smsroute.testing import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "smsroute.json"
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"

#: Destinations: (number, ISO country).  IS is not in the default metric countries
#: (its label is ``other``); FR is denied by the otp guard.
NUMBERS = {
    "+4915123456789": "DE",
    "+4915123456780": "DE",
    "+14155550100": "US",
    "+33612345678": "FR",
    "+3546112345": "IS",
}
BAD_NUMBERS = ("+1555", "12", "+99912345678")
OPTED_OUT = "+4915123456780"  # in the router's opt-out list from the start
SHORT = "Your code is 123456"
LONG = "Sale! " * 40  # 240 GSM-7 characters: two segments
UNICODE = "Grüße 🎉 " * 12  # UCS-2: several segments

SKIP_RATE = "skipped: rate limit or Retry-After pause"
SKIP_SLOT = "skipped: no free max_concurrency slot in time"
GUARD_REASON = re.compile(r"^refused by guard (\w+):")


# -- what hypothesis draws ---------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str  # fail503, fail400, fail401, throttle_short, throttle_long, hang, optout
    times: int


@dataclass(frozen=True)
class ProviderSpec:
    rate_limit: str | None
    max_concurrency: int | None
    latency: float
    prices: str | None
    currency: str | None
    faults: tuple[Fault, ...]


@dataclass(frozen=True)
class Send:
    to: str
    category: str
    text: str


@dataclass(frozen=True)
class Traffic:
    providers: tuple[ProviderSpec, ...]
    strategy: str
    breaker_failures: int
    breaker_scope: str
    velocity: int
    budget: str | None
    batches: tuple[tuple[Send, ...], ...]


faults = st.builds(
    Fault,
    st.sampled_from(
        ["fail503", "fail400", "fail401", "throttle_short", "throttle_long", "hang", "optout"]
    ),
    st.integers(1, 3),
)
provider_specs = st.builds(
    ProviderSpec,
    rate_limit=st.sampled_from([None, None, "20/s", "200/s"]),
    max_concurrency=st.sampled_from([None, None, 1, 2]),
    latency=st.sampled_from([0.0, 0.0, 0.02, 0.06, 0.12]),
    prices=st.sampled_from([None, "{DE: 0.07, default: 0.05}", "{US: 0.0079}"]),
    currency=st.sampled_from([None, "EUR"]),
    faults=st.lists(faults, max_size=3).map(tuple),
)
sends = st.builds(
    Send,
    to=st.sampled_from([*NUMBERS, *NUMBERS, *BAD_NUMBERS]),
    category=st.sampled_from(["otp", "otp", "marketing", "transactional", "night"]),
    text=st.sampled_from([SHORT, SHORT, LONG, UNICODE]),
)
traffic = st.builds(
    Traffic,
    providers=st.lists(provider_specs, min_size=2, max_size=3).map(tuple),
    strategy=st.sampled_from(["priority", "cheapest", "fastest"]),
    breaker_failures=st.sampled_from([1, 2, 5]),
    breaker_scope=st.sampled_from(["provider", "provider_country"]),
    velocity=st.sampled_from([2, 100]),
    budget=st.sampled_from([None, "refuse", "cheapest_under_cap", "category"]),
    batches=st.lists(
        st.lists(sends, min_size=1, max_size=8).map(tuple), min_size=1, max_size=2
    ).map(tuple),
)


def config_text(t: Traffic, fakes: list[FakeTwilio]) -> str:
    blocks = []
    for i, (spec, fake) in enumerate(zip(t.providers, fakes, strict=True)):
        lines = [
            f"  p{i}:",
            "    type: twilio",
            f"    base_url: {fake.url}",
            f"    account_sid: {fake.account_sid}",
            f"    auth_token: {fake.auth_token}",
            '    from: "+15005550006"',
            "    timeout: 150ms",
        ]
        if spec.rate_limit:
            lines += [f"    rate_limit: {spec.rate_limit}", "    burst: 1"]
        if spec.max_concurrency:
            lines.append(f"    max_concurrency: {spec.max_concurrency}")
        if spec.prices:
            lines.append(f"    prices: {spec.prices}")
        if spec.currency and t.budget != "category":  # one currency for a category budget
            lines.append(f"    currency: {spec.currency}")
        blocks.append("\n".join(lines))
    names = ", ".join(f"p{i}" for i in range(len(t.providers)))
    return (
        textwrap.dedent(
            f"""
            defaults:
              deadline: 1s
              max_rate_wait: 50ms
              breaker: {{consecutive_failures: {t.breaker_failures}, open_for: 30s}}
              breaker_scope: {t.breaker_scope}
            categories:
              night:
                quiet_hours: {{from: "00:00", to: "23:59"}}
            guards:
              otp:
                countries: {{deny: [FR]}}
                velocity:
                  - {{per: number, max: {t.velocity}, window: 1h}}
            rules:
              - name: default
                providers: [{names}]
                strategy: {t.strategy}
            """
        ).replace("rules:\n", budget_text(t) + "rules:\n", 1)
        + (f"    on_budget: {t.budget}\n" if t.budget in ("refuse", "cheapest_under_cap") else "")
        + "providers:\n"
        + "\n".join(blocks)
        + "\n"
    )


def budget_text(t: Traffic) -> str:
    """Budgets small enough for a few accepted messages to reach them."""
    if t.budget is None:
        return ""
    if t.budget == "category":
        cap = "    - {scope: category, name: transactional, limit: 0.1, per: day}\n"
    else:
        cap = "    - {scope: provider, name: p0, limit: 0.1, per: day}\n"
    return "  budgets:\n" + cap


def script(fake: FakeTwilio, spec: ProviderSpec) -> None:
    if spec.latency:
        fake.latency(spec.latency)
    for f in spec.faults:
        if f.kind == "fail503":
            fake.fail(503, times=f.times)
        elif f.kind == "fail400":
            fake.fail(400, 21211, times=f.times)
        elif f.kind == "fail401":
            fake.fail(401, times=f.times)
        elif f.kind == "throttle_short":
            fake.throttle(0.01, times=f.times)
        elif f.kind == "throttle_long":
            fake.throttle(5.0, times=f.times)
        elif f.kind == "hang":
            fake.hang(times=f.times)
        elif f.kind == "optout":
            fake.opt_out("+4915123456789")


# -- what the metrics must be, from the results ----------------------------------------


def label(country: str) -> str:
    return country if country in DEFAULT_METRIC_COUNTRIES else "other"


@dataclass
class Expected:
    """Series -> value, for every family compared (zero-valued series left out)."""

    series: dict[str, Counter[tuple[str, ...]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    cost: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def add(self, sample: str, labels: tuple[str, ...], amount: float = 1) -> None:
        self.series[sample][labels] += amount  # type: ignore[assignment]


def expected_from(results: list[tuple[Send, SendResult]]) -> Expected:
    exp = Expected()
    for send, result in results:
        country = NUMBERS[send.to]
        exp.add("smsroute_messages_total", (send.category, result.status))
        exp.add("smsroute_message_duration_seconds_count", (send.category,))
        called = []
        for a in result.attempts:
            if a.detail == SKIP_RATE:
                exp.add("smsroute_ratelimit_skips_total", (a.provider,))
            elif a.detail == SKIP_SLOT:
                exp.add("smsroute_concurrency_skips_total", (a.provider,))
            elif a.detail == "skipped: breaker open":
                pass  # never called, never counted
            else:
                called.append(a)
        for a in called:
            exp.add("smsroute_attempts_total", (a.provider, label(country), a.outcome.value))
            exp.add("smsroute_attempt_duration_seconds_count", (a.provider, a.outcome.value))
        for before, after in itertools.pairwise(called):
            exp.add(
                "smsroute_failovers_total", (before.provider, after.provider, before.outcome.value)
            )
        if result.status == "accepted":
            assert result.provider is not None
            exp.add("smsroute_segments_total", (result.provider, label(country)), result.segments)
            if result.cost is not None:
                exp.cost[(result.provider, result.currency or "unknown")] += result.cost
        elif not result.attempts and result.reason and (m := GUARD_REASON.match(result.reason)):
            exp.add("smsroute_guard_refusals_total", (m[1], send.category, label(country)))
    return exp


COMPARED = (
    ("smsroute_messages_total", ("category", "status")),
    ("smsroute_message_duration_seconds_count", ("category",)),
    ("smsroute_attempts_total", ("provider", "country", "outcome")),
    ("smsroute_attempt_duration_seconds_count", ("provider", "outcome")),
    ("smsroute_failovers_total", ("from_provider", "to_provider", "reason")),
    ("smsroute_ratelimit_skips_total", ("provider",)),
    ("smsroute_concurrency_skips_total", ("provider",)),
    ("smsroute_segments_total", ("provider", "country")),
    ("smsroute_guard_refusals_total", ("guard", "category", "country")),
)


def samples(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in registry.collect():
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def actual(
    got: dict[str, dict[tuple[tuple[str, str], ...], float]], sample: str, names: tuple[str, ...]
) -> Counter[tuple[str, ...]]:
    """The non-zero series of ``sample`` as label tuples in the order of ``names``."""
    out: Counter[tuple[str, ...]] = Counter()
    for labels, value in got.get(sample, {}).items():
        if value:
            d = dict(labels)
            assert set(d) == set(names), (sample, d)
            out[tuple(d[n] for n in names)] = value  # type: ignore[assignment]
    return out


def check(
    registry: CollectorRegistry,
    router: Router,
    results: list[tuple[Send, SendResult]],
    providers: list[str],
) -> None:
    exp = expected_from(results)
    states = router.breaker_states()  # reads move a breaker whose time is up: before the scrape
    got = samples(registry)
    for sample, names in COMPARED:
        assert actual(got, sample, names) == exp.series.get(sample, Counter()), sample
    cost = actual(got, "smsroute_cost_total", ("provider", "currency"))
    assert set(cost) == {k for k, v in exp.cost.items() if v}
    for key, value in exp.cost.items():
        assert cost[key] == pytest.approx(value), key
    inflight = got["smsroute_inflight_requests"]
    for name in providers:
        assert inflight[(("provider", name),)] == 0, name
    assert all(v == 0 for v in inflight.values())
    worst: dict[str, int] = dict.fromkeys(providers, 0)
    for (provider, _), state in states.items():
        worst[provider] = max(worst[provider], CIRCUIT_VALUES[state.value])
    circuit = {
        dict(labels)["provider"]: value for labels, value in got["smsroute_circuit_state"].items()
    }
    assert circuit == worst
    assert {dict(labels)["scope"] for labels in got["smsroute_circuit_state"]} == {
        router.config.providers[providers[0]].breaker_scope
    }


# -- the traffic ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scripted_fakes(t: Traffic) -> AsyncIterator[list[FakeTwilio]]:
    """A fake Twilio per provider of ``t``, each scripted as its spec says, stopped after."""
    fakes = [FakeTwilio() for _ in t.providers]
    for fake in fakes:
        await fake.start()
    try:
        for fake, spec in zip(fakes, t.providers, strict=True):
            script(fake, spec)
        yield fakes
    finally:
        for fake in fakes:
            await fake.stop()


async def run(t: Traffic, extra_hook: bool) -> None:
    async with scripted_fakes(t) as fakes:
        registry = CollectorRegistry()
        events: list[Event] = []
        hooks = [events.append] if extra_hook else []
        config = parse_config(config_text(t, fakes))
        async with Router(config, registry=registry, hooks=hooks) as router:
            assert (router.dispatcher.direct_metrics is None) == extra_hook
            router.optouts.add(OPTED_OUT)
            results: list[tuple[Send, SendResult]] = []
            invalid = 0
            for batch in t.batches:
                answers = await asyncio.gather(
                    *(
                        router.send(Message(to=s.to, text=s.text, category=s.category))
                        for s in batch
                    ),
                    return_exceptions=True,
                )
                for s, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, InvalidNumber):
                        assert s.to in BAD_NUMBERS
                        invalid += 1
                    else:
                        assert isinstance(answer, SendResult), answer
                        assert s.to in NUMBERS
                        results.append((s, answer))
            for _, r in results:  # what the traffic came to: --hypothesis-show-statistics
                event(f"message {r.status} {(r.reason or '')[:18]}")
                for a in r.attempts:
                    event(f"attempt {a.outcome.value} {(a.detail or '')[:18]}")
            check(registry, router, results, [f"p{i}" for i in range(len(t.providers))])
            if extra_hook:  # the events say the same as the results
                finished = [e for e in events if isinstance(e, MessageFinished)]
                assert len(finished) == len(results)
                called = [e for e in events if isinstance(e, AttemptFinished) and not e.skipped]
                assert len(called) == sum(
                    n for n in expected_from(results).series["smsroute_attempts_total"].values()
                )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(t=traffic, extra_hook=st.booleans())
def test_metrics_equal_what_the_sends_say_happened(t: Traffic, extra_hook: bool) -> None:
    with asyncio.Runner() as runner:
        runner.run(run(t, extra_hook))


# -- the shipped dashboard and alert rules name metrics and labels that exist -----------

#: Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"job", "instance"}
#: Values a literal matcher may use, for the labels whose values are a fixed list.
KNOWN_VALUES = {
    "outcome": {o.value for o in Outcome},
    "guard": {"geo", "velocity", "anomaly", "budget"},
    "to_state": {"closed", "half_open", "open", "tripped", "released"},
    "result": {"success", "error"},
}
SELECTOR = re.compile(r"\b(smsroute_\w+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def shipped_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel and variable, alert rule and alert unit
    test series."""
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m is not None, query
            yield f"variable {var['name']}", f"group by ({m[2]}) ({m[1]})"
    alerts = yaml.safe_load(ALERTS.read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
    tests = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text())
    for test in tests["tests"]:
        for series in test.get("input_series", []):
            yield f"alert test {test['name']!r}", series["series"]


def family_of(sample: str, kinds: dict[str, str]) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in kinds:
            return sample[: -len(suffix)]
    return sample


@pytest.fixture(scope="module")
def trafficked() -> CollectorRegistry:
    """A registry after traffic that moves most families (one fixed example of the above)."""
    from smsroute.instrument.prometheus import _metrics_for

    t = Traffic(
        providers=(
            ProviderSpec(
                "20/s", 1, 0.0, "{DE: 0.07, default: 0.05}", "EUR", (Fault("fail503", 1),)
            ),
            ProviderSpec(None, None, 0.0, "{US: 0.0079}", None, ()),
        ),
        strategy="priority",
        breaker_failures=1,
        breaker_scope="provider",
        velocity=100,
        budget="refuse",
        batches=(
            tuple(Send(to, "otp", SHORT) for to in ("+4915123456789", "+33612345678")),
            tuple(Send("+14155550100", "marketing", LONG) for _ in range(3)),
        ),
    )
    registries: list[CollectorRegistry] = []

    async def go() -> None:
        async with scripted_fakes(t) as fakes:
            registry = CollectorRegistry()
            async with Router(parse_config(config_text(t, fakes)), registry=registry) as router:
                for batch in t.batches:
                    await asyncio.gather(
                        *(
                            router.send(Message(to=s.to, text=s.text, category=s.category))
                            for s in batch
                        )
                    )
            registries.append(registry)

    with asyncio.Runner() as runner:
        runner.run(go())
    (registry,) = registries
    assert _metrics_for(registry).families  # the families below are read from it
    return registry


def family_labels(registry: CollectorRegistry) -> dict[str, set[str]]:
    from smsroute.instrument.prometheus import _metrics_for

    return {f.name: set(f.labelnames) for f in _metrics_for(registry).families}


def test_the_traffic_fills_the_families_the_dashboard_reads(trafficked: CollectorRegistry) -> None:
    got = samples(trafficked)
    for name in (
        "smsroute_attempts_total",
        "smsroute_messages_total",
        "smsroute_failovers_total",
        "smsroute_segments_total",
        "smsroute_cost_total",
        "smsroute_guard_refusals_total",
        "smsroute_circuit_transitions_total",
    ):
        assert any(v for v in got.get(name, {}).values()), name


@pytest.mark.parametrize(
    ("where", "expr"), list(shipped_expressions()), ids=[w for w, _ in shipped_expressions()]
)
def test_every_metric_and_label_the_dashboard_and_alerts_use_exists(
    trafficked: CollectorRegistry, where: str, expr: str
) -> None:
    labels_of = family_labels(trafficked)
    kinds = {f.name: f.type for f in trafficked.collect()}
    assert set(labels_of) == set(kinds)
    used: set[str] = set()
    for sample, matchers in SELECTOR.findall(expr):
        family = family_of(sample, kinds)
        assert family in kinds, f"{where}: no metric {sample}"
        allowed = (
            labels_of[family] | SCRAPE_LABELS | ({"le"} if sample.endswith("_bucket") else set())
        )
        if sample.endswith("_bucket"):
            assert kinds[family] == "histogram", f"{where}: {sample} is no histogram"
        if sample.endswith("_total"):
            assert kinds[family] == "counter", f"{where}: {sample} is no counter"
        used |= allowed
        for label, op, value in MATCHER.findall(matchers):
            assert label in allowed, f"{where}: {family} has no label {label!r}"
            if label in KNOWN_VALUES and "$" not in value:
                values = value.split("|") if op in ("=~", "!~") else [value]
                assert set(values) <= KNOWN_VALUES[label], f"{where}: {label}={value!r}"
    assert used, f"{where}: names no smsroute metric"
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            assert label in used, f"{where}: no metric of the expression has label {label!r}"
