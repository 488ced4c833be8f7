"""The smsroute command, run as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
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


def test_check_accepts_a_good_config_without_its_secrets_and_warns() -> None:
    code, out, err = run("check", str(GOOD))
    assert code == 0
    assert "ok: 2 providers" in out
    assert "5 environment variables not set" in out
    warnings = err.strip().splitlines()
    assert len(warnings) == 5
    assert warnings[0].startswith(
        "warning: " + f"{GOOD}:25:18: providers.twilio-main.account_sid: environment variable "
        "TWILIO_ACCOUNT_SID is not set"
    )


def test_check_env_placeholders_is_still_accepted() -> None:
    code, out, _ = run("check", str(GOOD), "--env-placeholders")
    assert code == 0
    assert "ok: 2 providers" in out


def test_check_strict_refuses_missing_secrets_with_exit_3() -> None:
    code, out, err = run("check", str(GOOD), "--strict")
    assert code == 3
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(
        f"{GOOD}:25:18: providers.twilio-main.account_sid: environment variable"
    )


def test_check_strict_passes_when_the_secrets_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_BACKUP_ACCOUNT_SID",
        "TWILIO_BACKUP_AUTH_TOKEN",
        "TWILIO_BACKUP_MESSAGING_SERVICE_SID",
    ):
        monkeypatch.setenv(name, ("AC" if name.endswith("ACCOUNT_SID") else "MG") + "0" * 32)
    code, out, err = run("check", str(GOOD), "--strict", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["unset"] == []


def test_check_json_has_one_shape_whatever_failed(tmp_path: Path) -> None:
    """``check --json`` always gives ok, problems, unset and warnings: a config error, unset secrets
    under --strict (problems then) and a pass (problems empty) are read the same way."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.read_text() + "\nnonsense: 1\n")
    for args, ok in (
        ((str(GOOD), "--json"), True),
        ((str(GOOD), "--json", "--strict"), False),
        ((str(bad), "--json"), False),
        ((str(bad), "--json", "--strict"), False),
    ):
        code, out, _ = run("check", *args)
        doc = json.loads(out)
        assert {"ok", "problems", "unset", "warnings"} <= doc.keys(), args
        assert doc["ok"] is ok, args
        assert bool(doc["problems"]) is not ok, args
        assert code == (0 if ok else 3), args
        assert doc["unset"], args  # GOOD names secrets this test does not set


def test_send_refuses_missing_secrets_with_exit_3() -> None:
    code, _, err = run("send", str(GOOD), "+4915123456789", "hi")
    assert code == 3
    assert f"{GOOD}:25:18: providers.twilio-main.account_sid: environment variable" in err


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
    assert code == 3
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
    assert code == 3
    doc = json.loads(out)
    assert doc["ok"] is False
    assert {p["path"] for p in doc["problems"]} == {"providers", "rules"}
    assert all(p["line"] for p in doc["problems"])


def test_explain_shows_rule_order_and_why_without_secrets() -> None:
    code, out, err = run("explain", str(GOOD), "+4915123456789", "--category", "otp")
    assert code == 0
    assert "rule     otp-europe  (strategy: fastest)" in out
    assert "twilio-main" in out
    assert "tried first" in out
    assert "+49151******89" in out
    assert "4915123456789" not in out + err
    assert err.startswith("warning: 5 environment variables not set (TWILIO_ACCOUNT_SID, ")
    assert len(err.strip().splitlines()) == 1


def test_explain_refuses_a_bad_number_with_exit_2() -> None:
    code, _, err = run("explain", str(GOOD), "+1 555 000 0000")
    assert code == 2
    assert "not a valid number" in err


def test_a_number_without_digits_is_named_so_not_as_an_empty_mask() -> None:
    code, out, err = run("explain", str(GOOD), "hello")
    assert code == 2
    assert out == ""
    line = err.strip().splitlines()[-1]
    assert line == "error: the destination (written without digits) is not a phone number"
    assert "number  " not in err


def test_an_unknown_provider_type_is_reported_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n"
        "  tw: {type: twilio, account_sid: AC1, auth_token: x}\n"
        "  sms: {type: twillio, account_sid: AC1, auth_token: x}\n"
        "rules:\n"
        "  - name: vip\n"
        "    match: {tags: [vip]}\n"
        "    strategy: weighted\n"
        "    weights: {sms: 1, tw: 2}\n"
        "    providers: [sms, tw]\n"
        "  - name: default\n"
        "    providers: [sms]\n"
    )
    code, out, err = run("check", str(bad))
    assert code == 3
    assert out == ""
    assert err.strip().splitlines() == [
        f"{bad}:3:15: providers.sms.type: unknown provider type 'twillio': did you mean "
        "'twilio'? known types: bandwidth, http, infobip, messagebird, plivo, sinch, smpp, "
        "telnyx, twilio, vonage (third-party adapters register under the entry point group "
        "'smsroute.providers')"
    ]


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
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert await proc.stdout.readline() == f"smsroute serving on {base}\n".encode()
            printed = [(await proc.stdout.readline()).decode().rstrip("\n") for _ in range(5)]
        # Every route it serves, each provider's receipt (status) and inbound URL.
        assert printed == [
            f"  {base}/healthz  health: ok, and each breaker's state",
            f"  {base}/metrics  Prometheus metrics",
            f"  {base}/hooks/twilio/status  twilio (twilio): delivery receipts",
            f"  {base}/hooks/twilio/inbound  twilio (twilio): inbound messages",
            f"  providers call them as {base}/hooks/<provider>/... (defaults.webhook_url)",
        ]
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


async def test_demo_prints_its_metrics_url_when_not_on_a_terminal() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smsroute",
        "demo",
        "--duration",
        "3",
        "--rate",
        "20",
        "--metrics-port",
        str(port),
        stdout=asyncio.subprocess.PIPE,  # a pipe: not a terminal
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            first = (await proc.stdout.readline()).decode()
        url = f"http://127.0.0.1:{port}/metrics"
        assert first == f"metrics: {url} (while the demo runs)\n"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert r.status == 200
            assert "smsroute_info" in await r.text()
        async with asyncio.timeout(30):
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert b"What happened" in rest


async def test_demo_on_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_process("demo", "--duration", "1", "--metrics-port", str(port))
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use (another "
        "process, or another smsroute, listens there): stop it or choose another --metrics-port"
    ]


def test_explain_shows_each_guard_its_count_and_the_one_that_refuses(tmp_path: Path) -> None:
    config = tmp_path / "guards.yaml"
    config.write_text(
        "providers:\n"
        '  a: {type: twilio, account_sid: AC1, auth_token: t, from: "+15005550006"}\n'
        "rules:\n  - name: d\n    providers: [a]\n"
        "guards:\n  otp:\n    countries: {allow: [DE]}\n"
        "    velocity:\n      - {per: number, max: 5, window: 1h}\n"
    )
    code, out, _ = run("explain", str(config), "+4915123456789", "--category", "otp")
    assert code == 0
    assert "guard    geo: allow DE\n" in out
    assert "guard    velocity: at most 5 per number per 1h, 0 now\n" in out
    assert "refuses" not in out
    code, out, _ = run("explain", str(config), "+33612345678", "--category", "otp")
    assert code == 0
    assert "guard    geo: allow DE  <- refuses: send calls no provider" in out
