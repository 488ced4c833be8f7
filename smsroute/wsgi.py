"""Webhooks on WSGI: receipts and inbound messages for Django, Flask, gunicorn, uWSGI...

The same paths, signature checks, limits and answers as
:meth:`Router.webhook_app() <smsroute.router.Router.webhook_app>`, as a WSGI
application over a :class:`~smsroute.sync.SyncRouter`:

    router = SyncRouter.from_yaml("config/routing.yaml")
    application = router.wsgi_app()          # serves /{provider}/status, /{provider}/inbound

Mount it where ``defaults.webhook_url`` points (a WSGI dispatcher sets
``SCRIPT_NAME``), or give it that path as ``prefix`` when it is served alone
(``router.wsgi_app(prefix="/sms")``).  :func:`read_body` and :func:`answer`
are what the Django and Flask integrations (:mod:`smsroute.contrib`) use.
"""

from __future__ import annotations

import http
import re
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from multidict import CIMultiDict

from smsroute.config import Config
from smsroute.webhook_app import BAD_BODY, BAD_HOST
from smsroute.webhooks import KINDS, MAX_BODY, WebhookResponse

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TOO_LARGE",
    "WebhookHandler",
    "WebhookWSGIApp",
    "answer",
    "public_url",
    "read_body",
    "respond",
]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

#: The answer to a body over the limit (as the aiohttp application answers it).
TOO_LARGE = WebhookResponse(413, f"body over {MAX_BODY} bytes".encode())
_BAD_BODY = WebhookResponse(400, BAD_BODY.encode())
_BAD_HOST = WebhookResponse(400, BAD_HOST.encode())
_NOT_FOUND = WebhookResponse(404, b"404: Not Found")
_NOT_ALLOWED = WebhookResponse(405, b"405: Method Not Allowed")
_PATH = re.compile(r"/([^/]+)/(status|inbound)")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:/?#@\[\]]+)(?::(\d{1,5}))?")


class WebhookHandler(Protocol):
    """What the WSGI application needs of a router (a :class:`SyncRouter` is one)."""

    @property
    def config(self) -> Config:
        """The config in force (``defaults.webhook_url``)."""
        ...

    def handle_webhook(
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


def read_body(
    read: Callable[[int], bytes], content_length: int | None, content_encoding: str | None
) -> bytes | WebhookResponse:
    """The request's body, decoded as its ``Content-Encoding`` says (gzip, deflate);
    or the answer to give instead: 413 over 64 KiB (before or after decoding), 400
    for a body that is not what its encoding says.

    ``read(n)`` reads at most ``n`` bytes of the body as sent; ``content_length``
    is None for a body whose end the server marks (chunked).
    """
    if content_length is not None and content_length > MAX_BODY:
        return TOO_LARGE
    limit = MAX_BODY + 1 if content_length is None else content_length
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY:
        return TOO_LARGE
    body = b"".join(chunks)
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        return _BAD_BODY
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    try:
        decoder = zlib.decompressobj(wbits)
        plain = decoder.decompress(body, MAX_BODY + 1)
        if len(plain) > MAX_BODY or decoder.unconsumed_tail:
            return TOO_LARGE
        plain += decoder.flush()
    except zlib.error:
        return _BAD_BODY
    if not decoder.eof or len(plain) > MAX_BODY:
        return _BAD_BODY if not decoder.eof else TOO_LARGE
    return plain


def public_url(
    router: WebhookHandler, environ: Mapping[str, Any], provider: str, kind: str
) -> str | None:
    """The URL the provider called, as it signed it (None: the Host header makes none).

    With ``defaults.webhook_url`` set (behind a proxy), the path under it rebuilt on
    that base with the raw query; otherwise the request's own URL (PEP 3333).
    """
    query = environ.get("QUERY_STRING") or ""
    query = f"?{query}" if query else ""
    base = router.config.defaults.webhook_url
    if base is not None:
        return f"{base.rstrip('/')}/{provider}/{kind}{query}"
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if host is None:
        host = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    match = _HOST.fullmatch(host)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) < 65536):
        return None
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        return None
    path = quote(
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/:@!$&'()*+,;=-._~%"
    )
    return f"{scheme}://{host}{path}{query}"


def _headers(environ: Mapping[str, Any]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.add(key[5:].replace("_", "-").title(), value)
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.add(key.replace("_", "-").title(), value)
    return headers


def _content_length(environ: Mapping[str, Any]) -> int | WebhookResponse | None:
    raw = environ.get("CONTENT_LENGTH") or ""
    if not raw:
        # No length: the body ends where the server says it does, or there is none (PEP 3333).
        return None if environ.get("wsgi.input_terminated") else 0
    if not raw.isdigit():
        return _BAD_BODY
    return int(raw)


def answer(
    router: WebhookHandler, environ: Mapping[str, Any], provider: str, kind: str
) -> WebhookResponse:
    """What to answer the webhook request ``environ`` (a WSGI environ) for ``provider``'s
    ``kind`` (``status`` or ``inbound``) endpoint; never raises for what the caller sent."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method not in ("GET", "POST"):
        return _NOT_ALLOWED
    length = _content_length(environ)
    if isinstance(length, WebhookResponse):
        return length
    stream = environ["wsgi.input"]
    body = read_body(stream.read, length, environ.get("HTTP_CONTENT_ENCODING"))
    if isinstance(body, WebhookResponse):
        return body
    url = public_url(router, environ, provider, kind)
    if url is None:
        return _BAD_HOST
    return router.handle_webhook(provider, kind, method, url, _headers(environ), body)


class WebhookWSGIApp:
    """A WSGI application serving ``{prefix}/{provider}/{status|inbound}`` (GET, POST).

    Made by :meth:`SyncRouter.wsgi_app`.  ``PATH_INFO`` is matched after ``prefix``.
    """

    def __init__(self, router: WebhookHandler, prefix: str = "") -> None:
        self.router = router
        self.prefix = prefix.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        match = None
        if path.startswith(self.prefix):
            match = _PATH.fullmatch(path[len(self.prefix) :])
        if match is None or match.group(2) not in KINDS:
            reply = _NOT_FOUND
        else:
            reply = answer(self.router, environ, match.group(1), match.group(2))
        return respond(reply, start_response)


def respond(reply: WebhookResponse, start_response: StartResponse) -> list[bytes]:
    """Start the WSGI response for ``reply``; its body, as the WSGI iterable."""
    status = f"{reply.status} {http.HTTPStatus(reply.status).phrase}"
    content_type = reply.content_type.split(";")[0]
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(reply.body)))],
    )
    return [reply.body]
