"""Flask: a blueprint serving a :class:`~smsroute.sync.SyncRouter`'s webhooks.

    from flask import Flask
    from smsroute import SyncRouter
    from smsroute.contrib.flask import webhook_blueprint

    router = SyncRouter.from_yaml("config/routing.yaml")
    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(router), url_prefix="/sms")

``defaults.webhook_url`` is then ``https://<your host>/sms``.  The answers, limits
and signature checks are those of :mod:`smsroute.wsgi`.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from smsroute.wsgi import WebhookHandler, answer

__all__ = ["webhook_blueprint"]


def webhook_blueprint(router: WebhookHandler, name: str = "smsroute") -> Blueprint:
    """A blueprint routing ``/<provider>/status`` and ``/<provider>/inbound`` to ``router``."""
    blueprint = Blueprint(name, __name__)

    @blueprint.route("/<provider>/<any(status, inbound):kind>", methods=["GET", "POST"])
    def webhook(provider: str, kind: str) -> Response:
        reply = answer(router, request.environ, provider, kind)
        return Response(reply.body, status=reply.status, content_type=reply.content_type)

    return blueprint
