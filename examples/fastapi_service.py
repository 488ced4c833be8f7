"""The same service in FastAPI: webhooks go through ``router.handle_webhook``,
which works with any framework.

    SMSROUTE_CONFIG=config/routing.yaml python examples/fastapi_service.py --port 8080
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from smsroute import InvalidMessage, InvalidNumber, Message, Router

router = Router.from_yaml(os.environ["SMSROUTE_CONFIG"])


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with router:
        yield


app = FastAPI(lifespan=lifespan)


class SendRequest(BaseModel):
    to: str
    text: str
    category: str = "transactional"


@app.post("/send", status_code=202)
async def send(body: SendRequest) -> dict[str, object]:
    try:
        result = await router.send(Message(to=body.to, text=body.text, category=body.category))
    except (InvalidNumber, InvalidMessage) as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if not result.ok:
        raise HTTPException(status_code=502, detail=result.reason)
    return {"message_id": result.message_id, "status": result.status, "provider": result.provider}


@app.get("/messages/{message_id}")
async def message_status(message_id: str) -> dict[str, object]:
    state = await router.status(message_id)
    if state is None:
        raise HTTPException(status_code=404, detail="unknown message")
    return {"message_id": state.message_id, "status": state.status, "provider": state.provider}


@app.api_route("/sms/{provider}/{kind}", methods=["GET", "POST"])
async def webhook(provider: str, kind: str, request: Request) -> Response:
    answer = await router.handle_webhook(
        provider, kind, request.method, str(request.url), request.headers, await request.body()
    )
    return Response(content=answer.body, status_code=answer.status, media_type=answer.content_type)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
