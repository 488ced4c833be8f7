"""The Django, Flask and Celery examples (issue 17), run as real processes: a send
from a view goes out through a fake Twilio, whose signed receipt comes back to the
mounted webhook and shows in ``status()``; a Celery task sends in a real worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, twilio_block
from test_service_examples import free_port, send_and_see_delivered, wait_listening

from smsroute.testing import FakeTwilio

EXAMPLES = ROOT / "examples"


def write_config(tmp_path: Path, fake: FakeTwilio, webhook_url: str | None) -> Path:
    config = tmp_path / "routing.yaml"
    defaults = f"defaults:\n  webhook_url: {webhook_url}\n" if webhook_url else ""
    config.write_text(
        f"{defaults}providers:\n{twilio_block('twilio', fake)}\n"
        "rules:\n  - name: default\n    providers: [twilio]\n"
    )
    return config


@pytest.fixture(params=["django", "flask"])
async def service(
    request: pytest.FixtureRequest, tmp_path: Path, twilio_a: FakeTwilio
) -> AsyncIterator[str]:
    port = free_port()
    config = write_config(tmp_path, twilio_a, f"http://127.0.0.1:{port}/sms")
    twilio_a.receipts("delivered")
    if request.param == "django":
        argv = ["manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        cwd = EXAMPLES / "django_service"
    else:
        argv = [str(EXAMPLES / "flask_service.py"), "--port", str(port)]
        cwd = tmp_path
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=cwd,
        env={**os.environ, "SMSROUTE_CONFIG": str(config)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def test_view_sends_and_the_signed_receipt_reaches_status(
    service: str, twilio_a: FakeTwilio
) -> None:
    await send_and_see_delivered(service, twilio_a)  # through the mounted webhook


async def test_forged_receipt_and_bad_number(service: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{service}/sms/twilio/status",
            data={"MessageSid": "SM1", "MessageStatus": "delivered"},
            headers={"X-Twilio-Signature": "forged"},
        ) as r:
            assert r.status == 403
        async with http.post(f"{service}/send", json={"to": "+1 555 000 0000", "text": "hi"}) as r:
            assert r.status == 422
            body = await r.json()
            assert "is not a valid number" in body["error"]
            assert "5550000000" not in str(body)


@pytest.mark.slow
async def test_celery_task_sends_in_a_real_prefork_worker(
    tmp_path: Path, twilio_a: FakeTwilio
) -> None:
    from celery import Celery

    queue = f"smsroute-test-{uuid.uuid4().hex}"
    broker = "redis://127.0.0.1:6379/9"
    config = write_config(tmp_path, twilio_a, None)
    env = {**os.environ, "SMSROUTE_CONFIG": str(config), "SMSROUTE_CELERY_BROKER": broker}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "celery", "-A", "celery_tasks", "worker", "--pool", "prefork"),
        *("--concurrency", "2", "-Q", queue, "--without-gossip", "--without-mingle"),
        *("--without-heartbeat", "--loglevel", "WARNING"),
        cwd=EXAMPLES,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    client = Celery("client", broker=broker, backend=broker)
    try:
        results = [
            client.send_task(
                "celery_tasks.send_sms",
                args=("+4915123456789", "Your code is 123456", "otp"),
                queue=queue,
            )
            for _ in range(4)
        ]
        answers = [await asyncio.to_thread(r.get, timeout=30) for r in results]
        assert all(a["status"] == "accepted" and a["provider"] == "twilio" for a in answers)
        assert worker.pid not in {a["pid"] for a in answers}  # sent in the forked children
        assert len(twilio_a.messages) == 4
    finally:
        client.close()
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await worker.wait()
