"""One exit status table for every command (``smsroute --help`` documents it).

Each command runs as users run it, in a process of its own with warnings made
errors, so a traceback or a warning at exit would show up on stderr as more
than the one line asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smsroute.cli import EXIT_CONFIG, EXIT_USAGE

# What each command is given after its CONFIG (the demo takes it as an option).
COMMANDS: dict[str, list[str]] = {
    "check": ["smsroute", "check", "{config}"],
    "check --strict": ["smsroute", "check", "{config}", "--strict"],
    "explain": ["smsroute", "explain", "{config}", "+4915123456789"],
    "send": ["smsroute", "send", "{config}", "+4915123456789", "hi"],
    "serve": ["smsroute", "serve", "{config}", "--port", "1"],
    "worker": ["smsroute", "worker", "{config}"],
    "demo": ["smsroute", "demo", "--config", "{config}", "--duration", "1"],
    "python -m smsroute.outbox": ["outbox", "{config}"],
}

BAD = """\
providers:
  tw: {type: twilio, account_sid: AC1, auth_token: x, timout: 5s}
rules:
  - name: default
    providers: [tw]
"""


def run(command: str, config: Path, *extra: str) -> tuple[int, str, str]:
    program, *args = COMMANDS[command]
    args = [a.format(config=config) for a in args] + list(extra)
    module = "smsroute.outbox" if program == "outbox" else "smsroute"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        cwd=config.parent,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_config_exits_3_with_one_line_everywhere(command: str, tmp_path: Path) -> None:
    config = tmp_path / "routing.yaml"
    config.write_text(BAD)
    code, out, err = run(command, config)
    assert code == EXIT_CONFIG == 3, err
    assert "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith(
        f"{config}:2:55: providers.tw.timout: unknown key 'timout' in provider 'tw' (type "
        "twilio); did you mean 'timeout'?"
    )
    assert out == ""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_config_exits_3_with_one_line_everywhere(command: str, tmp_path: Path) -> None:
    config = tmp_path / "nowhere.yaml"
    code, _, err = run(command, config)
    assert code == 3, err
    assert err.splitlines() == [f"{config}: cannot read config: No such file or directory"]


@pytest.mark.parametrize("command", ["send", "serve", "worker", "python -m smsroute.outbox"])
def test_an_unset_variable_is_a_config_error_where_it_is_needed(
    command: str, tmp_path: Path
) -> None:
    config = tmp_path / "routing.yaml"
    config.write_text(
        "providers:\n"
        "  tw:\n"
        "    type: twilio\n"
        "    account_sid: AC1\n"
        "    auth_token: ${SMSROUTE_TEST_UNSET_TOKEN}\n"
        "rules:\n"
        "  - name: default\n"
        "    providers: [tw]\n"
    )
    os.environ.pop("SMSROUTE_TEST_UNSET_TOKEN", None)
    code, _, err = run(command, config)
    assert code == 3, err
    assert err.splitlines() == [
        f"{config}:5:17: providers.tw.auth_token: environment variable "
        "SMSROUTE_TEST_UNSET_TOKEN is not set: export it, or write "
        "${SMSROUTE_TEST_UNSET_TOKEN:-default} to give a default"
    ]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_usage_exits_2_everywhere(command: str, tmp_path: Path) -> None:
    config = tmp_path / "routing.yaml"
    config.write_text(BAD)
    code, out, err = run(command, config, "--no-such-option")
    assert code == EXIT_USAGE == 2, err
    assert "Traceback" not in err
    assert "--no-such-option" in err
    assert out == ""


def test_the_table_is_in_the_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smsroute", "--help"], capture_output=True, text=True, check=True
    )
    help_text = " ".join(done.stdout.split())
    for line in (
        "Exit status, the same for every command:",
        "0 success",
        "1 the command ran and reports a failure",
        "2 bad usage or input",
        "3 config error",
        "130 interrupted",
    ):
        assert line in help_text


@pytest.mark.parametrize("command", ["worker", "python -m smsroute.outbox"])
def test_an_unknown_log_level_is_a_usage_error_before_anything_starts(
    command: str, tmp_path: Path
) -> None:
    """Both workers take ``--log-level``: a name logging does not know exits 2 with what
    to use, not a traceback (the config is never read: it does not even exist)."""
    config = tmp_path / "nowhere.yaml"
    code, out, err = run(command, config, "--log-level", "loud")
    assert code == EXIT_USAGE == 2, err
    assert "Traceback" not in err
    assert "'loud' is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL" in err
    assert out == ""
