"""The shipped examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_without_credentials_and_shows_failover() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = {line.split("  ")[0]: line for line in done.stdout.splitlines() if line}
    assert "[primary:transient -> backup:accepted]" in lines["primary answers 503"]
    assert "failed" in lines["invalid number (rejected)"]
    assert "[primary:rejected]" in lines["invalid number (rejected)"]
    assert "[primary:timeout -> backup:accepted]" in lines["primary hangs, otp"]
    assert "[primary:timeout]" in lines["primary hangs, marketing"]
    assert "4915123456789" not in done.stdout  # numbers are masked
    assert done.stderr == ""
