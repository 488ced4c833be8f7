"""Shared test helpers: configs built around fake providers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from log_support import NumberWatch

from smsroute import Config, DeliveryReport, Router, parse_config
from smsroute.testing import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
#: The providers' published API specs, vendored with their sources in tests/specs/README.md.
SPECS_DIR = ROOT / "tests" / "specs"


def twilio_block(name: str, fake: FakeTwilio, **extra: object) -> str:
    """The YAML of one twilio provider pointing at ``fake``."""
    lines = [
        f"  {name}:",
        "    type: twilio",
        f"    base_url: {fake.url}",
        f"    account_sid: {fake.account_sid}",
        f"    auth_token: {fake.auth_token}",
        '    from: "+15005550006"',
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def make_config(body: str, **kwargs: object) -> Config:
    """Parse a config written inline in a test (dedented)."""
    return parse_config(textwrap.dedent(body), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def twilio_a() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def twilio_b() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def twilio_c() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


class Hooks:
    """A router's webhook app served on a socket bound before the config is written."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/sms"
        self.runner: web.AppRunner | None = None

    async def serve(self, router: Router) -> None:
        app = web.Application()
        app.add_subapp("/sms", router.webhook_app())
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    yield h
    await h.close()


async def call(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> int:
    """One HTTP request over the socket, as a provider makes a webhook call; its status."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=body or None) as resp,
    ):
        await resp.read()
        return resp.status


def basic(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def state_of(router: Router, message_id: str) -> str:
    """The router's status of ``message_id`` (which must be known)."""
    state = await router.status(message_id)
    assert state is not None
    return state.status


async def reaches(router: Router, message_id: str, status: str) -> None:
    """Wait (under the caller's timeout) until ``message_id`` is in ``status``."""
    seen = asyncio.Event()

    def check(report: DeliveryReport) -> None:
        if report.message_id == message_id and report.status == status:
            seen.set()

    router.on_delivery_report(check)
    if await state_of(router, message_id) != status:
        await seen.wait()


@pytest.fixture(autouse=True)
def no_whole_number_in_any_log() -> Iterator[None]:
    """The standard "no phone number in logs", checked in every test: whatever a test
    does, no message smsroute's loggers write holds a whole number.  At the level the
    loggers have (WARNING and up, unless a test lowers it): a DEBUG level for every test
    would change what they time (tests/log_support.py's ``every_log_record`` looks at
    DEBUG where a test asks)."""
    watch = NumberWatch()
    ours = logging.getLogger("smsroute")
    ours.addHandler(watch)
    try:
        yield
    finally:
        ours.removeHandler(watch)
    assert not watch.leaks, "a whole phone number in smsroute's logs:\n" + "\n".join(watch.leaks)
