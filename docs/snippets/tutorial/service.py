"""service.py: a small aiohttp service that sends SMS through smsroute.

SMSROUTE_CONFIG=routing.yaml python service.py
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web

from smsroute import InvalidMessage, InvalidNumber, Message, Router

ROUTER = web.AppKey("router", Router)


async def send(request: web.Request) -> web.Response:
    """POST /send {"to": ..., "text": ..., "category": ...}: send one SMS."""
    data = await request.json()
    message = Message(
        to=data["to"], text=data["text"], category=data.get("category", "transactional")
    )
    try:
        result = await request.app[ROUTER].send(message)
    except (InvalidNumber, InvalidMessage) as exc:  # bad input: nothing was sent
        return web.json_response({"error": str(exc)}, status=422)
    return web.json_response(
        {
            "status": result.status,
            "provider": result.provider,
            "attempts": [f"{a.provider}: {a.outcome.value}" for a in result.attempts],
            "reason": result.reason,
        },
        status=200 if result.ok else 502,
    )


def make_app(config_path: str) -> web.Application:
    router = Router.from_yaml(config_path)
    app = web.Application()
    app[ROUTER] = router
    app.router.add_post("/send", send)
    app.router.add_get("/metrics", router.metrics_handler)  # for Prometheus
    app.add_subapp("/sms", router.webhook_app())  # delivery receipts and inbound messages

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with router:  # connects, and closes cleanly on shutdown
            yield

    app.cleanup_ctx.append(lifecycle)
    return app


if __name__ == "__main__":
    web.run_app(make_app(os.environ["SMSROUTE_CONFIG"]), host="127.0.0.1", port=8080)
