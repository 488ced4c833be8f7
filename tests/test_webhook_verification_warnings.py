"""A provider whose webhooks would be accepted unverified is a warning of ``smsroute check``
and ``smsroute serve``.

Several providers sign their webhooks only when told to (Sinch, Vonage, Telnyx,
MessageBird), or sign nothing and can be made to send HTTP Basic credentials (Infobip,
Bandwidth). Without those options the adapter accepts every request: anyone who can
reach the URLs can move a message's status and opt numbers out, or back in. That is
valid (the docs name other protections: a secret path, an IP allow-list) but rarely
meant, so a config that takes webhooks (``defaults.webhook_url`` or a provider's
``status_callback``) without them gets one warning per provider, at its line, saying
what to set.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from smsroute.cli import main
from smsroute.configload import parse_config
from smsroute.errors import ConfigProblem

#: type -> (the options it needs to send, the options that verify its webhooks).
OPTIONAL: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "sinch": ({"service_plan_id": "plan", "api_token": "token"}, {"webhook_secret": "s" * 24}),
    "vonage": ({"api_key": "abcd1234", "api_secret": "secret"}, {"signature_secret": "s" * 24}),
    "telnyx": ({"api_key": "KEY"}, {"public_key": "A" * 43 + "="}),
    "messagebird": ({"access_key": "live_x"}, {"signing_key": "k" * 32}),
    "infobip": (
        {"api_key": "key"},
        {"callback_username": "smsroute", "callback_password": "p" * 16},
    ),
    "bandwidth": (
        {"account_id": "9900000", "username": "u", "password": "p", "application_id": "app"},
        {"callback_username": "cb", "callback_password": "p" * 16},
    ),
}
#: Types that always verify what they accept (their send credentials sign the webhooks).
ALWAYS: dict[str, dict[str, str]] = {
    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32},
    "plivo": {"auth_id": "MA" + "0" * 18, "auth_token": "t" * 32},
}


def config(kind: str, options: dict[str, str], webhook_url: bool = True) -> str:
    lines = [f"    {key}: {json.dumps(value)}" for key, value in options.items()]
    defaults = "defaults:\n  webhook_url: https://sms.example.com/hooks\n" if webhook_url else ""
    return (
        f'{defaults}providers:\n  p:\n    type: {kind}\n    from: "+15005550006"\n'
        + "\n".join(lines)
        + "\nrules:\n  - name: default\n    providers: [p]\n"
    )


def warnings_of(text: str) -> list[ConfigProblem]:
    warnings: list[ConfigProblem] = []
    parse_config(text, file="routing.yaml", warnings=warnings)
    return warnings


@pytest.mark.parametrize("kind", sorted(OPTIONAL))
def test_a_provider_taking_webhooks_unverified_is_one_warning_naming_what_to_set(
    kind: str,
) -> None:
    base, verifying = OPTIONAL[kind]
    (warning,) = warnings_of(config(kind, base))
    assert warning.path == "providers.p"
    assert (warning.file, warning.line) == ("routing.yaml", 4)
    assert "accepted without verification" in warning.message
    assert "opt numbers out or back in" in warning.message
    for key in verifying:
        assert key in warning.message, (key, warning.message)
    assert warnings_of(config(kind, {**base, **verifying})) == []
    assert warnings_of(config(kind, base, webhook_url=False)) == []  # takes no receipts


@pytest.mark.parametrize("kind", sorted(ALWAYS))
def test_providers_that_always_verify_get_no_warning(kind: str) -> None:
    assert warnings_of(config(kind, ALWAYS[kind])) == []


def test_vonage_with_signed_webhooks_turned_off_is_unverified() -> None:
    base, verifying = OPTIONAL["vonage"]
    text = config("vonage", {**base, **verifying, "signed_webhooks": "false"})
    (warning,) = warnings_of(text)
    assert "signature_secret" in warning.message


def test_check_prints_the_warning_and_passes(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(config("sinch", OPTIONAL["sinch"][0]))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    assert line.startswith(f"warning: {path}:4:3: providers.p: its webhooks are accepted")
    assert "webhook_secret" in line
    doc = json.loads(CliRunner().invoke(main, ["check", "--json", str(path)]).stdout)
    assert doc["ok"] is True
    ((warning),) = doc["warnings"]
    assert warning["path"] == "providers.p"
    assert warning["line"] == 4


def test_serve_prints_the_warning_before_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(config("infobip", OPTIONAL["infobip"][0]))
    with socket.socket() as taken:  # the port is in use: serve stops right after its warnings
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(path), "--port", str(port)])
    assert result.exit_code == 1, result.output
    first, *_ = result.stderr.splitlines()
    assert first.startswith(f"warning: {path}:4:3: providers.p: its webhooks are accepted")
    assert "callback_username and callback_password" in first
