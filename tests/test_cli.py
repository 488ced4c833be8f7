"""The smsroute command, run as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
from click.testing import CliRunner
from conftest import ROOT, twilio_block

from smsroute.cli import main
from smsroute.testing import FakeTwilio

GOOD = ROOT / "config" / "routing.yaml"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


async def run_process(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_every_command_has_help_with_an_example() -> None:
    for command in ("check", "explain", "send", "serve", "worker", "demo"):
        code, out, _ = run(command, "--help")
        assert code == 0
        assert "Example:" in out


def test_check_accepts_a_good_config_with_placeholders() -> None:
    code, out, _ = run("check", str(GOOD), "--env-placeholders")
    assert code == 0
    assert "ok: 2 providers" in out


def test_check_reports_missing_secrets_without_placeholders() -> None:
    code, _, err = run("check", str(GOOD))
    assert code == 1
    assert "routing.yaml:25:18: providers.twilio-main.account_sid: environment variable" in err


def test_check_prints_file_line_column_for_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n"
        "  tw: {type: twilio, account_sid: AC1, auth_token: x, timeout: soon}\n"
        "rules:\n"
        "  - name: only\n"
        "    match: {country: DE}\n"
        "    providers: [tx]\n"
    )
    code, _, err = run("check", str(bad))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{bad}:2:64: providers.tw.timeout: expected a duration")
    assert any(
        line.startswith(f"{bad}:6:17: rules[0].providers[0]: unknown provider 'tx'")
        for line in lines
    )
    assert any("no catch-all rule" in line for line in lines)


def test_check_json_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {}\nrules: []\n")
    code, out, _ = run("check", str(bad), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert {p["path"] for p in doc["problems"]} == {"providers", "rules"}
    assert all(p["line"] for p in doc["problems"])


def test_explain_shows_rule_order_and_why() -> None:
    code, out, _ = run(
        "explain", str(GOOD), "+4915123456789", "--category", "otp", "--env-placeholders"
    )
    assert code == 0
    assert "rule     otp-europe  (strategy: fastest)" in out
    assert "twilio-main" in out
    assert "tried first" in out
    assert "+49151******89" in out
    assert "4915123456789" not in out


def test_explain_refuses_a_bad_number_with_exit_2() -> None:
    code, _, err = run("explain", str(GOOD), "+1 555 000 0000", "--env-placeholders")
    assert code == 2
    assert "not a valid number" in err


def config_for(fake: FakeTwilio, tmp_path: Path, extra_defaults: str = "") -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(f"""
defaults:
  default_region: US
{extra_defaults}
providers:
{twilio_block("twilio", fake)}
rules:
  - name: default
    providers: [twilio]
""")
    return path


async def test_send_prints_attempts_and_exits_0(twilio_a: FakeTwilio, tmp_path: Path) -> None:
    code, out, _ = await run_process(
        "send", str(config_for(twilio_a, tmp_path)), "(415) 555-0100", "hi"
    )
    assert code == 0
    assert "attempt 1: twilio" in out
    assert f"accepted by twilio as {twilio_a.messages[0].provider_message_id}" in out


async def test_send_failure_exits_1(twilio_a: FakeTwilio, tmp_path: Path) -> None:
    twilio_a.fail(400, 21211)
    code, out, _ = await run_process(
        "send", str(config_for(twilio_a, tmp_path)), "+14155550100", "hi"
    )
    assert code == 1
    assert "failed: rejected by twilio" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_answers_healthz_metrics_and_a_signed_webhook(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    port = free_port()
    config = config_for(twilio_a, tmp_path, f"  webhook_url: http://127.0.0.1:{port}/hooks")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute.cli",
        "serve",
        str(config),
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert b"serving on" in await proc.stdout.readline()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ok"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                assert "smsroute_info" in await r.text()
        url = f"http://127.0.0.1:{port}/hooks/twilio/inbound"
        assert (
            await twilio_a.send_inbound(
                url, sender="+4915123456789", recipient="+15005550006", text="STOP"
            )
            == 200
        )
        _method, target, headers, body = twilio_a.inbound_request(
            url, "+4915123456789", "+15005550006", "hi"
        )
        headers["X-Twilio-Signature"] = "forged" + headers["X-Twilio-Signature"][6:]
        async with (
            aiohttp.ClientSession() as http,
            http.post(target, data=body, headers=headers) as r,
        ):
            assert r.status == 403
    finally:
        proc.terminate()  # SIGTERM: graceful shutdown
        async with asyncio.timeout(10):
            assert await proc.wait() == 0


async def test_worker_drains_the_outbox_and_stops_on_sigterm(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    from smsroute import Message, Router

    config = tmp_path / "routing.yaml"
    config.write_text(f"""
providers:
{twilio_block("twilio", twilio_a)}
rules:
  - name: default
    providers: [twilio]
outbox:
  path: outbox.db
  poll: 50ms
""")
    async with Router.from_yaml(config, metrics=False) as router:
        await router.enqueue_many([Message(to=f"+491512345678{i}", text=f"m{i}") for i in range(3)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute.cli",
        "worker",
        str(config),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert b'"worker"' in await proc.stdout.readline()  # it reports when it works
            while len(twilio_a.messages) < 3:  # noqa: ASYNC110 - filled by another process
                await asyncio.sleep(0.02)
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            code = await proc.wait()
    assert code == 0
    assert sorted(m.text for m in twilio_a.messages) == ["m0", "m1", "m2"]
