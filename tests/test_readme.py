"""Every command in README.md's ``console`` blocks runs as written on a fresh copy.

The copy holds the files a clone would (``git ls-files``, and files not yet
committed but not ignored), and nothing else: no ``.venv``, no outbox database.
Its commands run in order, in bash, with ``PATH`` free of any virtualenv, as a
new user's shell would be:

- the setup line creates ``.venv`` and installs the copy into it, for real; only
  the network is replaced: its dependencies are this test run's own (on
  ``PYTHONPATH``, without smsroute itself) and the demo at its end is shortened;
- credentials (``export TWILIO_...=AC...``) take the values of a fake Twilio
  started as the README says (``python -m smsroute.testing twilio``), with
  ``TWILIO_BASE_URL`` pointing at it;
- long-running commands (``serve``, ``worker``) are started, probed and stopped
  with SIGTERM, and must exit 0; ``serve`` on a free port instead of 8080;
- ``scripts/test`` runs one small test file.

A command no handler below recognises fails the test: a new command in the
README must come with a way to run it here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```console\n(.*?)^```", re.M | re.S)
COMMENT = re.compile(r"\s{2,}#\s.*$")

#: Every credential variable the README may export, and the fake value it gets.
CREDENTIALS = {
    "TWILIO_ACCOUNT_SID": "account_sid",
    "TWILIO_AUTH_TOKEN": "auth_token",
    "TWILIO_BACKUP_ACCOUNT_SID": "account_sid",
    "TWILIO_BACKUP_AUTH_TOKEN": "auth_token",
    "TWILIO_BACKUP_MESSAGING_SERVICE_SID": "messaging_service_sid",
}


def console_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each line of each ``console`` block, comments cut."""
    out = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for i, line in enumerate(block.group(1).splitlines()):
            command = COMMENT.sub("", line).strip()
            if command:
                out.append((first + i, command))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Shell:
    """A new user's shell in a fresh copy of the repository."""

    cwd: Path
    env: dict[str, str]
    fake: dict[str, str]
    activated: bool = False

    def script(self, command: str) -> str:
        return (". .venv/bin/activate && " if self.activated else "") + command

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script(command)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", self.script("exec " + command)],  # SIGTERM reaches the command
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def expect(done: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert done.returncode == code, (done.args, done.stdout[-3000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


# -- handlers: what running each README command means here ------------------------------


def setup(shell: Shell, command: str) -> None:
    shortened = command.replace("smsroute demo", "smsroute demo --duration 2 --rate 20")
    out = expect(shell.run(shortened, timeout=180))
    assert "metrics: http://127.0.0.1:" in out
    assert "What happened" in out
    assert (shell.cwd / ".venv" / "bin" / "smsroute").exists()


def activate(shell: Shell, command: str) -> None:
    out = expect(shell.run(command + " && command -v smsroute python"))
    assert out.split() == [
        str(shell.cwd / ".venv/bin/smsroute"),
        str(shell.cwd / ".venv/bin/python"),
    ]
    shell.activated = True


def check(shell: Shell, command: str) -> None:
    unset = any(name not in shell.env for name in CREDENTIALS)
    done = shell.run(command)
    if "--strict" in command and unset:
        expect(done, 3)
        assert "environment variable TWILIO_ACCOUNT_SID is not set" in done.stderr
    else:
        assert "ok: 2 providers" in expect(done)


def explain(shell: Shell, command: str) -> None:
    assert "tried first" in expect(shell.run(command))


def example(shell: Shell, command: str) -> None:
    expect(shell.run(command))


def export(shell: Shell, command: str) -> None:
    expect(shell.run(command))  # it runs as written...
    for assignment in command.split()[1:]:
        name, _, _ = assignment.partition("=")
        assert name in CREDENTIALS, f"no fake value for {name}: add it to CREDENTIALS"
        # ... and the fake's credentials stand in for the account's.
        shell.env[name] = shell.fake[CREDENTIALS[name]]
    shell.env["TWILIO_BASE_URL"] = shell.fake["url"]


def send(shell: Shell, command: str) -> None:
    assert "accepted by twilio-" in expect(shell.run(command))


def serve(shell: Shell, command: str) -> None:
    port = free_port()
    proc = shell.start(command.replace("--port 8080", f"--port {port}"))
    assert proc.stdout is not None
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline() == f"smsroute serving on {base}\n"
        assert proc.stdout.readline() == f"  {base}/healthz  health: ok, and each breaker's state\n"
        assert proc.stdout.readline() == f"  {base}/metrics  Prometheus metrics\n"
        for path in ("/healthz", "/metrics"):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                assert r.status == 200
    finally:
        code, err = stop(proc)
    assert code == 0, err


def run_worker(shell: Shell, command: str) -> None:
    """A worker command: its first line names the worker, and SIGTERM stops it (exit 0)."""
    proc = shell.start(command)
    assert proc.stdout is not None
    try:
        assert '"worker"' in proc.stdout.readline()
    finally:
        code, err = stop(proc)
    assert code == 0, err


def worker(shell: Shell, command: str) -> None:
    run_worker(shell, command)
    # The outbox it made is where the README says, and git leaves it out.
    assert (shell.cwd / "smsroute-outbox.db").exists()
    files = ["smsroute-outbox.db", "smsroute-outbox.db-wal", "smsroute-outbox.db-shm"]
    ignored = subprocess.run(
        ["git", "check-ignore", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout.split() == files


def run_tests(shell: Shell, command: str) -> None:
    expect(shell.run(f"{command} tests/test_ids.py -q -p no:cacheprovider", timeout=120))


HANDLERS: list[tuple[re.Pattern[str], Callable[[Shell, str], None]]] = [
    (
        re.compile(r"python3 -m venv \.venv && \.venv/bin/pip install -e \. && .*smsroute demo"),
        setup,
    ),
    (re.compile(r"\. \.venv/bin/activate"), activate),
    (re.compile(r"smsroute check \S+( --strict)?"), check),
    (re.compile(r"smsroute explain \S+ \+\d+( --\w+ \w+)*"), explain),
    (re.compile(r"python examples/\w+\.py"), example),
    (re.compile(r"export( [A-Z_]+=\S+)+"), export),
    (re.compile(r"smsroute send .*"), send),
    (re.compile(r"smsroute serve \S+ --port 8080"), serve),
    (re.compile(r"smsroute worker \S+"), worker),
    (re.compile(r"scripts/test"), run_tests),
]


def handler_for(command: str) -> Callable[[Shell, str], None]:
    for pattern, handler in HANDLERS:
        if pattern.fullmatch(command):
            return handler
    raise LookupError(f"no way to run {command!r}: add a handler to tests/test_readme.py")


# -- the fresh copy ---------------------------------------------------------------------


def fresh_copy(dest: Path) -> None:
    """The repository's files as a clone would have them, uncommitted edits included."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def dependencies(dest: Path) -> Path:
    """This run's installed packages, smsroute itself left out (the copy installs its own)."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("smsroute", "__editable__")) or entry.suffix == ".pth":
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    clone = tmp_path / "smsroute"
    fresh_copy(clone)
    path = [
        p
        for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and not (Path(p) / "activate").exists()  # no virtualenv's bin
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "PYTHON", "PIP_", "VIRTUAL_ENV", "SMSROUTE_"))
    }
    env |= {
        "PATH": os.pathsep.join(path),
        "HOME": str(tmp_path),
        # No network: the packages this run has stand in for the index.
        "PYTHONPATH": str(dependencies(tmp_path / "deps")),
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    fake = subprocess.Popen(
        [sys.executable, "-m", "smsroute.testing", "twilio"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        credentials = json.loads(fake.stdout.readline())
        credentials["messaging_service_sid"] = "MG" + "0" * 32
        yield Shell(cwd=clone, env=env, fake=credentials)
    finally:
        fake.send_signal(signal.SIGINT)
        fake.wait(timeout=10)


def test_every_readme_command_runs_as_written(shell: Shell) -> None:
    commands = console_commands(README.read_text())
    assert len(commands) >= 10
    plan = [(line, command, handler_for(command)) for line, command in commands]
    assert plan[0][2] is setup, "the README's first command is its setup"
    for line, command, handler in plan:
        print(f"README.md:{line}: {command}")
        handler(shell, command)


def test_a_command_without_a_handler_fails_the_test() -> None:
    with pytest.raises(LookupError, match="no way to run 'make install'"):
        handler_for("make install")
    with pytest.raises(LookupError):
        handler_for("smsroute serve config/routing.yaml --port 9000")
