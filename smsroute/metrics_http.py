"""Serving the metrics over HTTP: the handler and the application behind
:meth:`Router.metrics_handler` and :meth:`Router.metrics_app`.

The exposition itself (formats, multiprocess mode) is
:func:`smsroute.instrument.prometheus.exposition`; only :mod:`smsroute.instrument`
touches prometheus_client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from smsroute.instrument.prometheus import CollectorRegistry, exposition

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsServer:
    """Answers scrapes with ``registry`` (prometheus_client's global one when None).

    ``before_scrape`` runs first on each scrape (the router reads its
    breakers there, so that an open breaker whose time is up reads as
    half-open from then on).
    """

    def __init__(
        self, registry: CollectorRegistry | None, before_scrape: Callable[[], object]
    ) -> None:
        self._registry = registry
        self._before_scrape = before_scrape

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One scrape: the exposition in the format the ``Accept`` header asks for, compressed
        when the client accepts it."""
        self._before_scrape()
        body, content_type = exposition(self._registry, request.headers.get("Accept"))
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response


def metrics_app(handler: Handler) -> web.Application:
    """An aiohttp application serving ``GET /metrics`` with ``handler``."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
