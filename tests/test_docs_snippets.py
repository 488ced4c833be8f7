"""The code the docs include from docs/snippets runs as the docs say.

mkdocs pulls these files into the pages (``--8<--``): the tutorial's routing.yaml and
service.py, and the testing how-to's test_failover.py.  The README's commands are run
by tests/test_readme.py; these are the docs' own, run here so that a page cannot show
code that no longer works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web
from conftest import ROOT

from smsroute.testing import FakeTwilio, FakeVonage

SNIPPETS = ROOT / "docs" / "snippets"
TUTORIAL = ROOT / "docs" / "tutorial.md"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tutorial_environment(twilio: FakeTwilio, vonage: FakeVonage) -> dict[str, str]:
    """What the tutorial's step 2 exports, for the fakes it starts."""
    return {
        "TWILIO_BASE_URL": twilio.url,
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "VONAGE_BASE_URL": vonage.url,
        "VONAGE_API_KEY": vonage.api_key,
        "VONAGE_API_SECRET": vonage.api_secret,
    }


def test_the_testing_how_tos_test_file_passes_with_pytest() -> None:
    """docs/how-to/testing.md: ``pytest test_failover.py``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_failover.py"],
        cwd=SNIPPETS / "testing",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout


async def test_the_tutorials_service_sends_fails_over_and_refuses_a_bad_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/tutorial.md, steps 4 to 6: the service of service.py over routing.yaml."""
    service = load(SNIPPETS / "tutorial" / "service.py")
    async with FakeTwilio() as twilio, FakeVonage() as vonage:
        for name, value in tutorial_environment(twilio, vonage).items():
            monkeypatch.setenv(name, value)
        runner = web.AppRunner(service.make_app(str(SNIPPETS / "tutorial" / "routing.yaml")))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:

                async def send(body: dict[str, str]) -> tuple[int, dict[str, object]]:
                    async with http.post(f"http://127.0.0.1:{port}/send", json=body) as r:
                        return r.status, await r.json()

                hello = {"to": "(415) 555-0100", "text": "Hello from my service"}
                assert await send(hello) == (
                    200,
                    {
                        "status": "accepted",
                        "provider": "primary",
                        "attempts": ["primary: accepted"],
                        "reason": None,
                    },
                )
                assert twilio.messages[-1].to == "+14155550100"
                twilio.fail(503, times=1)
                status, answer = await send(hello)
                assert (status, answer["provider"]) == (200, "backup")
                assert answer["attempts"] == ["primary: transient", "backup: accepted"]
                status, answer = await send({"to": "12345", "text": "hi"})
                assert status == 422
                assert "12345" not in json.dumps(answer)
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    assert r.status == 200
                    assert "smsroute_messages_total" in await r.text()
        finally:
            await runner.cleanup()


def shown_after(command: str) -> str:
    """The ``text`` block the tutorial shows after the console block running ``command``."""
    page = TUTORIAL.read_text()
    at = page.index(command)
    block = re.compile(r"```text\n(.*?)```", re.S).search(page, at)
    assert block is not None, command
    return block.group(1)


def test_the_tutorials_check_and_explain_print_what_it_shows() -> None:
    """docs/tutorial.md, step 3: ``smsroute check`` and ``smsroute explain``, as shown
    (nothing is sent: the variables need values, not servers)."""
    exported = {
        "TWILIO_BASE_URL": "http://127.0.0.1:8081",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "0" * 32,
        "VONAGE_BASE_URL": "http://127.0.0.1:8082",
        "VONAGE_API_KEY": "abcd1234",
        "VONAGE_API_SECRET": "0" * 16,
    }
    env = {**os.environ, **exported, "COLUMNS": "120"}
    outputs = []
    for args in (["check", "routing.yaml"], ["explain", "routing.yaml", "(415) 555-0100"]):
        done = subprocess.run(
            [sys.executable, "-m", "smsroute.cli", *args],
            cwd=SNIPPETS / "tutorial",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    shown = shown_after('smsroute explain routing.yaml "(415) 555-0100"')

    def lines(text: str) -> list[str]:
        return [re.sub(r"\s+", " ", line).strip() for line in text.strip().splitlines()]

    assert lines("".join(outputs)) == lines(shown)
