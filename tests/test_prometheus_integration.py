"""The shipped dashboard and alert rules, proven against a real Prometheus.

A router sends traffic through fake providers on 127.0.0.1 while one of them
(``primary``) has an outage; a real ``prometheus`` process on a free loopback
port scrapes the router's ``metrics_app()`` every second.  Then every PromQL
expression of ``examples/grafana/smsroute.json`` and ``examples/prometheus/alerts.yml``
is evaluated through Prometheus's HTTP API.  ``promtool`` checks our exposition,
the rules and their unit tests.

Prometheus and promtool come from Debian's ``prometheus`` package; the
``prom_tools`` fixture installs it when missing (the tests run as root in CI)
and fails, saying so, when it cannot.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from smsroute import (
    ConfigError,
    DeliveryReceived,
    GuardOverrun,
    GuardRefused,
    Message,
    PrometheusHook,
    Router,
    WebhookRefused,
)
from smsroute.testing import FakePlivo, FakeTwilio, FakeVonage

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "smsroute.json"
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "examples" / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = ROOT / "examples" / "prometheus" / "prometheus.yml"

APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]

T = TypeVar("T")


# -- the binaries ------------------------------------------------------------------------


@attrs.frozen
class PromTools:
    prometheus: str
    promtool: str

    def promtool_run(
        self, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.promtool, *args], input=stdin, capture_output=True, text=True, timeout=60
        )


def _find_tools() -> PromTools | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return PromTools(prometheus, promtool)
    return None


@pytest.fixture(scope="session")
def prom_tools() -> PromTools:
    """prometheus and promtool from PATH, installed from Debian's package if missing."""
    tools = _find_tools()
    if tools is not None:
        return tools
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(APT_INSTALL, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(APT_INSTALL, capture_output=True, text=True, env=env, timeout=900)
    tools = _find_tools()
    if tools is None:
        pytest.fail(
            "these tests need prometheus and promtool, from Debian's 'prometheus' package; "
            f"`{' '.join(APT_INSTALL)}` failed (run it as root, or put both on PATH):\n"
            f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
        )
    return tools


# -- what the shipped files ask Prometheus -------------------------------------------------

#: Grafana's variables, as an operator who picked "All" would send them.
GRAFANA_VARIABLES = {
    "${datasource}": "prometheus",
    "$provider": ".*",
    "$country": ".*",
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def grafana_expr(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", grafana_expr(target["expr"])))
    return out


def dashboard_variable_selectors() -> list[tuple[str, str]]:
    """``label_values(selector, label)`` of each variable, as ``group by (label) (selector)``."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m is not None, var["query"]
        out.append((var["name"], grafana_expr(f"group by ({m[2]}) ({m[1]})")))
    return out


def alert_rules() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


# -- a router with an outage, scraped by a real Prometheus ---------------------------------


class LoopThread:
    """An event loop in a thread: the router and fakes live there while the tests
    (and Prometheus) talk to them over sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class PromAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def wait_until(
        self, what: str, check: Callable[[], bool], timeout: float = 20, every: float = 0.1
    ) -> None:
        """Poll ``check`` until it holds; fail after ``timeout`` seconds saying ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except OSError:
                pass  # Prometheus still starting
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus never showed {what} within {timeout}s")
            time.sleep(every)

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Scenario:
    api: PromAPI
    metrics_url: str
    tools: PromTools
    messages: int = 0


def routing_yaml(primary: FakeTwilio, backup: FakeVonage, cheap: FakePlivo) -> str:
    return textwrap.dedent(
        f"""
        defaults:
          max_rate_wait: 300ms
          metric_countries: [DE, US]
          breaker: {{consecutive_failures: 15, min_calls: 1000, open_for: 10m, max_open_for: 10m}}
        providers:
          primary:
            type: twilio
            base_url: {primary.url}
            account_sid: {primary.account_sid}
            auth_token: "{primary.auth_token}"
            from: "+15005550006"
            prices: {{default: 0.05}}
          backup:
            type: vonage
            base_url: {backup.url}
            api_key: "{backup.api_key}"
            api_secret: "{backup.api_secret}"
            from: Acme
            prices: {{DE: 0.07, FR: 0.08, default: 0.06}}
            currency: EUR
          cheap:
            type: plivo
            base_url: {cheap.url}
            auth_id: {cheap.auth_id}
            auth_token: "{cheap.auth_token}"
            from: "+14155550100"
            rate_limit: 4/s
            burst: 1
            prices: {{US: 0.004}}
        rules:
          - name: fr-primary-only
            match: {{country: FR}}
            providers: [primary]
          - name: marketing-us
            match: {{country: US, category: marketing}}
            providers: [cheap, backup]
            on_budget: cheapest_under_cap
          - name: default
            providers: [primary, backup]
        guards:
          otp:
            countries: {{deny: [GB]}}
          budgets:
            # cheap takes 2 to 4 sends a wave (rate limit 4/s, burst 1, waits of at most
            # 300ms) at 0.004 each: capped only after two waves at least, so its attempts,
            # waits and skips rise across scrapes (at 0.01 it could be capped within the
            # first wave when its sends came staggered: rate() of its series was 0/0)
            - {{scope: provider, name: cheap, limit: 0.03, per: day}}
        """
    )


async def wave(
    router: Router,
    feeder: PrometheusHook,
    *,
    de: int = 0,
    fr: int = 0,
    us: int = 0,
    gb: int = 0,
    pumped: int = 0,
    reload: str | None = None,
) -> int:
    """Send one wave of traffic and feed the receipts and refusals issue 5 will emit."""
    sends = [
        *(Message(to=f"+4915123456{i:03d}", text="Code 123456", category="otp") for i in range(de)),
        *(Message(to=f"+3361234{i:04d}", text="Code 123456", category="otp") for i in range(fr)),
        *(Message(to=f"+1650253{i:04d}", text="Sale!", category="marketing") for i in range(us)),
        # otp to a denied country (pumping traffic): refused by the guards, no provider called.
        *(Message(to=f"+4474001234{i:02d}", text="Code 123456", category="otp") for i in range(gb)),
    ]
    await asyncio.gather(*(router.send(m) for m in sends))
    # Receipts: backup delivers to DE; cheap accepts US traffic and never delivers it.
    for _ in range(5):
        feeder(DeliveryReceived("backup", "DE", "delivered", 4.0))
    feeder(DeliveryReceived("backup", "DE", "sent", None))
    feeder(DeliveryReceived("cheap", "US", "failed", 20.0))
    for _ in range(4):
        feeder(DeliveryReceived("cheap", "US", "undelivered", 60.0))
    feeder(WebhookRefused("primary", "status", "signature"))
    feeder(WebhookRefused("made-up-name", "inbound", "signature"))
    # Pumping traffic refused by the guards, fed as events (as the router's gb sends
    # above emit them) so that smsroute_messages_total, and the failover ratio, keep
    # their values.
    for _ in range(pumped):
        feeder(GuardRefused("geo", "otp", "GB", "default"))
    feeder(GuardOverrun("number", "DE"))  # a replica with guard_checks: local
    if reload == "good":
        router.reload()
    elif reload == "bad":
        with pytest.raises(ConfigError):
            router.reload(os.devnull)
    return len(sends)


@pytest.fixture(scope="module")
def scenario(prom_tools: PromTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("prometheus")
    lt = LoopThread()
    registry = CollectorRegistry()
    primary, backup, cheap = FakeTwilio(), FakeVonage(), FakePlivo()
    runner: web.AppRunner | None = None
    router: Router | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    log = (tmp / "prometheus.log").open("wb")

    async def start() -> tuple[Router, web.AppRunner, int]:
        for fake in (primary, backup, cheap):
            await fake.start()
        primary.fail(503)  # the outage: every request to primary gets a 503
        config = tmp / "routing.yaml"
        config.write_text(routing_yaml(primary, backup, cheap))
        r = Router.from_yaml(config, registry=registry)
        await r.__aenter__()
        app_runner = web.AppRunner(r.metrics_app(), access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        port = app_runner.addresses[0][1]
        return r, app_runner, port

    async def stop() -> None:
        if runner is not None:
            await runner.cleanup()
        if router is not None:
            await router.aclose()
        for fake in (primary, backup, cheap):
            await fake.stop()

    try:
        router, runner, metrics_port = lt.run(start())
        prom_port = free_port()
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {
                            "job_name": "smsroute",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        prometheus = subprocess.Popen(
            [
                prom_tools.prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = PromAPI(f"http://127.0.0.1:{prom_port}")
        s = Scenario(api, f"http://127.0.0.1:{metrics_port}/metrics", prom_tools)

        def scraped(total: int) -> bool:
            if prometheus is not None and prometheus.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            return api.scalar('sum(smsroute_messages_total{job="smsroute"})') == total

        api.wait_until("the router's target up", lambda: api.scalar("up") == 1, timeout=30)
        feeder = PrometheusHook(registry, config=router.config)
        # Each wave waits for a scrape that saw all of it, so every counter moves
        # across several scrapes and rate() has something to say.
        plan: list[dict[str, Any]] = [
            {"de": 1, "us": 4, "gb": 1, "reload": "good"},  # warm-up: the series appear
            {"de": 5, "us": 4, "pumped": 10},
            {"de": 5, "us": 4, "pumped": 10, "reload": "bad"},
            {"de": 4, "us": 4, "pumped": 10},  # primary's 15th failure in a row opens its breaker
            {"de": 3, "fr": 3},  # FR's only provider is open: last resort
            {"de": 3, "fr": 3, "reload": "good"},
        ]
        for step in plan:
            s.messages += lt.run(wave(router, feeder, **step))
            api.wait_until(f"{s.messages} messages", lambda: scraped(s.messages))
        api.wait_until(
            "every alert rule evaluated",
            lambda: all(
                r["health"] != "unknown"
                for g in api.get("/api/v1/rules")["groups"]
                for r in g["rules"]
            ),
        )
        yield s
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        log.close()
        lt.run(stop())
        lt.close()


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("panel", "expr"), dashboard_exprs(), ids=[p for p, _ in dashboard_exprs()]
)
def test_dashboard_expression_returns_data(scenario: Scenario, panel: str, expr: str) -> None:
    result = scenario.api.query(expr)
    assert result, f"{panel}: no data for {expr}"
    assert any(not math.isnan(v) for v in values(result)), f"{panel}: only NaN for {expr}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "expr"),
    dashboard_variable_selectors(),
    ids=[v for v, _ in dashboard_variable_selectors()],
)
def test_dashboard_variable_finds_values(scenario: Scenario, variable: str, expr: str) -> None:
    assert scenario.api.query(expr), f"${variable}: no values from {expr}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("alert", "expr"), sorted(alert_rules().items()), ids=sorted(alert_rules())
)
def test_alert_expression_returns_data(scenario: Scenario, alert: str, expr: str) -> None:
    assert scenario.api.query(expr), f"{alert}: no data for {expr}"


@pytest.mark.slow
def test_provider_error_alert_names_the_failing_provider_and_no_other(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsrouteProviderErrorRatioHigh"])
    assert [r["metric"]["provider"] for r in result] == ["primary"]


@pytest.mark.slow
def test_circuit_open_alert_names_the_failing_provider(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsrouteCircuitOpen"])
    assert [r["metric"]["provider"] for r in result] == ["primary"]


@pytest.mark.slow
def test_all_open_alert_names_the_rule_left_without_a_provider(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsrouteRuleAllProvidersOpen"])
    assert [r["metric"]["rule"] for r in result] == ["fr-primary-only"]


@pytest.mark.slow
def test_delivery_alert_names_the_provider_that_does_not_deliver(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsrouteDeliveryRatioDropped"])
    assert [(r["metric"]["provider"], r["metric"]["country"]) for r in result] == [("cheap", "US")]


@pytest.mark.slow
def test_pumping_alert_names_the_country_the_guards_refuse(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsroutePumpingSuspected"])
    assert [(r["metric"]["category"], r["metric"]["country"]) for r in result] == [("otp", "other")]
    refusals = scenario.api.query("sum by (guard) (smsroute_guard_refusals_total)")
    assert {r["metric"]["guard"]: float(r["value"][1]) for r in refusals} == {"geo": 31.0}


@pytest.mark.slow
def test_budget_alert_names_the_budget_past_80_percent(scenario: Scenario) -> None:
    result = scenario.api.query(alert_rules()["SmsrouteBudgetNearlySpent"])
    assert [r["metric"]["scope"] for r in result] == ["provider:cheap"]


@pytest.mark.slow
def test_success_ratio_panel_shows_a_provider_that_accepts_nothing_at_zero(
    scenario: Scenario,
) -> None:
    (expr,) = [e for p, e in dashboard_exprs() if p.startswith("Success ratio by provider")]
    ratios = {r["metric"]["provider"]: float(r["value"][1]) for r in scenario.api.query(expr)}
    assert ratios == {"primary": 0.0, "backup": 1.0, "cheap": 1.0}


@pytest.mark.slow
def test_delivery_ratio_panel_shows_a_provider_that_delivers_nothing_at_zero(
    scenario: Scenario,
) -> None:
    (expr,) = [e for p, e in dashboard_exprs() if p.startswith("Delivery ratio")]
    ratios = {
        (r["metric"]["provider"], r["metric"]["country"]): float(r["value"][1])
        for r in scenario.api.query(expr)
    }
    assert ratios == {("backup", "DE"): 1.0, ("cheap", "US"): 0.0}


@pytest.mark.slow
def test_countries_beyond_the_configured_list_are_other(scenario: Scenario) -> None:
    result = scenario.api.query("group by (country) (smsroute_attempts_total)")
    assert {r["metric"]["country"] for r in result} == {"DE", "US", "other"}


@pytest.mark.slow
def test_prometheus_evaluates_every_alert_rule_without_error(scenario: Scenario) -> None:
    rules = [r for g in scenario.api.get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == set(alert_rules())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


@pytest.mark.slow
def test_promtool_check_metrics_passes_on_our_exposition(scenario: Scenario) -> None:
    with urllib.request.urlopen(scenario.metrics_url, timeout=10) as resp:
        exposition = resp.read().decode()
    assert "smsroute_attempts_total{" in exposition
    done = scenario.tools.promtool_run("check", "metrics", stdin=exposition)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


def test_promtool_check_rules_passes(prom_tools: PromTools) -> None:
    done = prom_tools.promtool_run("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass(prom_tools: PromTools) -> None:
    done = prom_tools.promtool_run("test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_rule_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert tested == set(alert_rules())


def test_dashboard_is_a_grafana_10_dashboard_with_provider_and_country_variables() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["schemaVersion"] <= 38  # Grafana 10.0 reads it; later versions migrate it
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "provider", "country"} <= set(variables)
    assert variables["datasource"]["query"] == "prometheus"
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs) >= 1, panel["title"]


def test_dashboard_has_the_panels_operators_asked_for() -> None:
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert {
        "Send rate by provider",
        "Success ratio by provider",
        "Attempt latency p50 / p95 / p99",
        "Failovers by reason",
        "Breaker states",
        "Rate-limit waits",
        "Delivery ratio by provider and country",
        "Cost per hour",
    } <= titles


def test_example_scrape_config_passes_promtool_check_config(prom_tools: PromTools) -> None:
    done = prom_tools.promtool_run("check", "config", str(SCRAPE_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
