"""Operational mistakes at the command line: one clear line on stderr, a non-zero exit.

Each runs the real ``smsroute`` in a process of its own, with warnings made
errors (``-W error``): a traceback, an "Unclosed client session" or any other
warning at exit would show up on stderr as more than the one line.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from conftest import twilio_block
from redis_support import free_port

from smsroute.testing import FakeTwilio


async def smsroute(*args: str, prelude: str = "") -> tuple[int, str, str]:
    """``smsroute ARGS`` in a new process; ``prelude`` runs first (to hide a package)."""
    code = "\n".join(
        [
            prelude,
            "import sys",
            "from smsroute.cli import main",
            "sys.argv[0] = 'smsroute'",
            "main()",
        ]
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), err
    return lines[0]


def write_config(tmp_path: Path, fake: FakeTwilio, *sections: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "\n".join(
            [
                "providers:",
                twilio_block("twilio", fake),
                "rules:",
                "  - name: default",
                "    providers: [twilio]",
                *sections,
            ]
        )
        + "\n"
    )
    return path


async def test_serve_on_a_port_in_use_is_one_line(twilio_a: FakeTwilio, tmp_path: Path) -> None:
    config = write_config(tmp_path, twilio_a)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await smsroute("serve", str(config), "--port", str(port))
    assert code == 1
    line = one_line(err)
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "--port" in line
    assert "serving on" not in out


async def test_redis_state_without_the_redis_package_is_one_line(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, twilio_a, "state:", "  backend: redis", "  url: redis://127.0.0.1:6379/0"
    )
    hide = "import sys; sys.modules['redis'] = None"
    for command in (["serve", str(config), "--port", str(free_port())], ["worker", str(config)]):
        code, out, err = await smsroute(*command, prelude=hide)
        assert code == 1, (command, err)
        line = one_line(err)
        assert "redis package" in line
        assert "pip install 'smsroute[redis]'" in line
        assert out == ""


async def test_redis_unreachable_at_start_is_one_line_without_the_password(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens there
    config = write_config(
        tmp_path,
        twilio_a,
        "state:",
        "  backend: redis",
        f"  url: redis://:hunter2@127.0.0.1:{closed}/0",
        "outbox:",
        "  backend: redis",
    )
    for command in (["serve", str(config), "--port", str(free_port())], ["worker", str(config)]):
        code, out, err = await smsroute(*command)
        assert code == 1, (command, err)
        line = one_line(err)  # no "Unclosed client session" either
        assert f"redis://***@127.0.0.1:{closed}/0" in line
        assert "hunter2" not in err
        assert "Unclosed" not in err
        assert "serving on" not in out
        assert '"worker"' not in out


async def test_worker_with_a_corrupt_outbox_exits_with_one_line_and_never_says_it_works(
    twilio_a: FakeTwilio, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    db.write_bytes(b"this is not a database\n" * 200)
    config = write_config(tmp_path, twilio_a, "outbox:", f"  path: {db}")
    code, out, err = await smsroute("worker", str(config), "--log-level", "WARNING")
    assert code == 1
    assert out == ""  # no "worker" line: it never worked
    line = one_line(err)
    assert str(db) in line
    assert "move it aside" in line
