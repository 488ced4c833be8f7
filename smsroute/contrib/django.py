"""Django: a view and a URLconf serving a :class:`~smsroute.sync.SyncRouter`'s webhooks.

In ``settings.py``::

    SMSROUTE_CONFIG = BASE_DIR / "routing.yaml"     # the config file (required)
    SMSROUTE_OPTIONS = {"metrics": True}            # Router keyword arguments (optional)

In ``urls.py``::

    path("sms/", include("smsroute.contrib.django"))

and ``defaults.webhook_url`` is ``https://<your host>/sms``.  In views, tasks and
management commands, :func:`get_router` is the process's router (made on first
use; a forked worker makes its own)::

    from smsroute.contrib.django import get_router
    result = get_router().send(Message(to=number, text=text))

The answers, limits and signature checks are those of :mod:`smsroute.wsgi`;
the view is exempt from CSRF (providers sign their calls instead).
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from smsroute.sync import SyncRouter
from smsroute.webhooks import WebhookResponse
from smsroute.wsgi import public_url, read_body

__all__ = ["get_router", "urlpatterns", "webhook"]

_lock = threading.Lock()
_router: SyncRouter | None = None


def get_router() -> SyncRouter:
    """The router ``settings.SMSROUTE_CONFIG`` describes, made once per process."""
    global _router
    with _lock:
        if _router is None:
            config = getattr(settings, "SMSROUTE_CONFIG", None)
            if not config:
                raise ImproperlyConfigured(
                    "settings.SMSROUTE_CONFIG is not set: set it to the path of your "
                    "smsroute config file (e.g. BASE_DIR / 'routing.yaml')"
                )
            options: dict[str, Any] = dict(getattr(settings, "SMSROUTE_OPTIONS", {}))
            _router = SyncRouter.from_yaml(config, **options)
        return _router


@csrf_exempt  # type: ignore[untyped-decorator]
def webhook(request: Any, provider: str, kind: str) -> Any:
    """The view: ``provider``'s ``kind`` (``status`` or ``inbound``) webhook."""
    router = get_router()
    reply = _answer(router, request, provider, kind)
    return HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)


def _answer(router: SyncRouter, request: Any, provider: str, kind: str) -> WebhookResponse:
    method = str(request.method)
    if method not in ("GET", "POST"):
        return WebhookResponse(405, b"405: Method Not Allowed")
    raw_length = request.META.get("CONTENT_LENGTH") or ""
    if raw_length and not raw_length.isdigit():
        return WebhookResponse(400, b"the Content-Length header is not a number")
    body = read_body(
        request.read, int(raw_length) if raw_length else 0, request.headers.get("Content-Encoding")
    )
    if isinstance(body, WebhookResponse):
        return body
    if router.config.defaults.webhook_url is None:
        url = str(request.build_absolute_uri())  # Django checks the host (ALLOWED_HOSTS)
    else:
        url = public_url(router, request.META, provider, kind) or ""
    return router.handle_webhook(provider, kind, method, url, dict(request.headers), body)


urlpatterns = [path("<str:provider>/<str:kind>", webhook, name="smsroute-webhook")]
