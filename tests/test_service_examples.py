"""The aiohttp and FastAPI service examples, run as real processes: a send goes out
through a fake Twilio, whose signed receipt comes back to the service's webhook."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, twilio_block

from smsroute.testing import FakeTwilio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(30):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"service exited with {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a port being opened by another process
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest.fixture(params=["aiohttp_service.py", "fastapi_service.py"])
async def service(
    request: pytest.FixtureRequest, tmp_path: Path, twilio_a: FakeTwilio
) -> AsyncIterator[str]:
    if request.param == "fastapi_service.py":
        pytest.importorskip("fastapi")
    port = free_port()
    config = tmp_path / "routing.yaml"
    config.write_text(f"""
defaults:
  webhook_url: http://127.0.0.1:{port}/sms
providers:
{twilio_block("twilio", twilio_a)}
rules:
  - name: default
    providers: [twilio]
""")
    twilio_a.receipts("delivered")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / request.param),
        "--port",
        str(port),
        env={**os.environ, "SMSROUTE_CONFIG": str(config)},
    )
    try:
        await wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def send_and_see_delivered(service: str, fake: FakeTwilio) -> None:
    """POST /send to an example service, then its signed receipt comes back through the
    service's own webhook and GET /messages/<id> says delivered."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{service}/send", json={"to": "+4915123456789", "text": "hi"}) as r:
            assert r.status == 202
            message_id = (await r.json())["message_id"]
        async with asyncio.timeout(10):
            await fake.wait_receipts(1)
        assert fake.receipts_sent[0][2] == 200  # the service accepted the signed receipt
        async with http.get(f"{service}/messages/{message_id}") as r:
            assert (await r.json())["status"] == "delivered"


async def test_service_sends_and_receives_the_signed_receipt(
    service: str, twilio_a: FakeTwilio
) -> None:
    await send_and_see_delivered(service, twilio_a)


async def test_service_refuses_a_forged_receipt(service: str, twilio_a: FakeTwilio) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service}/sms/twilio/status",
            data={"MessageSid": "SM1", "MessageStatus": "delivered"},
            headers={"X-Twilio-Signature": "forged"},
        ) as r,
    ):
        assert r.status == 403


async def test_service_reports_a_bad_number_clearly(service: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{service}/send", json={"to": "+1 555 000 0000", "text": "hi"}) as r,
    ):
        assert r.status == 422
        body = await r.json()
        assert "is not a valid number" in str(body.get("error") or body.get("detail"))
        assert "5550000000" not in str(body)
