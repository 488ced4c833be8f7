"""The aiohttp application that receives webhooks: a thin shell over
:meth:`Router.handle_webhook`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from smsroute.config import Config
from smsroute.webhooks import MAX_BODY, WebhookResponse


class WebhookEndpoint(Protocol):
    """What the routes need of a router (a :class:`~smsroute.router.Router` is one)."""

    @property
    def config(self) -> Config:
        """The config in force (``defaults.webhook_url``)."""
        ...

    async def handle_webhook(
        self,
        provider_name: str,
        kind: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> WebhookResponse:
        """Process one webhook call (see :meth:`Router.handle_webhook`)."""
        ...


#: The answer to a request whose URL cannot be rebuilt (see :func:`public_url`).
BAD_HOST = (
    "the Host header makes no URL: it must be host[:port], a port from 1 to 65535 "
    "(behind a proxy, set defaults.webhook_url to the public URL)"
)


#: The answer to a body that cannot be read as its headers describe it.
BAD_BODY = "the body is not what its Content-Encoding or Transfer-Encoding says"


def public_url(
    router: WebhookEndpoint, request: web.Request, provider: str, kind: str
) -> str | None:
    """The URL the provider called, as it signed it; None when the request's
    ``Host`` header makes no URL (a port that is no number or over 65535, a
    host IDNA cannot encode).

    Behind a proxy the request's own URL is not the public one: when
    ``defaults.webhook_url`` is set, the path under it is rebuilt on that base
    (and the Host header is not read).
    """
    base = router.config.defaults.webhook_url
    if base is None:
        try:
            return str(request.url)
        except ValueError:  # yarl refuses the Host header (UnicodeError is one too)
            return None
    # The raw (still percent-encoded) query: signatures cover the bytes the provider sent.
    raw = request.rel_url.raw_query_string
    query = f"?{raw}" if raw else ""
    return f"{base.rstrip('/')}/{provider}/{kind}{query}"


def add_webhook_routes(app: web.Application, router: WebhookEndpoint, prefix: str = "") -> None:
    """Route ``{prefix}/{provider}/{status|inbound}`` (GET and POST) to the router."""

    async def handle(request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        kind = request.match_info["kind"]
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text=f"body over {MAX_BODY} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text=f"body over {MAX_BODY} bytes")
        except web.RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not
            return web.Response(status=400, text=BAD_BODY)
        url = public_url(router, request, provider, kind)
        if url is None:
            return web.Response(status=400, text=BAD_HOST)
        answer = await router.handle_webhook(
            provider, kind, request.method, url, request.headers, body
        )
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type.split(";")[0]
        )

    path = f"{prefix}/{{provider}}/{{kind:status|inbound}}"
    app.router.add_route("POST", path, handle)
    app.router.add_route("GET", path, handle)


def make_webhook_app(router: WebhookEndpoint) -> web.Application:
    """An application with just the webhook routes (mount it with ``add_subapp``)."""
    app = web.Application(client_max_size=MAX_BODY + 1)
    add_webhook_routes(app, router)
    return app
