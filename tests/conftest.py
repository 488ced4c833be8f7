"""Shared test helpers: configs built around fake providers on 127.0.0.1."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsroute import Config, parse_config
from smsroute.testing import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = Path(os.environ.get("SMSROUTE_SPECS_DIR", ROOT.parent / "shared" / "specs"))


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
