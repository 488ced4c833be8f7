"""A third-party adapter package, installed with pip, is found by its entry point.

The package is written here into a temporary directory (a pyproject and one
module), installed into the running interpreter's environment, named in a
config's ``type:`` and routed through; it is uninstalled afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from smsroute import ConfigError, Message, Outcome, Router, parse_config
from smsroute.providers import load_provider_class, provider_types, refresh
from smsroute.providers.base import HttpProvider

DIST = "smsroute-acme-test-adapter"
MODULE = "acme_sms"

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST}"
version = "0.1.0"
description = "A third-party smsroute adapter, made by tests/test_entry_points.py"
requires-python = ">=3.11"

[project.entry-points."smsroute.providers"]
acme = "{MODULE}:AcmeProvider"

[tool.setuptools]
py-modules = ["{MODULE}"]
"""

ADAPTER = '''
"""Acme SMS: POST /v1/sms with an X-Acme-Key header, answering {"sms_id": ...}."""

import json

from smsroute.providers.base import (
    HttpProvider,
    HttpRequest,
    Outcome,
    Reply,
    classify_status,
    parse_retry_after,
)


class AcmeProvider(HttpProvider):
    type_name = "acme"
    required_options = frozenset({"api_key"})
    secret_options = frozenset({"api_key"})
    default_base_url = "https://api.acme.example"

    def __init__(self, config):
        super().__init__(config)
        self.headers = {"X-Acme-Key": str(config.options["api_key"])}

    @classmethod
    def check_options(cls, options):
        if not str(options.get("api_key", "")).startswith("ak_"):
            return [("api_key", "an Acme key starts with 'ak_'")]
        return []

    def build_request(self, sms):
        body = {"to": sms.to, "text": sms.text, "from": sms.sender}
        return HttpRequest("POST", self.base_url + "/v1/sms", self.headers, json=body)

    def parse_response(self, status, headers, body):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if 200 <= status < 300 and isinstance(doc, dict) and doc.get("sms_id"):
            return Reply(Outcome.ACCEPTED, provider_message_id=doc["sms_id"], status_code=status)
        if 200 <= status < 300:
            return Reply(Outcome.TRANSIENT, status_code=status, detail="malformed reply")
        return Reply(
            classify_status(status),
            status_code=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
'''


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def _forget() -> None:
    sys.modules.pop(MODULE, None)
    refresh()


@pytest.fixture(scope="module")
def acme_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    source = tmp_path_factory.mktemp("acme")
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / f"{MODULE}.py").write_text(textwrap.dedent(ADAPTER))
    _pip("install", "--quiet", "--no-build-isolation", "--no-deps", "--no-index", str(source))
    refresh()
    try:
        yield source
    finally:
        _pip("uninstall", "--quiet", "--yes", DIST)
        _forget()


@pytest.fixture
async def acme_server() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """A stand-in for Acme's API: checks the key, records each message."""
    received: list[dict[str, object]] = []

    async def send(request: web.Request) -> web.Response:
        if request.headers.get("X-Acme-Key") != "ak_test":
            return web.json_response({"error": "bad key"}, status=401)
        received.append(await request.json())
        return web.json_response({"sms_id": f"acme-{len(received)}"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/sms", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


def acme_config(url: str, api_key: str = "ak_test") -> str:
    return f"""
defaults:
  default_region: DE
providers:
  acme-main:
    type: acme
    base_url: {url}
    api_key: {api_key}
    from: Acme
rules:
  - name: default
    providers: [acme-main]
"""


def test_installed_package_adds_a_provider_type(acme_installed: Path) -> None:
    assert provider_types()["acme"] == f"{MODULE}:AcmeProvider"
    cls = load_provider_class("acme")
    assert issubclass(cls, HttpProvider)
    assert cls.type_name == "acme"


async def test_config_naming_the_type_routes_through_the_package(
    acme_installed: Path, acme_server: tuple[str, list[dict[str, object]]]
) -> None:
    url, received = acme_server
    config = parse_config(acme_config(url))
    async with Router(config) as router:
        result = await router.send(Message(to="+4915123456789", text="Hello from Acme"))
    assert result.ok
    assert result.provider == "acme-main"
    assert result.provider_message_id == "acme-1"
    assert received == [{"to": "+4915123456789", "text": "Hello from Acme", "from": "Acme"}]


async def test_third_party_answers_are_classified_by_its_adapter(
    acme_installed: Path, acme_server: tuple[str, list[dict[str, object]]]
) -> None:
    url, received = acme_server
    config = parse_config(acme_config(url, api_key="ak_wrong"))
    async with Router(config) as router:
        result = await router.send(Message(to="+4915123456789", text="Hello"))
    assert [(a.provider, a.outcome) for a in result.attempts] == [("acme-main", Outcome.AUTH)]
    assert received == []


def test_the_packages_option_checks_run_at_load(acme_installed: Path) -> None:
    with pytest.raises(ConfigError, match="an Acme key starts with 'ak_'") as caught:
        parse_config(acme_config("http://127.0.0.1:9", api_key="sk_nope"))
    assert caught.value.path == "providers.acme-main.api_key"


def test_unknown_options_of_the_package_are_refused(acme_installed: Path) -> None:
    text = acme_config("http://127.0.0.1:9").replace("from: Acme", "api_secret: x")
    with pytest.raises(ConfigError, match="unknown key 'api_secret'"):
        parse_config(text)
