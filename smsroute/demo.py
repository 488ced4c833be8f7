"""``smsroute demo``: the whole product in half a minute, on any machine.

Three fake providers (Twilio, Vonage, Telnyx: real HTTP servers on 127.0.0.1
speaking each provider's wire format, sending signed delivery receipts back)
and config/demo.yaml.  Traffic to a mix of countries and categories; part way
through Twilio goes hard down for Germany and later recovers, and Vonage
throttles for a while.  A live view shows each provider's share, breakers,
latency, failovers, throttling and delivery ratio; ``/metrics`` is served
throughout; a summary says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import attrs
from aiohttp import web
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from smsroute.config import Config
from smsroute.configload import load_config
from smsroute.errors import ConfigError
from smsroute.instrument.events import (
    AttemptFinished,
    BreakerTransition,
    DeliveryReceived,
    Event,
    Failover,
    MessageFinished,
)
from smsroute.message import Message, Outcome
from smsroute.router import Router
from smsroute.server import make_server_app
from smsroute.testing import FakeTelnyx, FakeTwilio, FakeVonage

PROVIDERS = ("twilio", "vonage", "telnyx")
# Destinations weighted roughly like a European/US consumer service's traffic.
DESTINATIONS = [  # (prefix, random digits, weight)
    ("+49151", 8, 30),
    ("+3361", 7, 15),
    ("+447911", 6, 15),
    ("+1415", 7, 25),
    ("+551198", 7, 8),
    ("+9198", 8, 7),
]
CATEGORIES = [("otp", 40), ("transactional", 40), ("marketing", 20)]
TEXTS = {
    "otp": "Your verification code is {:06d}",
    "transactional": "Your order #{:06d} has shipped and arrives tomorrow.",
    "marketing": "Black Friday: 30% off everything until midnight! Code BF{:06d}. Reply STOP to opt out.",
}


def default_config_path() -> Path:
    """The shipped demo config (config/demo.yaml in a checkout links to it)."""
    return Path(str(resources.files("smsroute").joinpath("data/demo.yaml")))


@attrs.define
class Stats:
    """What the live view and the summary show, fed by router events."""

    started: float = attrs.field(factory=time.monotonic)
    accepted: Counter[str] = attrs.field(factory=Counter)
    failed: int = 0
    messages: int = 0
    attempts: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    latencies: defaultdict[str, list[float]] = attrs.field(factory=lambda: defaultdict(list))
    failovers: Counter[tuple[str, str, str]] = attrs.field(factory=Counter)
    delivered: Counter[str] = attrs.field(factory=Counter)
    undelivered: Counter[str] = attrs.field(factory=Counter)
    breakers: dict[str, str] = attrs.field(factory=dict)
    timeline: list[tuple[float, str]] = attrs.field(factory=list)
    de_by_provider: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    phase: str = "warming up"

    def hook(self, event: Event) -> None:
        if isinstance(event, AttemptFinished):
            self.attempts[(event.provider, event.outcome.value)] += 1
            if not event.skipped:
                self.latencies[event.provider].append(event.latency)
        elif isinstance(event, MessageFinished):
            self.messages += 1
            if event.status == "accepted" and event.provider:
                self.accepted[event.provider] += 1
                if event.country == "DE":
                    self.de_by_provider[(self.phase, event.provider)] += 1
            else:
                self.failed += 1
        elif isinstance(event, Failover):
            self.failovers[(event.from_provider, event.to_provider, event.reason)] += 1
        elif isinstance(event, BreakerTransition):
            name = event.provider + (f"[{event.country}]" if event.country else "")
            self.breakers[name] = event.to_state
            self.note(f"breaker {name}: {event.from_state} -> {event.to_state}")
        elif isinstance(event, DeliveryReceived):
            if event.status == "delivered":
                self.delivered[event.provider] += 1
            elif event.status in ("undelivered", "failed"):
                self.undelivered[event.provider] += 1

    def note(self, text: str) -> None:
        self.timeline.append((time.monotonic() - self.started, text))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values[-2000:])
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(stats: Stats, elapsed: float, duration: float, metrics_url: str) -> Group:
    """The live view: one row per provider, then the latest events."""
    total = sum(stats.accepted.values()) or 1
    table = Table(
        title=f"smsroute demo — {elapsed:4.1f}s / {duration:.0f}s — {stats.phase}",
        title_justify="left",
    )
    for col in (
        "provider",
        "share",
        "accepted",
        "breaker",
        "p50 ms",
        "p99 ms",
        "failed over",
        "throttled",
        "delivered",
    ):
        table.add_column(col, justify="right" if col not in ("provider", "breaker") else "left")
    for p in PROVIDERS:
        lat = stats.latencies[p]
        p50, p99 = _percentile(lat, 0.5), _percentile(lat, 0.99)
        breakers = (
            ", ".join(
                f"{k.split('[')[-1].rstrip(']') if '[' in k else 'all'}: {v}"
                for k, v in sorted(stats.breakers.items())
                if k.split("[")[0] == p and v != "closed"
            )
            or "closed"
        )
        away = sum(n for (f, _, _), n in stats.failovers.items() if f == p)
        throttled = stats.attempts[(p, Outcome.THROTTLED.value)]
        done = stats.delivered[p] + stats.undelivered[p]
        ratio = f"{stats.delivered[p] / done:.0%}" if done else "-"
        table.add_row(
            p,
            f"{stats.accepted[p] / total:.0%}",
            str(stats.accepted[p]),
            breakers,
            "-" if p50 is None else f"{p50 * 1000:.1f}",
            "-" if p99 is None else f"{p99 * 1000:.1f}",
            str(away),
            str(throttled),
            ratio,
        )
    recent = Text("\n".join(f"{t:5.1f}s  {line}" for t, line in stats.timeline[-6:]) or "…")
    footer = Text(
        f"messages {stats.messages}  failed {stats.failed}  metrics: {metrics_url}", style="dim"
    )
    return Group(table, recent, footer)


def summary(stats: Stats) -> Table:
    """What happened, for the end of the demo."""
    table = Table(title="What happened", title_justify="left", show_header=False, box=None)
    table.add_column(justify="left")
    table.add_column(justify="left")
    table.add_row("messages", f"{stats.messages} sent, {stats.failed} failed")
    table.add_row("accepted by", ", ".join(f"{p} {stats.accepted[p]}" for p in PROVIDERS))
    moved = Counter[str]()
    for (src, dst, reason), n in stats.failovers.items():
        moved[f"{src} -> {dst} ({reason})"] += n
    table.add_row("failovers", "; ".join(f"{k}: {n}" for k, n in moved.most_common(6)) or "none")
    for phase in ("before the outage", "Twilio down for DE", "after recovery"):
        shares = {p: stats.de_by_provider[(phase, p)] for p in PROVIDERS}
        table.add_row(f"DE traffic, {phase}", ", ".join(f"{p} {n}" for p, n in shares.items()))
    for p in PROVIDERS:
        done = stats.delivered[p] + stats.undelivered[p]
        table.add_row(
            f"delivery ratio {p}",
            f"{stats.delivered[p] / done:.0%} of {done} receipts" if done else "no receipts",
        )
    for t, line in stats.timeline:
        if line.startswith(("breaker", "phase")):
            table.add_row(f"{t:5.1f}s", line)
    return table


def _bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


async def run_demo(
    *,
    duration: float = 30.0,
    rate: float = 40.0,
    config_path: str | Path | None = None,
    console: Console | None = None,
    seed: int | None = None,
    metrics_port: int = 0,
) -> Stats:
    """Run the demo; returns the statistics it showed.

    ``/metrics`` (and the fakes' receipts) are served on 127.0.0.1:``metrics_port``
    (0: a free port); the URL is printed first, terminal or not.  An OSError
    when that port cannot be bound.
    """
    console = console or Console()
    rng = random.Random(seed)
    stats = Stats()
    hooks_sock = _bound_socket(metrics_port)
    hooks_port = hooks_sock.getsockname()[1]
    async with FakeTwilio() as twilio, FakeVonage(balance=1e9) as vonage, FakeTelnyx() as telnyx:
        environ = {
            "DEMO_WEBHOOK_PORT": str(hooks_port),
            "DEMO_TWILIO_PORT": str(twilio.port),
            "DEMO_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "DEMO_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "DEMO_VONAGE_PORT": str(vonage.port),
            "DEMO_VONAGE_API_KEY": vonage.api_key,
            "DEMO_VONAGE_API_SECRET": vonage.api_secret,
            "DEMO_TELNYX_PORT": str(telnyx.port),
            "DEMO_TELNYX_API_KEY": telnyx.api_key,
            "DEMO_TELNYX_PUBLIC_KEY": telnyx.public_key,
        }
        try:
            config: Config = load_config(config_path or default_config_path(), environ=environ)
        except ConfigError:
            hooks_sock.close()
            raise
        for fake, delay in ((twilio, 0.3), (vonage, 0.5), (telnyx, 0.4)):
            with contextlib.suppress(NotImplementedError):
                fake.receipts("delivered", delay=delay * duration / 30)
        router = Router(config, hooks=[stats.hook], rng=rng)
        app = make_server_app(config, router)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, hooks_sock).start()
        metrics_url = f"http://127.0.0.1:{hooks_port}/metrics"
        console.print(f"metrics: {metrics_url} (while the demo runs)", markup=False)
        console.file.flush()
        try:
            await _traffic(router, stats, twilio, vonage, duration, rate, rng, console, metrics_url)
        finally:
            await runner.cleanup()
    console.print(summary(stats))
    return stats


async def _traffic(
    router: Router,
    stats: Stats,
    twilio: FakeTwilio,
    vonage: FakeVonage,
    duration: float,
    rate: float,
    rng: random.Random,
    console: Console,
    metrics_url: str,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    schedule: list[tuple[float, str, Callable[[], None]]] = [
        (0.20, "Twilio down for DE", lambda: twilio.fail(503, country="DE")),
        (0.30, "Vonage throttling", lambda: vonage.throttle(retry_after=2 * duration / 30)),
        (0.45, "Vonage recovered", vonage.heal),
        (0.50, "after recovery", twilio.heal),
    ]
    stats.phase = "before the outage"
    tasks: set[asyncio.Task[None]] = set()
    weights_d = [w for *_, w in DESTINATIONS]
    weights_c = [w for _, w in CATEGORIES]

    async def one(n: int) -> None:
        prefix, digits, _ = rng.choices(DESTINATIONS, weights_d)[0]
        category = rng.choices(CATEGORIES, weights_c)[0][0]
        number = f"{prefix}{rng.randrange(10**digits):0{digits}d}"
        with contextlib.suppress(ValueError):  # an unlucky random number is not valid
            await router.send(Message(to=number, text=TEXTS[category].format(n), category=category))

    with Live(
        render(stats, 0, duration, metrics_url),
        console=console,
        refresh_per_second=8,
        transient=not console.is_terminal,
    ) as live:
        n = 0
        next_refresh = 0.0
        while (elapsed := loop.time() - start) < duration:
            while schedule and elapsed >= schedule[0][0] * duration:
                _, label, action = schedule.pop(0)
                action()
                if label in ("Twilio down for DE", "after recovery"):
                    stats.phase = label
                stats.note(f"phase: {label}")
            due = int(elapsed * rate)
            while n < due:
                n += 1
                task = asyncio.ensure_future(one(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if elapsed >= next_refresh:
                live.update(render(stats, elapsed, duration, metrics_url))
                next_refresh = elapsed + 0.25
            await asyncio.sleep(1 / max(rate, 1))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(min(1.0, duration / 10))  # let the last receipts arrive
        live.update(render(stats, loop.time() - start, duration, metrics_url))
