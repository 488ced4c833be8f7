"""A service that embeds smsroute in its own aiohttp application.

    SMSROUTE_CONFIG=config/routing.yaml python examples/aiohttp_service.py --port 8080

- ``POST /send`` with JSON ``{"to": ..., "text": ..., "category": ...}`` sends a message
  and answers the result (the number masked).
- ``GET /messages/{id}`` answers what is known of a message (receipts included).
- ``/sms/{provider}/status`` and ``/sms/{provider}/inbound`` receive the providers'
  webhooks: set ``defaults.webhook_url`` to this service's public ``.../sms``.
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from smsroute import InvalidMessage, InvalidNumber, Message, Router

ROUTER = web.AppKey("router", Router)


async def send(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    data = await request.json()
    try:
        result = await router.send(
            Message(
                to=data["to"], text=data["text"], category=data.get("category", "transactional")
            )
        )
    except (InvalidNumber, InvalidMessage) as exc:
        return web.json_response({"error": str(exc)}, status=422)
    return web.json_response(
        {
            "message_id": result.message_id,
            "status": result.status,
            "provider": result.provider,
            "reason": result.reason,
            "attempts": [(a.provider, a.outcome.value) for a in result.attempts],
        },
        status=202 if result.ok else 502,
    )


async def message_status(request: web.Request) -> web.Response:
    state = await request.app[ROUTER].status(request.match_info["id"])
    if state is None:
        return web.json_response({"error": "unknown message"}, status=404)
    return web.json_response(
        {"message_id": state.message_id, "status": state.status, "provider": state.provider}
    )


def make_app(config_path: str) -> web.Application:
    router = Router.from_yaml(config_path)
    app = web.Application()
    app[ROUTER] = router
    app.router.add_post("/send", send)
    app.router.add_get("/messages/{id}", message_status)
    app.add_subapp("/sms", router.webhook_app())

    async def lifecycle(app: web.Application) -> object:
        async with router:
            yield

    app.cleanup_ctx.append(lifecycle)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(
        make_app(os.environ["SMSROUTE_CONFIG"]),
        host=args.host,
        port=args.port,
        print=lambda *_: print(f"listening on {args.host}:{args.port}", flush=True),
    )
