"""A Flask service that sends SMS and takes the receipts, without asyncio.

    SMSROUTE_CONFIG=config/routing.yaml python examples/flask_service.py --port 8080

Set ``defaults.webhook_url`` to ``http://<host>:8080/sms``.
"""

from __future__ import annotations

import argparse
import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from smsroute import InvalidMessage, InvalidNumber, Message, SyncRouter
from smsroute.contrib.flask import webhook_blueprint

router = SyncRouter.from_yaml(os.environ["SMSROUTE_CONFIG"])
app = Flask(__name__)
app.register_blueprint(webhook_blueprint(router), url_prefix="/sms")


@app.post("/send")
def send() -> ResponseReturnValue:
    body = request.get_json()
    message = Message(
        to=body["to"], text=body["text"], category=body.get("category", "transactional")
    )
    try:
        result = router.send(message)
    except (InvalidNumber, InvalidMessage) as exc:
        return jsonify(error=str(exc)), 422
    if not result.ok:
        return jsonify(error=result.reason), 502
    return jsonify(
        message_id=result.message_id, status=result.status, provider=result.provider
    ), 202


@app.get("/messages/<message_id>")
def message_status(message_id: str) -> ResponseReturnValue:
    state = router.status(message_id)
    if state is None:
        return jsonify(error="unknown message"), 404
    return jsonify(message_id=state.message_id, status=state.status, provider=state.provider)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, threaded=True)
