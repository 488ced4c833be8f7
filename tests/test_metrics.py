"""The Prometheus hook: every metric the contract names, with the labels it names,
filled by real sends through fake providers on 127.0.0.1.

(The shipped dashboard and alert rules are proven against a real Prometheus in
test_prometheus_integration.py.)
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import phonenumbers
import pytest
from aiohttp import web
from conftest import make_config, twilio_block
from prometheus_client import CollectorRegistry, Histogram

import smsroute
from smsroute import (
    AnomalyTransition,
    AttemptFinished,
    BreakerState,
    BreakerTransition,
    BudgetSpent,
    ConcurrencySkip,
    ConfigError,
    ConfigReloaded,
    DeliveryReceived,
    Event,
    Failover,
    GuardOverrun,
    GuardRefused,
    LoggingHook,
    ManualClock,
    Message,
    MessageFinished,
    Outcome,
    PrometheusHook,
    RateLimitWait,
    Router,
    WebhookRefused,
)
from smsroute.config import DEFAULT_METRIC_COUNTRIES, Defaults
from smsroute.instrument.prometheus import ATTEMPT_BUCKETS
from smsroute.testing import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
OTP_DE = Message(to="+4915123456789", text="Your code is 123456", category="otp")

#: The contract of issue 4: family name (as prometheus_client names it) -> type, labels.
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "smsroute_attempts": ("counter", {"provider", "country", "outcome"}),
    "smsroute_attempt_duration_seconds": ("histogram", {"provider", "outcome"}),
    "smsroute_messages": ("counter", {"category", "status"}),
    "smsroute_message_duration_seconds": ("histogram", {"category"}),
    "smsroute_failovers": ("counter", {"from_provider", "to_provider", "reason"}),
    "smsroute_circuit_state": ("gauge", {"provider", "scope"}),
    "smsroute_circuit_transitions": ("counter", {"provider", "scope", "to_state"}),
    "smsroute_ratelimit_wait_seconds": ("histogram", {"provider"}),
    "smsroute_inflight_requests": ("gauge", {"provider"}),
    "smsroute_segments": ("counter", {"provider", "country"}),
    "smsroute_cost": ("counter", {"provider", "currency"}),
    "smsroute_delivery_reports": ("counter", {"provider", "country", "status"}),
    "smsroute_delivery_latency_seconds": ("histogram", {"provider"}),
    "smsroute_config_reloads": ("counter", {"result"}),
    "smsroute_info": ("gauge", {"version"}),
    # Read from SMPP adapters at scrape time (tests/test_smpp_ops.py): no series without one.
    "smsroute_smpp_binds_up": ("gauge", set()),
    "smsroute_smpp_binds_down": ("gauge", set()),
    "smsroute_smpp_window_in_use": ("gauge", set()),
    "smsroute_smpp_window_size": ("gauge", set()),
    # Beyond the contract: what the alerts and dashboard also need.
    "smsroute_ratelimit_skips": ("counter", {"provider"}),
    "smsroute_concurrency_skips": ("counter", {"provider"}),
    "smsroute_webhook_refusals": ("counter", {"provider", "kind", "reason"}),
    "smsroute_rule_provider_info": ("gauge", {"rule", "provider"}),
    # Labelled by operation; no series unless the config's state backend is Redis.
    "smsroute_state_backend_errors": ("counter", set()),
    # The fraud and spend guards (issue 19).
    "smsroute_guard_refusals": ("counter", {"guard", "category", "country"}),
    "smsroute_guard_overruns": ("counter", {"per", "country"}),
    "smsroute_guard_anomaly_tripped": ("gauge", {"category", "country"}),
    "smsroute_guard_anomaly_transitions": ("counter", {"category", "country", "to_state"}),
    "smsroute_budget_spent": ("gauge", {"scope"}),
    "smsroute_budget_limit": ("gauge", {"scope"}),
}


def two_providers(a: FakeTwilio, b: FakeTwilio, *, defaults: str = "", a_extra: str = "") -> str:
    return f"""
defaults:
  breaker: {{consecutive_failures: 2, open_for: 30s}}
{textwrap.indent(defaults, "  ")}
providers:
{twilio_block("primary", a, timeout="300ms", prices="{DE: 0.07, default: 0.05}")}
{a_extra}
{twilio_block("secondary", b, timeout="300ms", prices="{DE: 0.09}", currency="EUR")}
rules:
  - name: default
    providers: [primary, secondary]
"""


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def router(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> AsyncIterator[Router]:
    async with Router(make_config(two_providers(twilio_a, twilio_b)), registry=registry) as r:
        yield r


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def scrape(router: Router, headers: dict[str, str] | None = None) -> tuple[str, Any]:
    runner, url = await serve(router.metrics_app())
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/metrics", headers=headers or {}) as resp,
        ):
            assert resp.status == 200
            return await resp.text(), resp.headers
    finally:
        await runner.cleanup()


# -- the contract --------------------------------------------------------------------------


async def test_metric_names_types_and_labels_are_the_contract(
    router: Router, registry: CollectorRegistry
) -> None:
    await router.send(OTP_DE)
    feed = PrometheusHook(registry)  # the events a send does not make, straight to a hook
    feed(Failover("m", "primary", "secondary", "transient"))
    feed(RateLimitWait("primary", 0.2, waited=True))
    feed(RateLimitWait("primary", 5.0, waited=False))
    feed(ConcurrencySkip("primary"))
    feed(DeliveryReceived("primary", "DE", "delivered", 3.0))
    feed(WebhookRefused("primary", "status", "signature"))
    feed(BreakerTransition("primary", None, "closed", "open"))
    feed(GuardRefused("velocity", "otp", "DE", "default"))
    feed(GuardOverrun("number", "DE"))
    feed(AnomalyTransition("otp", "DE", "tripped", 60, 2))
    feed(BudgetSpent("provider:primary", 1.5, 10.0, "USD"))
    families = {
        m.name: (m.type, {k for s in m.samples for k in s.labels} - {"le"})
        for m in registry.collect()
    }
    assert families == CONTRACT


async def test_attempts_failover_and_final_status_of_one_message(
    router: Router, registry: CollectorRegistry, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(503, times=1)
    result = await router.send(OTP_DE)
    assert result.provider == "secondary"
    attempts = "smsroute_attempts_total"
    assert value(registry, attempts, provider="primary", country="DE", outcome="transient") == 1
    assert value(registry, attempts, provider="secondary", country="DE", outcome="accepted") == 1
    assert (
        value(
            registry,
            "smsroute_failovers_total",
            from_provider="primary",
            to_provider="secondary",
            reason="transient",
        )
        == 1
    )
    assert value(registry, "smsroute_messages_total", category="otp", status="accepted") == 1
    assert value(registry, "smsroute_messages_total", category="otp", status="failed") == 0
    assert value(registry, "smsroute_message_duration_seconds_count", category="otp") == 1
    assert (
        value(
            registry,
            "smsroute_attempt_duration_seconds_count",
            provider="primary",
            outcome="transient",
        )
        == 1
    )


async def test_segments_and_cost_count_accepted_messages_in_their_currency(
    router: Router, registry: CollectorRegistry, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(503, times=1)
    long_text = "x" * 200  # GSM-7, two segments
    await router.send(Message(to="+4915123456789", text=long_text, category="otp"))
    assert value(registry, "smsroute_segments_total", provider="secondary", country="DE") == 2
    cost = value(registry, "smsroute_cost_total", provider="secondary", currency="EUR")
    assert cost == pytest.approx(0.18)
    assert value(registry, "smsroute_segments_total", provider="primary", country="DE") is None


async def test_a_failed_message_counts_no_segments_and_no_cost(
    router: Router, registry: CollectorRegistry, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    twilio_a.fail(503)
    twilio_b.fail(503)
    result = await router.send(OTP_DE)
    assert result.status == "failed"
    assert value(registry, "smsroute_messages_total", category="otp", status="failed") == 1
    names = {s.name for m in registry.collect() for s in m.samples}
    assert "smsroute_segments_total" not in names
    assert "smsroute_cost_total" not in names


# -- bounded labels, no private data -------------------------------------------------------


async def test_metrics_are_the_same_whether_events_are_built_or_not(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    # Alone, the Prometheus hook is called directly; with another hook, through
    # events.  The same traffic must give the same series either way.
    def per_message(r: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
        names = ("smsroute_attempts", "smsroute_messages", "smsroute_segments", "smsroute_cost")
        return sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for m in r.collect()
            if m.name in names or m.name.endswith("_duration_seconds")
            for s in m.samples
            if not s.name.endswith(("_sum", "_created")) and "le" not in s.labels
        )

    seen: list[object] = []
    results = []
    for hooks in ([], [seen.append]):
        registry = CollectorRegistry()
        config = make_config(two_providers(twilio_a, twilio_b))
        async with Router(config, registry=registry, hooks=hooks) as router:
            assert (router.dispatcher.direct_metrics is None) is bool(hooks)
            twilio_a.fail(503, times=1)
            for text in ("one", "two", "three"):
                await router.send(Message(to="+4915123456789", text=text, category="otp"))
            await router.send(Message(to="+33612345678", text="four", category="marketing"))
        results.append(per_message(registry))
        twilio_a.heal()
    assert results[0] == results[1]
    assert any(name == "smsroute_cost_total" for name, _, _ in results[0])
    assert seen  # the second router's own hook saw the events


def test_default_metric_countries_are_thirty_iso_codes() -> None:
    assert Defaults().metric_countries == DEFAULT_METRIC_COUNTRIES
    assert len(DEFAULT_METRIC_COUNTRIES) == 30
    assert DEFAULT_METRIC_COUNTRIES <= phonenumbers.SUPPORTED_REGIONS


async def test_countries_beyond_metric_countries_are_other(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    config = make_config(two_providers(twilio_a, twilio_b, defaults="metric_countries: [US]"))
    async with Router(config, registry=registry) as router:
        await router.send(OTP_DE)
    attempts = "smsroute_attempts_total"
    assert value(registry, attempts, provider="primary", country="other", outcome="accepted") == 1
    assert value(registry, attempts, provider="primary", country="DE", outcome="accepted") is None
    assert value(registry, "smsroute_segments_total", provider="primary", country="other") == 1


def test_metric_countries_must_be_iso_codes() -> None:
    with pytest.raises(ConfigError) as err:
        make_config(
            """
            defaults:
              metric_countries: [DE, Germany]
            providers:
              p: {type: twilio, account_sid: AC1, auth_token: t}
            rules:
              - name: default
                providers: [p]
            """
        )
    assert "defaults.metric_countries" in str(err.value)
    assert "'Germany'" in str(err.value)


async def test_no_number_text_or_secret_appears_in_the_metrics(
    router: Router, twilio_a: FakeTwilio
) -> None:
    twilio_a.fail(
        400, 21211, times=1
    )  # a rejection whose detail a provider may word with the number
    await router.send(Message(to="+4915123456789", text="Secret code 987654", category="otp"))
    await router.send(OTP_DE)
    text, _ = await scrape(router)
    for private in ("15123456789", "5123456789", "987654", "Secret", twilio_a.auth_token):
        assert private not in text


async def test_webhook_refusals_for_a_made_up_provider_name_are_unknown(
    router: Router, registry: CollectorRegistry
) -> None:
    feed = PrometheusHook(registry, config=router.config)
    feed(WebhookRefused("../../etc/passwd", "status", "signature"))
    feed(WebhookRefused("primary", "weird", "malformed"))
    refusals = "smsroute_webhook_refusals_total"
    assert value(registry, refusals, provider="unknown", kind="status", reason="signature") == 1
    assert value(registry, refusals, provider="primary", kind="other", reason="malformed") == 1


async def test_delivery_receipts_count_by_status_and_observe_latency(
    router: Router, registry: CollectorRegistry
) -> None:
    feed = PrometheusHook(registry, config=router.config)
    feed(DeliveryReceived("primary", "DE", "delivered", 12.0))
    feed(DeliveryReceived("primary", "DE", "sent", None))
    feed(DeliveryReceived("primary", "BR", "no-such-status", None))
    reports = "smsroute_delivery_reports_total"
    assert value(registry, reports, provider="primary", country="DE", status="delivered") == 1
    assert value(registry, reports, provider="primary", country="DE", status="sent") == 1
    assert value(registry, reports, provider="primary", country="BR", status="unknown") == 1
    latency = "smsroute_delivery_latency_seconds"
    assert value(registry, f"{latency}_count", provider="primary") == 1
    assert value(registry, f"{latency}_sum", provider="primary") == 12.0


# -- breakers, in flight, rate limits --------------------------------------------------------


async def test_circuit_state_is_open_after_the_breaker_trips(
    router: Router, registry: CollectorRegistry, twilio_a: FakeTwilio
) -> None:
    assert value(registry, "smsroute_circuit_state", provider="primary", scope="provider") == 0
    twilio_a.fail(503)
    await router.send(OTP_DE)
    await router.send(OTP_DE)
    assert value(registry, "smsroute_circuit_state", provider="primary", scope="provider") == 2
    transitions = "smsroute_circuit_transitions_total"
    assert value(registry, transitions, provider="primary", scope="provider", to_state="open") == 1


async def test_a_scrape_shows_an_open_breaker_whose_time_is_up_as_half_open(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    clock = ManualClock()
    config = make_config(two_providers(twilio_a, twilio_b))
    async with Router(config, registry=registry, clock=clock, sleep=clock.sleep) as router:
        twilio_a.fail(503)
        await router.send(OTP_DE)
        await router.send(OTP_DE)
        clock.advance(31)  # open_for: 30s, and no send since
        text, _ = await scrape(router)
    assert 'smsroute_circuit_state{provider="primary",scope="provider"} 1.0' in text


async def test_country_breakers_show_the_worst_country_of_a_provider(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    config = make_config(
        two_providers(twilio_a, twilio_b, defaults="breaker_scope: provider_country")
    )
    async with Router(config, registry=registry) as router:
        twilio_a.fail(503, country="DE")
        for _ in range(2):
            await router.send(OTP_DE)
        await router.send(Message(to="+14155550123", text="hi", category="otp"))
        states = router.breaker_states()
    assert states[("primary", "DE")].value == "open"
    assert states[("primary", "US")].value == "closed"
    state = value(registry, "smsroute_circuit_state", provider="primary", scope="provider_country")
    assert state == 2


class SignallingTwilio(FakeTwilio):
    """A fake Twilio that says when a request reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def handle_send(self, request: web.Request) -> web.StreamResponse:
        self.reached.set()
        return await super().handle_send(request)


async def test_inflight_gauge_counts_requests_awaiting_an_answer(
    twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    async with SignallingTwilio() as slow:
        config = make_config(two_providers(slow, twilio_b))
        async with Router(config, registry=registry) as router:
            slow.hang()
            sending = asyncio.create_task(router.send(OTP_DE))
            async with asyncio.timeout(5):
                await slow.reached.wait()
            assert value(registry, "smsroute_inflight_requests", provider="primary") == 1
            slow.heal()
            await sending
    assert value(registry, "smsroute_inflight_requests", provider="primary") == 0


async def test_rate_limit_waits_are_observed_and_skips_counted(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    clock = ManualClock()
    config = make_config(
        two_providers(
            twilio_a, twilio_b, defaults="max_rate_wait: 2s", a_extra="    rate_limit: 1/s"
        )
    )
    async with Router(config, registry=registry, clock=clock, sleep=clock.sleep) as router:
        await router.send(OTP_DE)  # the bucket's one token
        await router.send(OTP_DE)  # waits a second for the next
        clock.advance(1)  # the bucket refills
        twilio_a.throttle(retry_after=60, times=1)
        await router.send(OTP_DE)  # throttled: primary paused for a minute, secondary sends
        await router.send(OTP_DE)  # primary skipped without a request
    wait = "smsroute_ratelimit_wait_seconds"
    assert value(registry, f"{wait}_count", provider="primary") == 1
    assert value(registry, f"{wait}_sum", provider="primary") == pytest.approx(1.0)
    assert value(registry, "smsroute_ratelimit_skips_total", provider="primary") == 1
    attempts = "smsroute_attempts_total"
    assert value(registry, attempts, provider="primary", country="DE", outcome="throttled") == 1


# -- config, registry, installation ------------------------------------------------------------


def test_info_carries_the_version(registry: CollectorRegistry) -> None:
    PrometheusHook(registry)
    assert value(registry, "smsroute_info", version=smsroute.__version__) == 1


async def test_reloads_are_counted_and_rule_series_follow_the_new_config(
    tmp_path: Path, twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(two_providers(twilio_a, twilio_b))
    async with Router.from_yaml(path, registry=registry) as router:
        info = "smsroute_rule_provider_info"
        assert value(registry, info, rule="default", provider="secondary") == 1
        with pytest.raises(ConfigError):
            router.reload(tmp_path / "missing.yaml")
        path.write_text(
            two_providers(twilio_a, twilio_b).replace("name: default", "name: everything")
        )
        router.reload()
    assert value(registry, "smsroute_config_reloads_total", result="error") == 1
    assert value(registry, "smsroute_config_reloads_total", result="success") == 1
    assert value(registry, info, rule="default", provider="secondary") is None
    assert value(registry, info, rule="everything", provider="secondary") == 1


async def test_routers_sharing_a_registry_share_its_metrics(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    config = make_config(two_providers(twilio_a, twilio_b))
    async with (
        Router(config, registry=registry) as one,
        Router(config, registry=registry) as two,
    ):
        await one.send(OTP_DE)
        await two.send(OTP_DE)
    assert value(registry, "smsroute_messages_total", category="otp", status="accepted") == 2


async def test_routers_on_the_global_registry_do_not_collide(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    config = make_config(two_providers(twilio_a, twilio_b))
    async with Router(config) as one, Router(config) as two:
        assert (await one.send(OTP_DE)).ok
        assert (await two.send(OTP_DE)).ok


async def test_metrics_false_installs_no_hook(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    seen: list[Event] = []
    config = make_config(two_providers(twilio_a, twilio_b))
    async with Router(config, registry=registry, metrics=False, hooks=[seen.append]) as router:
        await router.send(OTP_DE)
    assert list(registry.collect()) == []
    assert [type(e) for e in seen] == [AttemptFinished, MessageFinished]


async def test_your_hooks_run_after_the_metrics_are_counted(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    counted: list[float | None] = []

    def hook(event: Event) -> None:
        if isinstance(event, MessageFinished):
            counted.append(
                value(registry, "smsroute_messages_total", category="otp", status="accepted")
            )

    config = make_config(two_providers(twilio_a, twilio_b))
    async with Router(config, registry=registry, hooks=[hook]) as router:
        await router.send(OTP_DE)
    assert counted == [1]


def test_core_imports_prometheus_client_only_inside_instrument() -> None:
    imports = re.compile(r"^\s*(from|import)\s+prometheus_client\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(
            [*(ROOT / "smsroute").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]
        )
        if "instrument" not in path.parts and imports.search(path.read_text())
    ]
    assert offenders == []


# -- exposition ------------------------------------------------------------------------------


async def test_metrics_app_serves_the_prometheus_text_format(router: Router) -> None:
    await router.send(OTP_DE)
    text, headers = await scrape(router)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert f'smsroute_info{{version="{smsroute.__version__}"}} 1.0' in text
    assert "smsroute_attempts_total{" in text


async def test_metrics_app_serves_openmetrics_when_asked(router: Router) -> None:
    text, headers = await scrape(
        router, {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


async def test_metrics_app_compresses_for_a_scraper_that_accepts_gzip(router: Router) -> None:
    runner, url = await serve(router.metrics_app())
    try:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"}) as resp,
        ):
            assert resp.headers["Content-Encoding"] == "gzip"
            body = gzip.decompress(await resp.read()).decode()
    finally:
        await runner.cleanup()
    assert "smsroute_info" in body


async def test_metrics_handler_mounts_in_your_own_app(router: Router) -> None:
    app = web.Application()
    app.router.add_get("/internal/metrics", router.metrics_handler)
    runner, url = await serve(app)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/internal/metrics") as resp,
        ):
            text = await resp.text()
    finally:
        await runner.cleanup()
    assert "smsroute_circuit_state{" in text


WORKER = """
import asyncio, sys
from smsroute import MessageFinished, PrometheusHook
hook = PrometheusHook()
for _ in range(int(sys.argv[1])):
    hook(MessageFinished("m", "otp", "DE", "accepted", 0.1, "p", 1, 0.05, "USD", None, "r"))
"""

SCRAPER = """
from smsroute.instrument.prometheus import exposition
body, _ = exposition(None, None)
print(body.decode())
"""


def test_multiprocess_mode_serves_every_workers_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def python(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    python(WORKER, "2")
    python(WORKER, "3")
    text = python(SCRAPER)
    assert 'smsroute_messages_total{category="otp",status="accepted"} 5.0' in text


# -- the logging hook --------------------------------------------------------------------------


def test_logging_hook_logs_receipts_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    hook = LoggingHook()
    with caplog.at_level(logging.DEBUG, logger="smsroute.events"):
        hook(DeliveryReceived("primary", "DE", "undelivered", 30.0))
        hook(WebhookRefused("primary", "status", "signature"))
        hook(ConfigReloaded("routing.yaml", "success"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.INFO,
            "delivery_received provider=primary country=DE status=undelivered latency=30.0",
        ),
        (logging.WARNING, "webhook_refused provider=primary kind=status reason=signature"),
        (logging.INFO, "config_reloaded source=routing.yaml result=success"),
    ]


def test_histograms_count_like_prometheus_clients_own(registry: CollectorRegistry) -> None:
    hook = PrometheusHook(registry)
    reference = CollectorRegistry()
    expected = Histogram(
        "smsroute_attempt_duration_seconds",
        "",
        ["provider", "outcome"],
        buckets=ATTEMPT_BUCKETS,
        registry=reference,
    ).labels("p", "accepted")
    for latency in (0.0, 0.005, 0.0051, 0.3, 30.0, 31.0, 0.005):  # on, above, beyond bounds
        hook(AttemptFinished("m", "p", "DE", Outcome.ACCEPTED, latency, 1))
        expected.observe(latency)

    def samples(r: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
        return sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for m in r.collect()
            if m.name == "smsroute_attempt_duration_seconds"
            for s in m.samples
            if not s.name.endswith("_created")
        )

    assert samples(registry) == samples(reference)


def test_prometheus_hook_ignores_events_it_does_not_know(registry: CollectorRegistry) -> None:
    hook = PrometheusHook(registry)
    hook(object())  # type: ignore[arg-type]
    hook(AttemptFinished("m", "p", "DE", Outcome.ACCEPTED, 0.01, 1))
    assert (
        value(registry, "smsroute_attempts_total", provider="p", country="DE", outcome="accepted")
        == 1
    )


async def test_routers_on_one_registry_show_the_worst_of_their_breakers(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, registry: CollectorRegistry
) -> None:
    """Two routers on one registry (the global one, by default) with a provider of the
    same name: the gauge is the worst of their breakers.  Before, each router's breaker
    events wrote one shared table: the second router's breaker mending hid the first's,
    still open."""
    config = make_config(two_providers(twilio_a, twilio_b))
    one_clock, two_clock = ManualClock(), ManualClock()
    labels = {"provider": "primary", "scope": "provider"}
    async with (
        Router(config, registry=registry, clock=one_clock, sleep=one_clock.sleep) as one,
        Router(config, registry=registry, clock=two_clock, sleep=two_clock.sleep) as two,
    ):
        twilio_a.fail(503)
        for router in (one, two, one, two):
            await router.send(OTP_DE)
        assert value(registry, "smsroute_circuit_state", **labels) == 2
        twilio_a.heal()
        two_clock.advance(31)  # only the second router's breaker half-opens (and mends)
        assert (await two.send(OTP_DE)).provider == "primary"
        assert two.breaker_states()[("primary", None)] is not BreakerState.OPEN
        assert one.breaker_states()[("primary", None)] is BreakerState.OPEN
        assert value(registry, "smsroute_circuit_state", **labels) == 2
