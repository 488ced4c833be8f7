"""One aiohttp application with everything a deployment serves: the webhooks,
``/metrics`` and ``/healthz`` (what ``smsroute serve`` runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from smsroute.config import Config
from smsroute.router import Router
from smsroute.webhook_app import add_webhook_routes
from smsroute.webhooks import MAX_BODY

ROUTER = web.AppKey("smsroute_router", Router)


def webhook_prefix(config: Config) -> str:
    """The path webhooks are served under: that of ``defaults.webhook_url`` (or ``/``)."""
    if config.defaults.webhook_url is None:
        return ""
    return urlsplit(config.defaults.webhook_url).path.rstrip("/")


def served_routes(config: Config, base: str) -> list[tuple[str, str]]:
    """(URL, what it is) for every route :func:`make_server_app` serves, ``base``
    being where it listens (``http://127.0.0.1:8080``): what ``smsroute serve`` prints."""
    prefix = webhook_prefix(config)
    routes = [
        (f"{base}/healthz", "health: ok, and each breaker's state"),
        (f"{base}/metrics", "Prometheus metrics"),
    ]
    for name, provider in config.providers.items():
        routes.append(
            (f"{base}{prefix}/{name}/status", f"{name} ({provider.type}): delivery receipts")
        )
        routes.append(
            (f"{base}{prefix}/{name}/inbound", f"{name} ({provider.type}): inbound messages")
        )
    return routes


def make_server_app(config: Config, router: Router | None = None) -> web.Application:
    """The app: ``{prefix}/{provider}/{status|inbound}``, ``/metrics``, ``/healthz``."""
    router = router or Router(config)
    app = web.Application(client_max_size=MAX_BODY + 1)
    app[ROUTER] = router

    async def healthz(request: web.Request) -> web.Response:
        states = {
            f"{p}{'/' + c if c else ''}": s.value for (p, c), s in router.breaker_states().items()
        }
        return web.json_response({"status": "ok", "breakers": states})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", router.metrics_handler)
    add_webhook_routes(app, router, webhook_prefix(config))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with router:
            yield

    app.cleanup_ctx.append(lifecycle)
    return app
